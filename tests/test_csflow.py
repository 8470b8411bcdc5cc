"""CS-Flow as a method: training guard, scale modes, scoring, the CLI on an MTD-layout copy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nfbench.datasets import image_sets, load_table
from nfbench.errors import TrainingDivergedError, UserError
from nfbench.methods import create_method
from nfbench.methods.base import seed_everything
from nfbench.metrics import image_auroc

TINY = dict(backbone="efficientnet_lite0", input_size=128, hidden_channels=16, n_blocks=2,
            epochs=3, batch_size=8)


def _sets(root, category, size=128):
    return image_sets(load_table("demo", root), category, size)


def test_nan_loss_stops_training_with_epoch_and_step(tiny_demo, monkeypatch):
    from nfbench.methods.csflow import detector as module

    # a NaN loss of the graph (the step is taken; the epoch's end reads it and stops)
    monkeypatch.setattr(module, "nll_loss", lambda z, log_jac, *args: (z[0] * float("nan")).mean())
    train, _ = _sets(tiny_demo, "brick")
    with pytest.raises(TrainingDivergedError, match=r"epoch 1, step 1"):
        create_method("csflow", **TINY).fit(train)


@pytest.mark.parametrize("mode, expected_inputs", [
    ("cross", [(192, 4, 4), (192, 2, 2), (192, 1, 1)]),
    ("single", [(192, 2, 2)]),
    ("separate", [(192, 4, 4), (192, 2, 2), (192, 1, 1)]),
    ("concat", [(576, 4, 4)]),
])
def test_scale_modes_feed_the_table3_inputs(mode, expected_inputs, tiny_demo):
    detector = create_method("csflow", **{**TINY, "epochs": 1}, scale_mode=mode, scale_index=1)
    train, test = _sets(tiny_demo, "gravel")
    detector.fit(train.subset(range(4)))
    assert detector.input_shapes_ == expected_inputs
    scores = detector.score(test.subset(range(3)))
    assert scores.pixel.shape == (3, 128, 128) and np.isfinite(scores.image).all()


def test_training_lowers_the_loss_and_learns_the_normal_class(tiny_demo):
    """A flow trained on brick must find another category's normal images less likely.
    (Brick vs coin: normalizing flows can rank *simpler* textures as more likely than the
    training data, Kirichenko et al. 2020, so the alien class is the more complex one.)"""
    seed_everything(0)
    detector = create_method("csflow", **{**TINY, "epochs": 8, "lr": 1e-3})
    train, brick_test = _sets(tiny_demo, "brick")
    _, coin_test = _sets(tiny_demo, "coin")
    detector.fit(train)
    assert detector.loss_history_[-1] < detector.loss_history_[0] - 0.5
    normal = brick_test.subset([i for i, y in enumerate(brick_test.labels) if y == 0])
    alien = coin_test.subset([i for i, y in enumerate(coin_test.labels) if y == 0])
    scores = np.r_[detector.score(normal).image, detector.score(alien).image]
    labels = np.r_[np.zeros(len(normal)), np.ones(len(alien))]
    assert image_auroc(labels, scores) > 0.9


def test_invalid_configs_are_user_errors():
    with pytest.raises(UserError, match="scale_mode"):
        create_method("csflow", scale_mode="diagonal")
    with pytest.raises(UserError, match="multiple of 128"):
        create_method("csflow", input_size=300)
    with pytest.raises(UserError, match="log_jac_reduction"):
        create_method("csflow", log_jac_reduction="mean")
    with pytest.raises(UserError, match="one odd size per block"):
        create_method("csflow", n_blocks=5, kernel_sizes="[3, 3, 3, 5]")
    assert create_method("csflow", n_blocks=2, kernel_sizes="[3, 5]").config.kernel_sizes == (3, 5)


def test_batch_sum_log_jac_is_anomalibs_loss():
    """log_jac_reduction=batch_sum equals anomalib's CsFlowLoss on the batch-summed scalar
    log-determinant, i.e. the per-sample loss with log_jac multiplied by the batch size."""
    from nfbench.methods.csflow.flow import nll_loss

    g = torch.Generator().manual_seed(0)
    z = [torch.randn(5, 4, 6, 6, generator=g, dtype=torch.float64),
         torch.randn(5, 4, 3, 3, generator=g, dtype=torch.float64)]
    log_jac = torch.randn(5, generator=g, dtype=torch.float64) * 10
    flat = torch.cat([t.flatten(1) for t in z], dim=1)
    d = flat.shape[1]
    anomalib = torch.mean(0.5 * flat.pow(2).sum(dim=1) - log_jac.sum()) / d  # CsFlowLoss
    got = nll_loss(z, log_jac, "batch_sum")
    torch.testing.assert_close(got, anomalib)
    torch.testing.assert_close(got, nll_loss(z, log_jac * 5))
    assert not torch.allclose(got, nll_loss(z, log_jac))
    torch.testing.assert_close(nll_loss(z, log_jac),
                               (0.5 * flat.pow(2).sum(dim=1) - log_jac).mean() / d)


def test_paper_config_counts_flops_without_weights():
    from nfbench.profiling import count_flops

    detector = create_method("csflow", backbone="efficientnet_lite0", input_size=256,
                             hidden_channels=32)
    module = detector.inference_module(pretrained=False)
    flops = count_flops(module, torch.rand(1, 3, 256, 256))
    assert flops["gflops_torch"] == pytest.approx(2 * flops["gmacs_fvcore"], rel=0.05)
    image, pixel = module(torch.rand(2, 3, 256, 256))
    assert image.shape == (2,) and pixel.shape == (2, 256, 256)


def _mtd_copy_from_demo(root, demo_root) -> None:
    """A folder in MTD's official layout and counts, its files hard links to demo images."""
    import os

    from nfbench.datasets import mtd

    demo = load_table("demo", demo_root)
    normals = demo[demo["label"] == 0]["path"].tolist()
    defects = demo[demo["label"] == 1][["path", "mask_path"]].values.tolist()
    free = root / "MT_Free/Imgs"
    free.mkdir(parents=True)
    extra = [f"exp9_num_{i}.jpg" for i in range(mtd.CLASS_COUNTS["Free"] - 761)]
    for i, name in enumerate(mtd.train_filenames() + extra):
        os.link(normals[i % len(normals)], free / name)
    for cls in mtd.DEFECT_CLASSES:
        folder = root / f"MT_{cls}/Imgs"
        folder.mkdir(parents=True)
        for i in range(mtd.CLASS_COUNTS[cls]):
            image, mask = defects[i % len(defects)]
            os.link(image, folder / f"exp{i}.jpg")
            os.link(mask, folder / f"exp{i}.png")


