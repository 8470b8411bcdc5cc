"""PatchFlow: flow invertibility and log-det, aggregation, adapter, crop/pad, loss guard,
determinism, the synthetic validation option and a fit above chance on the demo data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nfbench import metrics
from nfbench.datasets import image_sets, load_table
from nfbench.errors import TrainingDivergedError, UserError
from nfbench.methods import create_method
from nfbench.methods.base import ProfilingNotSupported, seed_everything
from nfbench.methods.patchflow import flow as pf
from nfbench.methods.patchflow import ADAPTERS, PatchFlowDetector
from nfbench.methods.synthetic import VALIDATION_AREA, synthetic_anomaly
from nfbench.methods.synthetic import tensor_images as _tensor_images

SMOKE = dict(PatchFlowDetector.smoke_settings)


def _maps(batch=2, channels=(4, 6, 8), size=8, n_scales=3, dtype=torch.float64, seed=0):
    """Random stand-ins for backbone maps [scale][layer] at strides 8/16/32 of a 8*size input."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in range(n_scales):
        base = max(size // 2 ** s, 1)
        out.append([torch.randn(batch, c, max(base // 2 ** l, 1), max(base // 2 ** l, 1),
                                generator=g, dtype=dtype) for l, c in enumerate(channels)])
    return out


def _demo(root, category, size):
    return image_sets(load_table("demo", root), category, size)


# -- flow ----------------------------------------------------------------------------------

@pytest.mark.parametrize("subnet,steps", [("code", 1), ("code", 2), ("paper", 2)])
def test_flow_invertible(subnet, steps):
    torch.manual_seed(0)
    flow = pf.build_flow(8, 5, 5, steps=steps, hidden=16, subnet=subnet, seed=3).double().eval()
    x = torch.randn(3, 8, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        z, log_jac = flow(x)
        x_rec, log_jac_rev = flow(z, rev=True)
    assert z.shape == x.shape and log_jac.shape == (3,)
    assert (z - x).abs().max() > 1e-2  # the flow really transforms
    assert log_jac.abs().min() > 1e-4
    torch.testing.assert_close(x_rec, x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(log_jac_rev, -log_jac, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("subnet", ["code", "paper"])
def test_log_det_matches_numerical_jacobian(subnet):
    """BatchNorm sits inside the subnet, which need not be invertible; in eval mode the flow
    is a fixed bijection and its log-det must equal log|det J| of the full Jacobian."""
    torch.manual_seed(1)
    flow = pf.build_flow(4, 3, 3, steps=2, hidden=8, subnet=subnet, seed=1).double().eval()
    with torch.no_grad():  # non-trivial global affine and BN statistics
        for block in flow.module_list:
            block.global_scale.add_(torch.randn_like(block.global_scale))
            block.global_offset.add_(torch.randn_like(block.global_offset))
            for m in block.subnet.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda t: flow(t)[0], x).reshape(36, 36)
    _, log_jac = flow(x)
    sign, logabs = torch.linalg.slogdet(jac)
    assert sign != 0
    assert abs(logabs.item() - log_jac.item()) < 1e-8


def test_flow_permutation_seeded_and_numpy_state_untouched():
    state = np.random.get_state()[1].copy()
    a = pf.build_flow(8, 2, 2, seed=5).module_list[0].w_perm
    b = pf.build_flow(8, 2, 2, seed=5).module_list[0].w_perm
    np.testing.assert_array_equal(np.random.get_state()[1], state)
    assert torch.equal(a, b)


# -- aggregation, adapter, loss ---------------------------------------------------------------

def test_aggregated_channel_arithmetic():
    assert pf.aggregated_channels([64, 128, 304], 3) == 1488  # B5 blocks 12/19/35, 3 scales
    assert pf.aggregated_channels([64, 128, 304], 1) == 496
    assert pf.aggregated_channels([40, 80, 192], 3) == 936  # Lite0 stand-in
    fused = pf.aggregate_features(_maps(channels=(64, 128, 304), size=12, dtype=torch.float32))
    assert fused.shape == (2, 1488, 12, 12)


def test_aggregation_is_local_average_then_upsample():
    maps = _maps(size=8)
    fused = pf.aggregate_features(maps, patch_size=3)
    # first block: 3x3 mean with zero padding counted (AvgPool2d(3, 1, 1))
    x = maps[0][0]
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    assert torch.allclose(fused[:, :4, 2, 3], padded[:, :, 2:5, 3:6].mean(dim=(-1, -2)))
    # patch size 1 = no aggregation
    assert torch.equal(pf.aggregate_features(maps, patch_size=1)[:, :4], x)
    with pytest.raises(ValueError):
        pf.aggregate_features(maps, patch_size=2)


def test_lite0_aggregated_channels(tiny_demo):
    detector = create_method("patchflow", **{**SMOKE})
    train, _ = _demo(tiny_demo, "brick", detector.config.input_size)
    maps = detector._maps(train.subset(range(2)))
    assert [[m.shape[1] for m in scale] for scale in maps] == [[40, 80, 192]] * 3
    fused = pf.aggregate_features(maps)
    assert fused.shape == (2, 936, 16, 16)  # 128 px / stride 8


@pytest.mark.parametrize("adapter,subnet", [("code", "code"), ("paper", "paper"),
                                            ("paper", "code")])
def test_adapter_choices_shapes(adapter, subnet):
    torch.manual_seed(0)
    net = pf.PatchFlowNet(1488, ADAPTERS[adapter], (4, 4), hidden=16, subnet=subnet).eval()
    fused = pf.aggregate_features(_maps(channels=(64, 128, 304), size=4, dtype=torch.float32))
    z, log_jac = net(fused)
    assert z.shape == (2, {"code": 128, "paper": 768}[adapter], 4, 4)
    assert log_jac.shape == (2,)
    with pytest.raises(ValueError):
        pf.PatchFlowNet(100, 128, (4, 4))


def test_adapt_maps_equals_adapter_of_aggregated_features():
    torch.manual_seed(0)
    maps = _maps(channels=(4, 6, 8), size=8)
    net = pf.PatchFlowNet(54, 5, (8, 8), hidden=8).double().eval()
    direct = net.adapter(pf.aggregate_features(maps, 3))
    torch.testing.assert_close(net.adapt_maps(maps, 3), direct, rtol=1e-12, atol=1e-12)


def test_adapter_volume_removes_the_scale_degeneracy():
    torch.manual_seed(0)
    w = torch.randn(5, 12, 1, 1, dtype=torch.float64)
    # scaling the adapter by a changes its log-volume by C_g log a, exactly the amount by which
    # Eq. 5 alone drops when the flow absorbs the scale: the sum is invariant
    assert math.isclose(pf.adapter_log_volume(0.1 * w).item(),
                        pf.adapter_log_volume(w).item() + 5 * math.log(0.1), rel_tol=1e-12)


def test_nll_loss_and_anomaly_map():
    z = torch.zeros(2, 4, 3, 3)
    assert pf.nll_loss(z, torch.zeros(2)).item() == 0.0
    assert pf.nll_loss(z, torch.full((2,), 36.0)).item() == pytest.approx(-1.0)
    z[0, :, 1, 1] = 3.0
    amap = pf.anomaly_map(z)
    assert amap.shape == (2, 3, 3) and amap.dtype == torch.float64
    assert amap[1].eq(-1).all() and amap[0, 1, 1] == pytest.approx(-math.exp(-4.5))


# -- crop and pad --------------------------------------------------------------------------

def test_upsample_and_pad():
    maps = -torch.rand(2, 4, 4, dtype=torch.float64) * 0.5
    full = pf.upsample_and_pad(maps, crop=14, size=16)
    assert full.shape == (2, 16, 16)
    border = torch.ones(16, 16, dtype=torch.bool)
    border[1:15, 1:15] = False
    assert full[:, border].eq(pf.PAD_VALUE).all()
    assert (full[:, 1:15, 1:15] > pf.PAD_VALUE).all()
    # align_corners=True: the corners of the crop are the corners of the map
    assert torch.allclose(full[:, 1, 1], maps[:, 0, 0]) and torch.allclose(full[:, 14, 14],
                                                                           maps[:, 3, 3])
    assert torch.equal(pf.upsample_and_pad(maps, 16, 16)[:, 0, 0], maps[:, 0, 0])


def test_crop_scales_are_nearest_resized_whole_images(tiny_demo):
    """The original's crop: scale 0 is the whole image, scale s the whole image resized
    (nearest) to crop // 2**s; the scale-0 cache entry is the one every other method uses."""
    import torch.nn.functional as F

    from nfbench.feature_cache import cache_key, get_extractor, scaled_inputs

    detector = create_method("patchflow", **{**SMOKE, "crop_size": 112})
    _, test = _demo(tiny_demo, "brick", 128)
    test = test.subset(range(2))
    maps = detector._maps(test)
    whole = test.load_images()
    inputs = scaled_inputs(whole, 3, 112)
    assert inputs[0] is whole and [x.shape[-1] for x in inputs] == [128, 56, 28]
    for s in (1, 2):
        assert torch.equal(inputs[s], F.interpolate(whole, size=(112 // 2**s,) * 2,
                                                    mode="nearest"))
    extractor = get_extractor(SMOKE["backbone"], list(detector.config.layers), "cpu")
    with torch.no_grad():
        for s in range(3):
            for got, want in zip(maps[s], extractor(inputs[s])):
                torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-5)
    # key scheme: unchanged without a crop (or a crop equal to the input), new for s > 0 only
    key = lambda s, base: cache_key(SMOKE["backbone"], "stride8", s, test, base)
    assert key(0, 112) == key(0, None) and key(1, 128) == key(1, None)
    assert key(1, 112) != key(1, None) and key(2, 112) != key(2, None)


def test_crop_map_sees_the_outer_band(tiny_demo):
    """With input 128 and crop 112, changing only the outer 8-px band changes the map inside
    the crop (the backbone sees the whole image), while the band itself stays -1."""
    seed_everything(0)
    detector = create_method("patchflow", **{**SMOKE, "crop_size": 112, "epochs": 1})
    train, test = _demo(tiny_demo, "brick", 128)
    detector.fit(train.subset(range(4)))
    assert detector.shape_[1:] == (14, 14)  # (crop // 8)², as the original
    images = test.load_images(range(2))
    changed = images.clone()
    changed[..., :8, :] = torch.rand(2, 3, 8, 128, generator=torch.Generator().manual_seed(1))
    before = detector._pixel_maps(detector._maps(_tensor_images("a", test.paths[:2], images)))
    after = detector._pixel_maps(detector._maps(_tensor_images("b", test.paths[:2], changed)))
    for _, pixel in (before, after):
        band = np.ones((128, 128), dtype=bool)
        band[8:120, 8:120] = False
        assert np.all(pixel[:, band] == -1.0) and np.all(pixel[:, 8:120, 8:120] > -1.0)
    assert np.abs(before[1][:, 8:120, 8:120] - after[1][:, 8:120, 8:120]).max() > 1e-6
    assert not np.array_equal(before[0], after[0])


def test_crop_scores_cover_the_full_image_and_are_deterministic(tiny_demo):
    settings = {**SMOKE, "crop_size": 96, "epochs": 1}
    train, test = _demo(tiny_demo, "coin", settings["input_size"])
    test = test.subset(range(4))
    runs = []
    for _ in range(2):
        seed_everything(7)
        detector = create_method("patchflow", **settings)
        seed_everything(7)
        runs.append(detector.fit(train.subset(range(6))).score(test))
    scores = runs[0]
    assert scores.pixel.shape == (4, 128, 128)
    assert detector.shape_[1:] == (12, 12)  # 96 px crop / stride 8
    # outside the crop: the lowest score (the original pads with -1, the infimum of the map)
    assert np.all(scores.pixel[:, :16] == -1.0) and np.all(scores.pixel[:, :, -16:] == -1.0)
    assert np.all(scores.pixel[:, 16:112, 16:112] > -1.0)
    np.testing.assert_allclose(scores.image, scores.pixel.reshape(4, -1).max(axis=1), rtol=1e-6)
    np.testing.assert_array_equal(runs[1].image, scores.image)
    np.testing.assert_array_equal(runs[1].pixel, scores.pixel)


def test_inference_module_matches_score(tiny_demo):
    seed_everything(0)
    detector = create_method("patchflow", **{**SMOKE, "crop_size": 112, "epochs": 1})
    train, test = _demo(tiny_demo, "brick", 128)
    detector.fit(train.subset(range(4)))
    test = test.subset(range(3))
    module = detector.inference_module()
    with torch.no_grad():
        image, pixel = module(test.load_images())
    scores = detector.score(test)
    np.testing.assert_allclose(image.numpy(), scores.image, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(pixel.numpy(), scores.pixel, rtol=1e-4, atol=1e-6)
    untrained = create_method("patchflow", **SMOKE).inference_module()
    image, pixel = untrained(torch.rand(2, 3, 128, 128))
    assert image.shape == (2,) and pixel.shape == (2, 128, 128)
    with pytest.raises(ProfilingNotSupported):
        detector.inference_module("flow")


# -- training guards and options -----------------------------------------------------------

def test_nan_loss_raises_with_epoch_and_step(tiny_demo, monkeypatch):
    monkeypatch.setattr(pf, "nll_loss", lambda z, log_jac: (z * float("nan")).mean())
    detector = create_method("patchflow", **SMOKE)
    train, _ = _demo(tiny_demo, "brick", 128)
    with pytest.raises(TrainingDivergedError, match=r"epoch 1, step 1"):
        detector.fit(train.subset(range(4)))


def test_bad_settings_are_user_errors():
    for bad in ({"adapter": "wide"}, {"adapter_training": "sometimes"}, {"validation": "test"},
                {"crop_size": 900}, {"patch_size": 2}, {"subnet": "mlp"}):
        with pytest.raises(UserError):
            create_method("patchflow", **bad)
    with pytest.raises(UserError, match="adapter"):  # 768 > 312 channels of one Lite0 scale
        create_method("patchflow", **{**SMOKE, "adapter": "paper", "n_scales": 1})._build_net(
            (312, 4, 4))


def test_synthetic_anomaly_mask_and_blend():
    rng = np.random.default_rng(0)
    image = np.random.default_rng(1).random((128, 128, 3))
    for _ in range(4):
        out, mask = synthetic_anomaly(image, rng)
        assert out.shape == image.shape and mask.shape == (128, 128) and mask.dtype == bool
        low, high = VALIDATION_AREA  # the original's effective 0.04-0.2 % of the image
        assert low <= mask.mean() <= high
        np.testing.assert_allclose(out[~mask], image[~mask], atol=1e-6)  # only inside the mask
        assert np.abs(out[mask] - image[mask]).mean() > 1e-3
    again, _ = synthetic_anomaly(image, np.random.default_rng(0))
    first, _ = synthetic_anomaly(image, np.random.default_rng(0))
    np.testing.assert_array_equal(again, first)


def test_synthetic_validation_uses_held_out_train_images_only(tiny_demo, monkeypatch):
    import nfbench.datasets.base as base

    train, test = _demo(tiny_demo, "gravel", 128)
    loaded: list[str] = []
    original = base.load_image
    monkeypatch.setattr(base, "load_image", lambda path, size: (loaded.append(str(path)),
                                                                 original(path, size))[1])
    seed_everything(0)
    detector = create_method("patchflow", **{**SMOKE, "validation": "synthetic", "epochs": 3})
    detector.fit(train)
    held_out = set(detector.validation_indices_)
    assert len(held_out) == int(0.2 * len(train)) and not held_out & set(detector.fit_indices_)
    assert sorted(held_out | set(detector.fit_indices_)) == list(range(len(train)))
    assert set(loaded) <= set(train.paths) and not set(loaded) & set(test.paths)
    assert {train.paths[i] for i in held_out} <= set(loaded)
    assert len(detector.validation_history_) == 3 and 1 <= detector.selected_epoch_ <= 3
    assert detector.validation_history_[detector.selected_epoch_ - 1] == max(
        detector.validation_history_)


def test_fit_learns_the_normal_class_and_localises_defects(tiny_demo):
    """On the tiny 128-px demo (12 training images), image AUROC for the demo defects is
    near chance (0.35-0.8 over seeds), so the check is twofold: normal images of another
    category score as anomalous (AUROC 1.0 for every pair and seed tried), and coin defects are
    localised above chance (pixel AUROC 0.73-0.80 over seeds 0-2)."""
    settings = {**SMOKE, "epochs": 8, "batch_size": 4}
    normals = lambda t: t.subset([i for i, y in enumerate(t.labels) if y == 0])
    seed_everything(0)
    detector = create_method("patchflow", **settings)
    train, test = _demo(tiny_demo, "coin", 128)
    scores = detector.fit(train).score(test)
    assert detector.loss_history_[-1] < detector.loss_history_[0] - 0.5
    assert metrics.pixel_auroc(test.load_masks(), scores.pixel) > 0.7
    normal = detector.score(normals(test)).image
    alien = detector.score(normals(_demo(tiny_demo, "brick", 128)[1])).image
    labels = np.r_[np.zeros(len(normal)), np.ones(len(alien))]
    assert metrics.image_auroc(labels, np.r_[normal, alien]) > 0.9


def test_flops_count_the_paper_order_without_weights():
    from nfbench.profiling import count_flops

    detector = create_method("patchflow", **{**SMOKE, "crop_size": 112})
    module = detector.inference_module(pretrained=False)
    flops = count_flops(module, torch.rand(1, 3, 128, 128))
    assert flops["gflops_torch"] == pytest.approx(2 * flops["gmacs_fvcore"], rel=0.05)
    # the adapter alone (936 -> 128 on 14x14 positions) is part of the count
    assert flops["gmacs_fvcore"] > 936 * 128 * 14 * 14 / 1e9
