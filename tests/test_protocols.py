"""The originals' evaluation protocols (nfbench.pipeline.protocols), measured in the same run."""

from __future__ import annotations

import math

import pytest

from nfbench.pipeline.experiment import run_experiment
from nfbench.methods import method_class
from nfbench.methods.base import evaluation_epochs

TINY = {
    "csflow": {"epochs": 4},
    "patchflow": {"epochs": 3},
    "cflow": {"meta_epochs": 3},
}


def test_evaluation_epochs_scale_the_originals_schedule():
    assert evaluation_epochs(240) == {60, 120, 180, 240}  # CS-Flow: 4 x 60
    assert evaluation_epochs(12) == {3, 6, 9, 12}
    assert evaluation_epochs(2) == {1, 2}
    assert evaluation_epochs(1) == {1}


def _run(method, root, protocol=True, **extra):
    settings = {**method_class(method).smoke_settings, **TINY.get(method, {}), **extra}
    category = "brick"
    return run_experiment(method, "demo", category, root=root, profile="smoke", seed=0,
                          overrides=settings, original_protocol=protocol)


def _same(a: float | None, b: float | None) -> bool:
    """Equal metrics; an undefined one (None in a record, NaN before) equals only itself."""
    undefined = lambda v: v is None or math.isnan(v)
    if undefined(a) or undefined(b):
        return undefined(a) and undefined(b)
    return a == pytest.approx(b, abs=1e-9)


@pytest.mark.parametrize("method", ["csflow", "patchflow", "cflow"])
def test_protocol_leaves_honest_numbers_unchanged_and_ends_at_them(method, tiny_demo, one_thread):
    with_protocol = _run(method, tiny_demo)
    without = _run(method, tiny_demo, protocol=False)
    assert "original_protocol" not in without
    for key, value in without["metrics"].items():
        assert _same(with_protocol["metrics"][key], value), key  # the hook changes nothing
    op = with_protocol["original_protocol"]
    expected_points = {"csflow": 4, "patchflow": 3, "cflow": 3}[method]
    assert len(op["points"]) == expected_points
    last = op["points"][-1]["metrics"]
    for key, value in with_protocol["metrics"].items():  # the last point is the honest model
        assert _same(last[key], value), key
    # test-selected: the best image AUROC over the tested points (PatchFlow's original tests
    # only the epoch its validation selects; here also the last, the honest model)
    tested = [p for p in op["points"] if p["metrics"] is not None]
    assert op["selected"]["metrics"]["image_auroc"] == max(p["metrics"]["image_auroc"] for p in tested)
    assert 0.0 <= op["reported"]["image_auroc"] <= 1.0 and op["seconds"] > 0
    assert with_protocol["timing"]["protocol_seconds"] == op["seconds"]
    if method == "cflow":  # both normalisations at every point; the reported max is over them
        for p in op["points"]:
            assert set(p["normalization"]) == {"transductive", "inductive"}
        assert op["reported"]["pixel_auroc"] == max(
            p["normalization"]["transductive"]["pixel_auroc"] for p in op["points"])
        assert op["by_protocol"]["clscnf"] == op["points"][-1]["normalization"]["inductive"]
    if method == "csflow":  # CS-Flow's Score_Observer: the max of the 4 image AUROCs
        assert op["reported"]["image_auroc"] == max(p["image_auroc"] for p in op["points"])
        assert op["points"][-1]["image_auroc"] == with_protocol["metrics"]["image_auroc"]
    if method == "patchflow":
        validation = [p["validation_pixel_auroc"] for p in op["points"]]
        chosen = validation.index(max(validation))  # the first strictly best epoch
        assert op["reported_as"].startswith(op["points"][chosen]["label"])
        assert op["points"][chosen]["metrics"] == op["reported"]
        if chosen != len(validation) - 1:  # the selected weights scored again, then restored
            assert op["reported"] != with_protocol["metrics"]


def test_cflow_stage_reuse_replays_the_evaluation_points(tiny_demo, one_thread):
    first = _run("cflow", tiny_demo, reuse_stages=True)
    again = _run("cflow", tiny_demo, reuse_stages=True)  # flows from the stage cache
    a, b = first["original_protocol"]["points"], again["original_protocol"]["points"]
    assert [p["label"] for p in a] == [p["label"] for p in b] == [
        "meta-epoch 1/3", "meta-epoch 2/3", "meta-epoch 3/3"]
    for p, q in zip(a, b):
        assert _same(p["metrics"]["pixel_auroc"], q["metrics"]["pixel_auroc"])
    assert _same(first["metrics"]["pixel_auroc"], again["metrics"]["pixel_auroc"])


