"""nfbench.pipeline.results: every run record as one tidy DataFrame that rebuilds the report tables."""

from __future__ import annotations

import json

import numpy as np

import pytest

from nfbench.pipeline import results
from nfbench.cli import main
from nfbench.errors import UserError
from nfbench.pipeline.plan import expand_runs, load_params
from nfbench.pipeline.tables import build_tables

from test_pipeline import ROOT, _fake_results


@pytest.fixture(autouse=True)
def at_repo_top(monkeypatch):
    monkeypatch.chdir(ROOT)


def test_frame_has_one_row_per_record_and_rebuilds_a_report_table(tmp_path):
    params = load_params()
    runs = expand_runs("csflow", "smoke", params)
    _fake_results(tmp_path, runs, lambda run: 0.5 + 0.01 * len(run.variant) + 0.001 * run.seed)
    frame = results.load(tmp_path)
    assert len(frame) == len(runs) and set(frame["run_id"]) == {r.run_id for r in runs}
    # Table 3 of the report, rebuilt from the frame in one line
    table3 = build_tables("csflow", "smoke", params, tmp_path)["table3"].set_index("variant")
    means = frame[frame.variant.isin(table3.index)].groupby("variant").image_auroc.mean() * 100
    assert means.to_dict() == pytest.approx(table3["mean"].to_dict())
    # settings: only what differs from the method's paper defaults
    row = frame[frame.variant == "full"].iloc[0]  # (the Gaussian baseline runs at its defaults)
    assert row["settings"] == {"backbone": "efficientnet_lite0"}
    assert row["fit_seconds"] == 1.0 and row["git_commit"] == "abc"


def test_paper_filter_and_csv(tmp_path, capsys):
    runs = expand_runs("patchflow", "smoke", load_params())
    _fake_results(tmp_path, runs, lambda run: 0.7)
    assert results.load(tmp_path, papers=["csflow"]).empty
    out = tmp_path / "runs.csv"
    assert main(["results", "--results", str(tmp_path), "--csv", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0].startswith("paper,method,variant") and len(lines) == len(runs) + 1
    import pandas as pd

    table = pd.read_csv(out)  # settings flattened: one column per changed setting
    assert "settings" not in table.columns
    assert set(table.loc[table.variant == "full", "setting.backbone"]) == {"efficientnet_lite0"}


def test_a_file_that_is_not_a_record_is_one_clear_error(tmp_path):
    bad = tmp_path / "csflow/runs/full/brick/seed0.json"
    bad.parent.mkdir(parents=True)
    bad.write_text("[1, 2]")
    with pytest.raises(UserError, match="not a run record"):
        results.load(tmp_path)


def test_a_fresh_clone_without_figure_material_keeps_the_chance_level(tiny_demo, tmp_path,
                                                                      one_thread):
    """Run records are in git, their NPZ figure material is not: the tables' chance level of
    pixel AUPR comes from the record itself, equal to the one the NPZ histograms give."""
    from nfbench.pipeline.experiment import run_experiment, write_examples, write_record
    from nfbench.pipeline.plan import Run
    from nfbench.pipeline.tables import defect_fraction

    run = Run(paper="csflow", method="gaussian", variant="baseline_gaussian", dataset="demo",
              category="brick", seed=0, profile="smoke", root=str(tiny_demo))
    examples: dict = {}
    record = run_experiment("gaussian", "demo", "brick", root=tiny_demo, profile="smoke",
                            overrides={"backbone": "efficientnet_lite0", "input_size": 64},
                            examples=examples, original_protocol=False)
    path = tmp_path / run.record_path
    write_examples(examples, path.with_suffix(".npz"))
    write_record(record, path)
    assert set(record["data"]["defect_pixel_fraction"]) == {"brick"}
    fraction = record["data"]["defect_pixel_fraction"]["brick"]
    del record["data"]["defect_pixel_fraction"]  # a record of the earlier code: from the NPZ
    write_record(record, path)
    assert defect_fraction(tmp_path, [run], "brick") == fraction
    path.with_suffix(".npz").unlink()
    assert np.isnan(defect_fraction(tmp_path, [run], "brick"))
    record["data"]["defect_pixel_fraction"] = {"brick": fraction}
    write_record(record, path)
    assert defect_fraction(tmp_path, [run], "brick") == fraction and 0 < fraction < 1