def test_cli_runs_csflow_on_an_mtd_layout_copy(tmp_path, tiny_demo):
    """`nfbench run --dataset mtd --profile paper --set backbone=...` end to end on a folder in
    MTD's official layout and counts (demo images stand in for the tiles)."""
    from nfbench.cli import main

    root = tmp_path / "mtd"
    _mtd_copy_from_demo(root, tiny_demo)
    out = tmp_path / "record.json"
    code = main(["run", "--method", "csflow", "--dataset", "mtd", "--root", str(root),
                 "--profile", "paper", "--out", str(out), "--set", "backbone=efficientnet_lite0",
                 "--set", "input_size=128", "--set", "hidden_channels=8", "--set", "epochs=1",
                 "--set", "n_blocks=1", "--set", "batch_size=64"])
    assert code == 0
    record = json.loads(out.read_text())
    assert record["dataset"] == "mtd" and record["profile"] == "paper"
    assert record["config"]["backbone"] == "efficientnet_lite0"
    assert record["config"]["hidden_channels"] == 8
    assert (record["data"]["n_train"], record["data"]["n_test"]) == (761, 191 + 392)
    assert 0.0 <= record["metrics"]["image_auroc"] <= 1.0


@pytest.mark.parametrize("mode", ["cross", "separate", "concat"])
def test_inference_module_matches_score(mode, tiny_demo):
    """The profiling module (images → backbone → CSFlowModel) is score()'s forward."""
    from nfbench.methods.base import ProfilingNotSupported

    seed_everything(0)
    detector = create_method("csflow", **{**TINY, "epochs": 1}, scale_mode=mode)
    train, test = _sets(tiny_demo, "brick")
    detector.fit(train.subset(range(4)))
    test = test.subset(range(3))
    with torch.no_grad():
        image, pixel = detector.inference_module()(test.load_images())
    scores = detector.score(test)
    np.testing.assert_allclose(image.numpy(), scores.image, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(pixel.numpy(), scores.pixel, rtol=1e-4, atol=1e-5)
    with pytest.raises(ProfilingNotSupported):
        detector.inference_module("flow")