def test_clscnf_protocol_picks_the_test_aupr_best_w(tiny_demo, one_thread):
    record = _run("clscnf", tiny_demo, w=0.5)
    op = record["original_protocol"]
    table = {float(k): v for k, v in op["w"]["aupr_by_w"].items()}
    assert len(table) == 20 and op["w"]["honest"] == 0.5
    best = max(table.values())
    assert table[op["w"]["selected"]] == best
    assert op["w"]["selected"] == max(w for w, v in table.items() if v == best)  # the last max
    assert op["reported"]["pixel_aupr@clscnf"] == pytest.approx(best, abs=1e-6)  # float32 maps
    # n_max over the test set only shifts the map: every metric equals the inductive one
    norm = op["normalization"]
    for key in ("image_auroc", "pixel_auroc", "aupro"):
        assert norm["transductive"][key] == pytest.approx(norm["inductive"][key], abs=1e-6)
    if 0.5 in table:  # the honest w's AUPR cannot beat the test-selected one
        assert table[0.5] <= best


def test_protocol_tables_and_report_section(tmp_path):
    """Companion tables from records only: honest vs original protocol and the difference."""
    import json

    from nfbench.pipeline.experiment import write_record
    from nfbench.pipeline.plan import expand_runs, load_params
    from nfbench.report.sections import protocol_section
    from nfbench.pipeline.tables import build_protocol_tables, build_tables, write_protocol_tables

    params = load_params()
    runs = expand_runs("clscnf", "smoke", params)
    for run in runs:
        honest = {"image_auroc": 0.8, "pixel_auroc": 0.9, "pixel_aupr": 0.3, "aupro": 0.7,
                  "f1_max": 0.4, "pixel_aupr@clscnf": 0.32, "aupro@clscnf": 0.75,
                  "pixel_auroc@patchflow": 0.85}
        reported = {k: v + 0.05 for k, v in honest.items()}
        record = {"paper": "clscnf", "run_id": run.run_id, "method": run.method,
                  "category": run.category, "variant": run.variant, "seed": run.seed,
                  "metrics": honest,
                  "original_protocol": {"reported": reported, "reported_as": "x",
                                        "by_protocol": {"clscnf": honest, "cflow": reported}}}
        write_record(record, tmp_path / run.record_path)
    tables = build_tables("clscnf", "smoke", params, tmp_path)
    row = tables["table2"].set_index("variant").loc["full"]
    pixel_aupr = tables["table2"][tables["table2"]["metric"] == "pixel_aupr"].set_index("variant")
    assert pixel_aupr.loc["full", "compared_metric"] == "pixel_aupr@clscnf"
    assert pixel_aupr.loc["full", "compared_mean"] == pytest.approx(32.0)
    assert pixel_aupr.loc["full", "mean"] == pytest.approx(30.0)  # the official value beside
    assert pixel_aupr.loc["full", "delta"] == pytest.approx(32.0 - 72.09)
    assert set(row["metric"]) == {"image_auroc", "pixel_auroc", "pixel_aupr", "aupro"}
    companions = build_protocol_tables("clscnf", "smoke", params, tmp_path)
    frame = companions["table2"].set_index(["variant", "metric"])
    assert frame.loc[("full", "image_auroc"), "difference"] == pytest.approx(5.0)
    # fe_pre (method cflow) is scored the CLS-CNFs way: its declared protocol, no gain here
    assert frame.loc[("fe_pre", "image_auroc"), "difference"] == pytest.approx(0.0)
    assert frame.loc[("full", "pixel_aupr@clscnf"), "original"] == pytest.approx(37.0)
    write_protocol_tables(companions, tmp_path / "clscnf")
    from nfbench.pipeline.plan import load_spec

    section = "\n".join(protocol_section(load_spec("clscnf"), tmp_path / "clscnf" / "tables"))
    assert "## How much the original protocol adds" in section
    assert "auc(recall, precision)" in section and "+5.0" in section
    json.dumps(section)
