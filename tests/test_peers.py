"""The anomalib cross-check (nfbench.peers): the CS-Flow log-determinant relation on identical
inputs, the cached-feature encoder, end-to-end peer runs, skipped records and the report."""

from __future__ import annotations

import re

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nfbench.peers import deviations

ROOT = Path(__file__).resolve().parents[1]
anomalib = pytest.importorskip("anomalib", reason="the `peers` extra (anomalib 2.7) is not installed")


def _inputs(batch: int, channels: int = 8, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, channels, s, s, generator=g) for s in (4, 2, 1)]


def _perturbed(flow):
    """anomalib initialises each cross-convolution's output gain (gamma) at 0, so an untrained
    flow has log|J| = 0 and the weighting would not show: move every parameter a little."""
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return flow


def test_csflow_loss_weighs_the_log_determinant_by_the_batch_size(one_thread):
    """anomalib's ParallelGlowCouplingLayer returns sum_b log|J_b| (a scalar), so CsFlowLoss
    = our per-sample NLL with the log-determinant multiplied by B; matched (jac / B) = ours."""
    from anomalib.models.image.csflow.loss import CsFlowLoss

    from nfbench.methods.csflow.flow import nll_loss
    from nfbench.peers.csflow import build_flow, loss

    torch.manual_seed(0)
    flow = _perturbed(build_flow(8, 128, n_blocks=2, clamp=3.0, hidden=16)).eval()
    xs, batch = _inputs(5), 5
    with torch.no_grad():
        z, jac = flow(xs)
        per_sample = torch.stack([flow([x[b:b + 1] for x in xs])[1] for b in range(batch)])
    # the coupling layer returns one scalar; FrEIA's GraphINN adds it to its zeros(B), so
    # every sample's entry is the log-determinant summed over the whole batch
    per_sample = per_sample.reshape(batch)
    assert jac.shape == (batch,)
    assert torch.allclose(jac, per_sample.sum().expand(batch), rtol=1e-5, atol=1e-4)
    assert per_sample.abs().max() > 1e-2  # a non-trivial log-determinant, so B matters

    shipped = CsFlowLoss()(list(z), jac)
    assert torch.allclose(shipped, nll_loss(z, batch * per_sample), rtol=1e-5, atol=1e-6)
    assert torch.allclose(loss(z, jac, batch, "shipped"), shipped)
    matched = loss(z, jac, batch, "matched")
    assert torch.allclose(matched, nll_loss(z, per_sample), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(shipped, matched, rtol=1e-3), "the two weightings must differ"
    # the difference is exactly (B - 1) mean_b log|J_b| / D
    d = sum(t[0].numel() for t in z)
    assert float(matched - shipped) == pytest.approx(float((batch - 1) * per_sample.mean() / d),
                                                     rel=1e-4)


def test_csflow_gradients_of_the_two_losses_differ_by_the_log_det_weight(one_thread):
    """The shipped gradient equals the gradient of our NLL with B * log|J|: anomalib's
    optimiser sees a log-determinant term B times stronger than the original's."""
    from nfbench.methods.csflow.flow import nll_loss
    from nfbench.peers.csflow import build_flow, loss

    torch.manual_seed(1)
    flow = _perturbed(build_flow(8, 128, n_blocks=1, clamp=3.0, hidden=8))
    xs, batch = _inputs(4, seed=1), 4
    params = [p for p in flow.parameters() if p.requires_grad]

    def grads(fn):
        flow.zero_grad()
        fn().backward()
        return torch.cat([p.grad.flatten() for p in params]).clone()

    def ours_weighted():
        z, _ = flow(xs)
        per_sample = torch.cat([flow([x[b:b + 1] for x in xs])[1] for b in range(batch)])
        return nll_loss(z, batch * per_sample)

    shipped = grads(lambda: loss(*flow(xs), batch, "shipped"))
    assert torch.allclose(shipped, grads(ours_weighted), rtol=1e-4, atol=1e-6)
    assert not torch.allclose(shipped, grads(lambda: loss(*flow(xs), batch, "matched")),
                              rtol=1e-2)


def test_cached_encoder_survives_anomalibs_bilinear_pyramid():
    import torch.nn.functional as F

    from nfbench.peers.common import CachedEncoder, index_images

    feats = [[torch.randn(7, 3, 8 // 2**s, 8 // 2**s)] for s in range(3)]
    encoder = CachedEncoder(feats, ["stride8"], 64, [8])
    images = index_images(torch.tensor([6, 0, 3]), 64)
    for s in range(3):
        scaled = images if s == 0 else F.interpolate(images, size=(64 // 2**s,) * 2,
                                                     mode="bilinear", align_corners=False)
        assert torch.equal(encoder(scaled)["stride8"], feats[s][0][[6, 0, 3]])


def _small_params() -> dict:
    from nfbench.pipeline.plan import load_params

    params = copy.deepcopy(load_params(ROOT / "params.yaml"))
    params["csflow"]["smoke"]["settings"].update(input_size=128, hidden_channels=8, epochs=1)
    params["patchflow"]["smoke"]["settings"].update(input_size=128, hidden=8, epochs=1)
    params["clscnf"]["smoke"]["settings"].update(meta_epochs=1, fiber_fraction=1.0, n_blocks=1)
    params["peers"]["smoke"] = {"methods": {
        "csflow": {"configs": ["shipped", "matched"], "seeds": {"shipped": [0], "matched": [1]},
                   "categories": ["brick"]},
        "patchflow": {"configs": ["shipped"], "seeds": [0], "categories": ["brick"]},
        "cflow": {"configs": ["matched"], "seeds": [0], "categories": ["brick"]}}}
    return params


@pytest.mark.parametrize("method,config", [("csflow", "shipped"), ("csflow", "matched"),
                                           ("patchflow", "shipped"), ("cflow", "shipped"),
                                           ("cflow", "matched")])
def test_peer_run_mirrors_our_settings_and_writes_a_peer_record(tiny_demo, one_thread,
                                                                 monkeypatch, method, config):
    from nfbench.peers.common import ours, run_peer

    monkeypatch.chdir(ROOT)
    params = _small_params()
    record = run_peer(method, "demo", "brick", config=config, seed=3, profile="smoke",
                      root=tiny_demo, params=params)
    cfg, _ = ours(method, "smoke", "brick", params)
    assert record["kind"] == "peer" and record["status"] == "ok" and record["seed"] == 3
    assert record["peer"] == "anomalib" and record["peer_version"] == "2.7.0"
    assert record["ours"]["config"]["input_size"] == cfg.input_size == 128
    assert 0.0 <= record["metrics"]["image_auroc"] <= 1.0
    assert np.isfinite(record["metrics"]["pixel_auroc"])
    assert record["data"]["n_test"] > record["data"]["n_test_anomalous"] > 0
    ids = {d["id"] for d in deviations()[method]["deviations"]}
    assert set(record["deviations_applied"]) | set(record["deviations_kept"]) == ids
    if config == "shipped":
        assert record["deviations_applied"] == []
    else:
        assert record["deviations_applied"]
    assert record["timing"]["device"] == "cpu" and record["identity"]["digest"]
    assert set(record["takes_from_ours"]) == set(deviations()[method]["takes_from_ours"])
    if method == "csflow":
        assert record["peer_settings"]["betas"] == ([0.9, 0.999] if config == "matched"
                                                    else [0.5, 0.9])
        assert record["peer_settings"]["epochs"] == cfg.epochs
        # shipped: anomalib's fixed lr (lightning_model.py configure_optimizers), not ours
        assert record["peer_settings"]["lr"] == (cfg.lr if config == "matched" else 2e-4)
    if method == "cflow":
        assert record["peer_settings"]["fiber_batch_size"] == (cfg.fiber_batch
                                                               if config == "matched" else 64)
        assert record["peer_settings"]["epochs"] == cfg.meta_epochs * cfg.sub_epochs


def test_peer_without_anomalib_writes_a_skipped_record_and_the_report_says_so(
        tmp_path, monkeypatch, capsys):
    from nfbench import peers
    from nfbench.cli import main
    from nfbench.peers.report import peers_section

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(peers, "peer_version", lambda: None)
    import nfbench.peers.common as common

    monkeypatch.setattr(common, "peer_version", lambda: None)
    out = tmp_path / "peers" / "csflow" / "shipped" / "brick" / "seed0.json"
    assert main(["peer", "--method", "csflow", "--dataset", "demo", "--category", "brick",
                 "--peer-config", "shipped", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["status"] == "skipped" and "pip install" in record["note"]
    assert "skipped" in capsys.readouterr().out
    text = "\n".join(peers_section("csflow", tmp_path))
    assert "**Skipped**" in text and '.[dev,peers]' in text


def test_report_section_compares_ours_shipped_and_matched(tmp_path):
    from nfbench.pipeline.experiment import write_record
    from nfbench.peers.report import peers_section

    def rec(path, auroc, **extra):
        write_record({"metrics": {"image_auroc": auroc, "pixel_auroc": 0.5}, **extra},
                     tmp_path / path)

    for seed, value in enumerate([0.80, 0.84]):
        rec(f"csflow/runs/full/brick/seed{seed}.json", value, seed=seed)
    rec("peers/csflow/shipped/brick/seed0.json", 0.90, status="ok", seed=0,
        deviations_kept=["log_jac_batch_sum", "adam_betas", "anomaly_map_product",
                         "soft_clamp_0636", "permutation_per_block", "backbone_torchvision_b5"])
    for seed, value in enumerate([0.70, 0.86, 0.78]):
        rec(f"peers/csflow/matched/brick/seed{seed}.json", value, status="ok", seed=seed,
            deviations_kept=["soft_clamp_0636", "permutation_per_block", "backbone_torchvision_b5"])
    text = "\n".join(peers_section("csflow", tmp_path))
    assert "## Ours vs anomalib 2.7, same features" in text
    # paired by seed (0, 1): differences -0.10, +0.02 -> t-interval contains 0
    assert "| brick | 0.820 ± 0.028 (n=2) | 0.900 (n=1) | +0.080 | 0.780 ± 0.080 (n=3) | -0.040 |" \
        " within noise [" in text
    assert "`hidden_channels`" in text and "`epochs`" in text  # what shipped takes from ours
    assert "anomalib shipped (deviates: 1, 2, 5, 6, 7)" in text  # 8 (backbone) is n/a
    assert "anomalib matched (deviates: 6, 7)" in text
    assert "1. log-determinant summed over the batch" in text
    # one seed in common: no verdict, however large the gap
    rec("peers/csflow/matched/brick/seed1.json", 0.99, status="ok", seed=7)
    rec("csflow/runs/full/brick/seed1.json", 0.10, seed=5)
    assert "not compared (seeds in common: 1; ours n=2, peer n=3)" in \
        "\n".join(peers_section("csflow", tmp_path))
    assert "*Not run in this profile*" in "\n".join(peers_section("patchflow", tmp_path))
    assert peers_section("unknown", tmp_path) == []


def test_peer_verdict_is_two_sided_and_uses_the_interval_of_the_difference():
    """within noise when the 95 % t-interval of the paired differences contains 0; ours
    above / below when it does not (a known answer: diffs 0.1, 0.2, 0.3 -> mean 0.2, sem
    0.0577, t(0.975, 2) = 4.303 -> [-0.048, 0.448])."""
    from nfbench.peers.report import _verdict, interval

    low, high, n = interval({0: 0.5, 1: 0.5, 2: 0.5}, {0: 0.6, 1: 0.7, 2: 0.8})
    assert n == 3 and low == pytest.approx(0.2 - 4.302653 * 0.1 / np.sqrt(3), abs=1e-6)
    assert high == pytest.approx(0.2 + 4.302653 * 0.1 / np.sqrt(3), abs=1e-6)
    assert _verdict({0: 0.5, 1: 0.5, 2: 0.5}, {0: 0.6, 1: 0.7, 2: 0.8}).startswith("within noise")
    assert _verdict({0: 0.9, 1: 0.91, 2: 0.92}, {0: 0.80, 1: 0.80, 2: 0.81}).startswith(
        "**ours above**")
    assert _verdict({0: 0.80, 1: 0.80, 2: 0.81}, {0: 0.9, 1: 0.91, 2: 0.92}).startswith(
        "**ours below**")
    assert _verdict({0: 1.0, 1: 1.0}, {0: 1.0, 1: 1.0}).startswith("within noise")  # 1.000 vs 1.000
    assert _verdict({0: 0.9}, {0: 0.8, 1: 0.8, 2: 0.8}).startswith("not compared")


def test_peers_stage_is_wired_into_dvc_and_params():
    import yaml

    from nfbench.pipeline.spec import load_spec

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    outs = {k: v for o in stages["peers"]["outs"] for k, v in
            (o.items() if isinstance(o, dict) else [(o, {})])}
    assert outs["results/peers"].get("cache") is False  # records in git
    assert outs["results/peers"].get("persist") is True  # peers are skipped by identity
    assert "results/peers" in stages["reports"]["deps"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    demo = params["peers"]["demo"]["methods"]
    assert set(demo) == {"csflow", "patchflow", "cflow"}
    assert len(demo["csflow"]["seeds"]["matched"]) >= 3  # CS-Flow's seed spread is large
    for method, entry in deviations().items():
        assert entry["variant"] in load_spec(entry["paper"]).variants
        assert {d["matched"] for d in entry["deviations"]} <= {"applied", "fixed", "n/a"}
    assert "/results/peers/" not in (ROOT / ".gitignore").read_text().split()
    install = re.search(r'pip install -e "\.\[([\w,]+)\]"', (ROOT / "README.md").read_text())
    assert install and "peers" in install.group(1).split(",")  # the README's install has it


def test_stage_runs_expand_the_params_block():
    from nfbench.peers.common import stage_runs

    runs = stage_runs("smoke", _small_params())
    keys = sorted((r["method"], r["config"], r["category"], r["seed"]) for r in runs)
    assert keys == [("cflow", "matched", "brick", 0), ("csflow", "matched", "brick", 1),
                    ("csflow", "shipped", "brick", 0), ("patchflow", "shipped", "brick", 0)]
    assert stage_runs("smoke", {"peers": {"smoke": {}}}) == []


def test_anomalib_csflow_permutes_every_scale_alike_unlike_the_original():
    """deviations.yaml `permutation_per_block`: anomalib draws each scale's permutation from a
    fresh default_rng(block); the original (and ours) draws one per scale from seed(block)."""
    from anomalib.models.image.csflow.torch_model import ParallelPermute as Theirs

    from nfbench.methods.csflow.flow import ParallelPermute as Ours

    dims = [(16, 4, 4), (16, 2, 2), (16, 1, 1)]
    theirs, ours = Theirs(dims, seed=1), Ours(dims, seed=1)
    assert all(torch.equal(theirs.perm[0], p) for p in theirs.perm)
    assert not torch.equal(ours.permutation(0), ours.permutation(1))
    assert not torch.equal(theirs.perm[0], ours.permutation(0))


def test_peer_table_skips_undefined_metrics():
    """Records store an undefined metric as None (strict JSON); the peer table ignores it."""
    from nfbench.peers.report import _stat

    records = [{"metrics": {"pixel_auroc": None}}, {"metrics": {"pixel_auroc": 0.8}},
               {"metrics": {"pixel_auroc": 0.6}}]
    mean, std, n = _stat(records, "pixel_auroc")
    assert n == 2 and mean == pytest.approx(0.7)


def _fake_fit(calls: list):
    """A stand-in for a wrapper's fit_and_score (the stage logic is under test, not anomalib)."""
    from nfbench.peers.common import PeerResult

    def fit_and_score(cfg, train, test, config, seed, device):
        calls.append((cfg, config, seed, device))
        n = len(test)
        labels = np.asarray(test.labels, dtype=float)
        return PeerResult(labels + 0.01 * np.arange(n), np.zeros((n, cfg.input_size,
                                                                   cfg.input_size)),
                          {"lr": 0.0}, ())
    return fit_and_score


def _stage_params(tiny_demo) -> dict:
    params = _small_params()
    for paper in ("csflow", "patchflow", "clscnf"):
        for role in params[paper]["smoke"]["datasets"].values():
            role["root"] = str(tiny_demo)
    return params


def test_peers_stage_skips_runs_by_identity_and_retrains_only_what_changed(
        tiny_demo, tmp_path, monkeypatch):
    """A second `peers` run with nothing changed trains nothing; a changed setting of one
    method retrains only that method's peers; a run dropped from the block loses its record."""
    import nfbench.peers.common as common

    monkeypatch.chdir(ROOT)
    calls: list = []
    monkeypatch.setattr(common, "_wrapper", lambda method: _fake_fit(calls))
    params = _stage_params(tiny_demo)
    paths, trained = common.run_stage("smoke", params, tmp_path, quiet=True, jobs=1)
    assert trained == 4 and len(paths) == 4 and all(p.is_file() for p in paths)
    assert all(json.loads(p.read_text())["identity"]["digest"] for p in paths)
    assert common.run_stage("smoke", params, tmp_path, quiet=True, jobs=1) == (paths, 0)
    params["patchflow"]["smoke"]["settings"]["epochs"] = 2  # only PatchFlow's peer changes
    assert common.run_stage("smoke", params, tmp_path, quiet=True, jobs=1)[1] == 1
    pending = common.pending_runs(common.stage_runs("smoke", params), "smoke", params, tmp_path)
    assert pending == []
    del params["peers"]["smoke"]["methods"]["cflow"]
    paths, trained = common.run_stage("smoke", params, tmp_path, quiet=True, jobs=1)
    assert trained == 0 and len(paths) == 3
    assert not list((tmp_path / "peers" / "cflow").glob("*/*/seed*.json"))


def test_peer_identity_does_not_depend_on_the_machine(tiny_demo, monkeypatch):
    """`device: auto` stays unresolved and a device index does not count: a peer recorded
    on cuda:3 of a GPU node is the same run to a CPU head node."""
    from nfbench.peers.common import ours, peer_identity

    monkeypatch.chdir(ROOT)
    params = _small_params()
    cfg, _ = ours("csflow", "smoke", "brick", params)
    digest = lambda c: peer_identity("csflow", "shipped", "demo", tiny_demo, "brick", 0, c)["digest"]
    cpu_view = digest(cfg)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU node
    assert digest(cfg) == cpu_view
    import dataclasses

    assert digest(dataclasses.replace(cfg, device="cuda:3")) == \
        digest(dataclasses.replace(cfg, device="cuda:0"))
    assert digest(dataclasses.replace(cfg, epochs=cfg.epochs + 1)) != cpu_view


def test_peer_runs_on_the_runs_device(tiny_demo, one_thread, monkeypatch):
    """The run's `device` setting reaches the record and anomalib's modules (CPU here)."""
    import nfbench.peers.csflow as wrapper
    from nfbench.peers.common import run_peer

    monkeypatch.chdir(ROOT)
    built = []
    original = wrapper.build_flow
    monkeypatch.setattr(wrapper, "build_flow", lambda *a, **k: built.append(original(*a, **k))
                        or built[-1])
    moved = []
    real_to = torch.nn.Module.to
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: moved.append(a) or
                        real_to(self, *a, **k))
    record = run_peer("csflow", "demo", "brick", config="shipped", profile="smoke",
                      root=tiny_demo, params=_small_params(), overrides={
                          **_small_params()["csflow"]["smoke"]["settings"], "device": "cpu"})
    assert record["timing"]["device"] == "cpu" and record["ours"]["config"]["device"] == "cpu"
    assert {p.device.type for p in built[0].parameters()} == {"cpu"}
    assert (torch.device("cpu"),) in moved  # the flow was sent to the run's device


def test_peer_mirrors_a_run_config_file_and_sets_like_nfbench_run(tmp_path, tiny_demo,
                                                                  monkeypatch, capsys):
    """`nfbench peer --config FILE --set k=v` resolves our run with nfbench run's resolver:
    the config the wrapper receives is the one `nfbench run --print-config` prints."""
    import yaml

    import nfbench.peers.common as common
    from nfbench.cli import main

    monkeypatch.chdir(ROOT)
    calls: list = []
    monkeypatch.setattr(common, "_wrapper", lambda method: _fake_fit(calls))
    for method in ("csflow", "patchflow", "cflow"):
        variant = deviations()[method]["variant"]
        assert main(["run", "--method", method, "--dataset", "demo", "--category", "brick",
                     "--root", str(tiny_demo), "--profile", "smoke", "--variant", variant,
                     "--set", "input_size=128", "--print-config"]) == 0
        config = tmp_path / f"{method}.yaml"
        config.write_text(capsys.readouterr().out)
        out = tmp_path / f"{method}.json"
        extra = ["padding=reflect"] if method == "cflow" else []  # CFlow-AD's own padding
        assert main(["peer", "--config", str(config), "--set", "batch_size=3", *extra,
                     "--peer-config", "matched", "--out", str(out)]) == 0
        capsys.readouterr()  # the peer's summary line is not the next method's config
        cfg = calls[-1][0]
        expected = yaml.safe_load(config.read_text())["settings"]
        expected.update(padding="reflect") if method == "cflow" else None
        assert cfg.input_size == 128 and cfg.batch_size == 3
        from nfbench.methods.base import config_to_dict

        got = config_to_dict(cfg)
        assert {k: v for k, v in got.items() if k != "batch_size"} == \
            {k: v for k, v in expected.items() if k != "batch_size"}
        assert json.loads(out.read_text())["config"] == "matched"
    assert calls[-1][0].padding == "reflect"


def test_test_set_bootstrap_of_the_auroc_difference_has_the_delong_spread():
    """Known answers: the vectorised draw AUROC of the unresampled set is sklearn's; against a
    constant scorer (AUROC 0.5 in every draw) the draws' spread is the AUROC's standard error,
    which DeLong's formula gives in closed form; identical sides differ by exactly 0."""
    from sklearn.metrics import roc_auc_score

    from nfbench.peers.report import auroc_draws, bootstrap_difference, interval

    rng = np.random.default_rng(1)
    labels = np.array([0] * 40 + [1] * 30)
    scores = rng.normal(size=70) + 1.0 * labels
    ones = (np.ones((1, 30)), np.ones((1, 40)))
    assert auroc_draws(labels, {0: scores}, ones)[0, 0] == pytest.approx(
        roc_auc_score(labels, scores))
    boot = bootstrap_difference(labels, {0: np.zeros(70)}, {0: scores}, draws=4000)
    a, n = scores[labels == 1], scores[labels == 0]
    psi = (a[:, None] > n[None, :]) + 0.5 * (a[:, None] == n[None, :])
    delong = np.sqrt(psi.mean(1).var(ddof=1) / len(a) + psi.mean(0).var(ddof=1) / len(n))
    assert np.std(boot, ddof=1) == pytest.approx(delong, rel=0.1)
    assert not np.any(bootstrap_difference(labels, {0: scores}, {0: scores}))
    # one seed each: the test set alone decides (n=1 vs n=1 is compared, not left out)
    low, high, count = interval({0: 0.5}, {0: 0.5 + 0.3}, boot=boot)
    assert count == 1 and low == pytest.approx(0.3 - 1.959964 * np.std(boot, ddof=1))


def test_report_compares_one_seed_each_through_the_test_set_bootstrap(tmp_path):
    """ours n=1 (scores in its .npz) vs the peer's n=1 (scores in its record): image AUROC
    gets a verdict from the test set's noise; pixel AUROC (no per-pixel scores) does not."""
    from nfbench.pipeline.experiment import write_examples, write_record
    from nfbench.peers.report import peers_section

    from sklearn.metrics import roc_auc_score

    labels = np.array([0] * 40 + [1] * 40)
    perfect = labels + 0.01 * np.arange(80)
    poor = np.random.default_rng(0).normal(size=80) + 0.3 * labels  # AUROC about 0.6
    write_record({"metrics": {"image_auroc": 1.0, "pixel_auroc": 0.9}, "seed": 0},
                 tmp_path / "csflow/runs/full/brick/seed0.json")
    write_examples({"labels": labels.astype(np.int8), "image_scores": perfect},
                   tmp_path / "csflow/runs/full/brick/seed0.npz")
    write_record({"metrics": {"image_auroc": roc_auc_score(labels, poor), "pixel_auroc": 0.9},
                  "seed": 0,
                  "status": "ok", "scores": {"labels": labels.tolist(), "image": poor.tolist()}},
                 tmp_path / "peers/csflow/matched/brick/seed0.json")
    text = "\n".join(peers_section("csflow", tmp_path))
    image, pixel = text.split("**pixel AUROC**")
    assert "| brick | 1.000 (n=1) |" in image and "**ours above** [" in image
    assert "not compared (seeds in common: 1" in pixel


def test_peers_stage_runs_extra_seeds_of_ours_and_the_report_pairs_them(tiny_demo, tmp_path,
                                                                        one_thread, monkeypatch):
    """config `ours`: seeds of OUR compared variant made as bench makes them (record + per-image
    scores beside the peers'), skipped by identity, and counted as ours by the report."""
    import nfbench.peers.common as common
    from nfbench.errors import UserError
    from nfbench.peers.report import peers_section

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(common, "_wrapper", lambda method: _fake_fit([]))
    params = _stage_params(tiny_demo)
    params["peers"]["smoke"] = {"methods": {"patchflow": {
        "configs": ["ours", "shipped"], "seeds": {"ours": [1], "shipped": [1]},
        "categories": ["brick"]}}}
    paths, trained = common.run_stage("smoke", params, tmp_path, quiet=True, jobs=1)
    assert trained == 2
    record = json.loads((tmp_path / "peers/patchflow/ours/brick/seed1.json").read_text())
    assert record["kind"] == "peer_ours" and record["variant"] == "full" and record["seed"] == 1
    assert (tmp_path / "peers/patchflow/ours/brick/seed1.npz").is_file()
    assert common.run_stage("smoke", params, tmp_path, quiet=True, jobs=1)[1] == 0
    text = "\n".join(peers_section("patchflow", tmp_path))
    assert f"| brick | {record['metrics']['image_auroc']:.3f} (n=1) |" in text
    assert "(seeds in common: 1" not in text.split("**pixel AUROC**")[0]  # paired via bootstrap
    table = text.split("**image AUROC**")[1].split("**pixel AUROC**")[0]
    assert "| ours vs shipped |" in table and "matched" not in table  # only configs that ran
    # ours ran a category the peers did not: compared on the peers' categories only
    extra = tmp_path / "patchflow/runs/full/coin/seed0.json"
    extra.parent.mkdir(parents=True)
    extra.write_text(json.dumps({**record, "category": "coin", "seed": 0,
                                 "metrics": {**record["metrics"], "image_auroc": 0.5}}))
    text = "\n".join(peers_section("patchflow", tmp_path))
    assert "| coin |" not in text and "Categories: those the peers ran (brick;" in text
    assert f"| mean | {record['metrics']['image_auroc']:.3f} (n=1) |" in text
    params["peers"]["smoke"]["methods"]["patchflow"]["configs"] = ["bogus"]
    with pytest.raises(UserError, match="bogus"):
        common.stage_runs("smoke", params)


def test_anomalib_cflow_decoder_and_encoding_compute_ours_exactly():
    """The CFlow-AD gap to matched is not in the model: with the same weights anomalib's
    cflow_head computes our conditional flow exactly, and its positional encoding is ours
    (deviations.yaml cflow note)."""
    from anomalib.models.image.cflow.utils import cflow_head, get_logp
    from anomalib.models.image.cflow.utils import positional_encoding_2d as theirs_pe

    from nfbench.methods.cnf.flows import build_conditional_flow, log_likelihood
    from nfbench.methods.cnf.flows import positional_encoding_2d as ours_pe

    torch.manual_seed(0)
    theirs = cflow_head(128, 2, 1.9, 16, permute_soft=True)
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ours = build_conditional_flow(16, 2, 128, 1.9, permute_soft=True, seed=3)
    ours.load_state_dict(theirs.state_dict())
    x, c = torch.randn(50, 16), torch.randn(50, 128)
    (zt, jt), (zo, jo) = theirs(x, c=[c]), ours(x, c=[c])
    assert torch.equal(zt, zo) and torch.equal(jt, jo)
    assert torch.allclose(get_logp(16, zt, jt), log_likelihood(zo, jo), atol=1e-5)
    assert torch.allclose(theirs_pe(128, 5, 7), ours_pe(128, 5, 7), atol=1e-6)


def test_the_stage_starts_the_runs_that_took_longest_before(tmp_path):
    """Longest first, by an earlier record's seconds (unknown runs first), so that the pool
    does not end with one long run alone; the order changes no number."""
    import json

    from nfbench.peers.common import _longest_first, record_path

    runs = [{"method": "cflow", "config": c, "category": "logo", "seed": 0}
            for c in ("matched", "ours", "shipped")]
    for run, seconds in zip(runs[:2], (3.0, 9.0)):
        path = tmp_path / record_path(run["method"], run["config"], run["category"], run["seed"])
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"timing": {"fit_and_score_seconds": seconds}}))
    assert [r["config"] for r in _longest_first(runs, tmp_path)] == ["shipped", "ours", "matched"]
