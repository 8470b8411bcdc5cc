"""nfbench plan --gpus N --device-kind K: FLOPs counted from the code's networks (issue 19 §3)."""

from __future__ import annotations

import json

import pytest

from nfbench.cli import main
from nfbench.pipeline import estimate as estimate_module
from nfbench.pipeline.flops import forward_gflops, run_items


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NFBENCH_CACHE", str(tmp_path / "cache"))


SMALL_CSFLOW = {"backbone": "efficientnet_lite0", "layer": "stride32", "input_size": 128,
                "n_scales": 3, "scale_mode": "cross", "scale_index": 0, "n_blocks": 4,
                "hidden_channels": 32, "epochs": 2}


def test_a_variants_flops_follow_its_size(tmp_cache):
    """CS-Flow's single_s2 (one scale, the smallest) trains far less than full, blocks6
    (6 coupling blocks) about 1.35x the flow of full (4 blocks; the last block's
    kernels differ); epochs scale training, not the
    per-image count."""
    full = forward_gflops("csflow", SMALL_CSFLOW)
    single = forward_gflops("csflow", {**SMALL_CSFLOW, "scale_mode": "single", "scale_index": 2})
    blocks6 = forward_gflops("csflow", {**SMALL_CSFLOW, "n_blocks": 6})
    assert single["trained"] < full["trained"] / 10 and blocks6["trained"] > full["trained"]
    assert 1.2 < blocks6["trained"] / full["trained"] <= 1.5  # 6 blocks against 4
    assert full["extractor"] == pytest.approx(blocks6["extractor"])
    twice = forward_gflops("csflow", {**SMALL_CSFLOW, "epochs": 4})
    assert twice == full
    data = ("mvtec_ad", "", "bottle", (), 0)
    train = {k: f for k, _, f in run_items("csflow", SMALL_CSFLOW, data, 10, 5, 0, full)}
    train4 = {k: f for k, _, f in run_items("csflow", {**SMALL_CSFLOW, "epochs": 4}, data,
                                            10, 5, 0, full)}
    assert train4["train"] == pytest.approx(2 * train["train"])
    assert train["train"] == pytest.approx(3 * full["trained"] * 1e9 * 10 * 2)


def test_a_shared_stage_and_features_count_once():
    """Two CFlow runs differing only in scoring share features and the CNF stage: the
    second adds only its scoring."""
    forward = {"extractor": 1.0, "trained": 2.0}
    config = {"backbone": "wide_resnet50_2", "input_size": 256, "padding": "reflect",
              "meta_epochs": 2, "sub_epochs": 3, "fiber_fraction": 1.0,
              "normalization": "transductive"}
    data = ("mvtec_ad", "", "bottle", (), 0)
    first = run_items("cflow", config, data, 10, 5, 0, forward)
    second = run_items("cflow", {**config, "normalization": "inductive"}, data, 10, 5, 0, forward)
    keys = {k for _, k, _ in first}
    fresh = [(kind, f) for kind, k, f in second if k not in keys]
    assert [kind for kind, _ in fresh] == ["score"]
    other_seed = run_items("cflow", config, data, 10, 5, 1, forward)
    assert {kind for kind, k, _ in other_seed if k not in keys} == {"train", "score"}


def _fake_counts(monkeypatch):
    """Per-image counts proportional to the input area: no network is built."""
    def fake(method, config):
        area = (config.get("input_size") or 256) ** 2 / 256 ** 2
        return {"extractor": 10.0 * area, "trained": 20.0 * area}
    monkeypatch.setattr("nfbench.pipeline.flops.forward_gflops", fake)


def test_plan_json_has_per_paper_flops_and_hours(monkeypatch, capsys, tmp_path):
    _fake_counts(monkeypatch)
    assert main(["plan", "--profile", "demo", "--gpus", "2", "--device-kind", "h100",
                 "--json", "--results", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["device_kind"] == "h100" and out["gpus"] == 2
    for entry in [*out["papers"].values(), out["total"]]:
        assert {"runs", "flops", "ideal_hours", "estimate_hours", "wall_hours"} <= set(entry)
        assert entry["estimate_hours"] >= entry["ideal_hours"] > 0
    assert {"csflow", "patchflow", "clscnf", "peers"} <= set(out["papers"])
    assert out["total"]["flops"] == pytest.approx(sum(p["flops"] for p in out["papers"].values()))
    # fp32 on an H100 is 989.4 / 67 times slower than bf16, FLOPs unchanged
    assert main(["plan", "--profile", "demo", "--gpus", "1", "--device-kind", "h100",
                 "--precision", "bf16", "--json", "--results", str(tmp_path)]) == 0
    bf16 = json.loads(capsys.readouterr().out)["total"]
    assert bf16["flops"] == pytest.approx(out["total"]["flops"])
    assert out["total"]["ideal_hours"] / bf16["ideal_hours"] == pytest.approx(989.4 / 67.0)


def test_plan_table_and_device_kind_choices(monkeypatch, capsys, tmp_path):
    _fake_counts(monkeypatch)
    assert main(["plan", "--profile", "demo", "--gpus", "8", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "RTX 2080 Ti" in out and "PFLOP" in out
    assert any(line.startswith("total") for line in out.splitlines())
    with pytest.raises(SystemExit) as exc:
        main(["plan", "--gpus", "1", "--device-kind", "v100"])
    assert exc.value.code == 2
    assert main(["plan", "--gpus", "0", "--device-kind", "h100"]) == 2


def test_records_of_the_device_kind_calibrate_its_efficiency(monkeypatch, tmp_path):
    from nfbench.pipeline.plan import load_params

    _fake_counts(monkeypatch)
    params = load_params()
    base = estimate_module.estimate_profile("demo", params, device_kind="h100", results=tmp_path,
                                            papers=["patchflow"])
    assert base["efficiency"]["patchflow"] == {"value": 0.3, "records": 0}
    units = estimate_module._work("demo", params, ["patchflow"],
                                  estimate_module.load_cost_model())
    unit = next(u for u in units if u["method"] == "patchflow")
    ideal = unit["own_flops"] / 67e12  # fp32 peak: the demo runs' precision
    path = tmp_path / unit["run"].record_path
    path.parent.mkdir(parents=True)
    record = {"profile": "demo", "environment": {"gpu": "NVIDIA H100 80GB HBM3"},
              "timing": {"fit_seconds": ideal * 5, "score_seconds": ideal * 3,
                         "protocol_seconds": ideal * 2}}
    path.write_text(json.dumps(record))
    calibrated = estimate_module.estimate_profile("demo", params, device_kind="h100",
                                                  results=tmp_path, papers=["patchflow"])
    assert calibrated["efficiency"]["patchflow"]["records"] == 1
    assert calibrated["efficiency"]["patchflow"]["value"] == pytest.approx(0.1)
    # a 2080 Ti estimate ignores the H100 record
    other = estimate_module.estimate_profile("demo", params, device_kind="rtx2080ti",
                                             results=tmp_path, papers=["patchflow"])
    assert other["efficiency"]["patchflow"]["records"] == 0


def test_clscnf_fine_tuning_is_shared_and_nsfe_trains_its_own_flows():
    """sFE and nsFE runs of one category and seed share the FE stage; nsFE's flows read the
    frozen ImageNet features, so its CNF stage is its own."""
    forward = {"extractor": 1.0, "trained": 2.0}
    config = {"backbone": "wide_resnet50_2", "input_size": 256, "finetune": "cls",
              "fe_freeze_epochs": 2, "fe_meta_epochs": 1, "fe_sub_epochs": 1, "fe_repeat": 1,
              "meta_epochs": 2, "sub_epochs": 1, "shared_encoder": True}
    data = ("mvtec_ad", "", "bottle", (), 0)
    sfe = run_items("clscnf", config, data, 10, 5, 0, forward)
    nsfe = run_items("clscnf", {**config, "shared_encoder": False}, data, 10, 5, 0, forward)
    assert sfe[0][0] == "train" and sfe[0][2] == pytest.approx(10 * 1e9 * (2 + 3 * 1))
    assert sfe[0][1] == nsfe[0][1]  # one FE stage
    cnf = [k for kind, k, _ in sfe if kind == "train"][1]
    assert cnf not in {k for _, k, _ in nsfe}
