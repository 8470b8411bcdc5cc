"""CFlow-AD (method ``cflow``) and the conditional-flow code CLS-CNFs shares with it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from nfbench.datasets import image_sets, load_table
from nfbench.errors import TrainingDivergedError, UserError
from nfbench.methods import create_method
from nfbench.methods.base import seed_everything
from nfbench.methods import cnf as F
from nfbench.methods.cflow import detector as cflow_detector
from nfbench.metrics import image_auroc, pixel_auroc

SMOKE = {"backbone": "efficientnet_lite0", "input_size": 128, "padding": "zeros", "n_blocks": 2,
         "meta_epochs": 2, "sub_epochs": 1, "warm_epochs": 1, "fiber_fraction": 0.25,
         "reuse_stages": False}


pytestmark = pytest.mark.usefixtures("one_thread")


def _sets(root, category="brick", size=128):
    return image_sets(load_table("demo", root), category, size)


# ------------------------------------------------------------------------ positional encoding

def test_positional_encoding_properties():
    dim, h, w = 16, 5, 7
    pe = F.positional_encoding_2d(dim, h, w)
    assert pe.shape == (dim, h, w) and pe.abs().max() <= 1.0
    half = dim // 2
    # the first half encodes the column only, the second half the row only
    assert torch.allclose(pe[:half], pe[:half, :1, :].expand(-1, h, -1))
    assert torch.allclose(pe[half:], pe[half:, :, :1].expand(-1, -1, w))
    # sin/cos pairs lie on the unit circle
    assert torch.allclose(pe[0::2] ** 2 + pe[1::2] ** 2, torch.ones(half, h, w), atol=1e-6)
    # position (0, 0): sin = 0, cos = 1
    assert torch.allclose(pe[0::2, 0, 0], torch.zeros(half))
    assert torch.allclose(pe[1::2, 0, 0], torch.ones(half))
    # the lowest frequency is 1 rad per pixel: channel 0 at column x is sin(x)
    assert torch.allclose(pe[0, 0], torch.sin(torch.arange(w, dtype=torch.float32)), atol=1e-6)
    # every position has its own code
    codes = pe.reshape(dim, -1).T
    assert torch.cdist(codes, codes).add(torch.eye(h * w) * 10).min() > 1e-3
    with pytest.raises(ValueError, match="multiple of 4"):
        F.positional_encoding_2d(18, 2, 2)


def test_fibers_pair_each_vector_with_its_position():
    fmap = torch.arange(2 * 3 * 2 * 4, dtype=torch.float32).reshape(2, 3, 2, 4)
    pe = F.positional_encoding_2d(8, 2, 4)
    y, cond = F.fibers(fmap, pe)
    assert y.shape == (16, 3) and cond.shape == (16, 8)
    b, row, col = 1, 1, 2
    k = b * 8 + row * 4 + col
    assert torch.equal(y[k], fmap[b, :, row, col]) and torch.equal(cond[k], pe[:, row, col])


# ------------------------------------------------------------------------ the conditional flow

def _tiny_flow(channels=6, cond=4, blocks=3, seed=0):
    flow = F.build_conditional_flow(channels, blocks, cond_dim=cond, clamp=1.9, seed=seed).double()
    with torch.no_grad():  # move away from the identity-like initialisation
        for p in flow.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p))
    return flow


def test_conditional_flow_is_invertible_and_its_log_det_is_exact():
    torch.manual_seed(0)
    flow = _tiny_flow()
    x, c = torch.randn(5, 6, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    z, log_jac = flow(x, c=[c])
    x_back, log_jac_rev = flow(z, c=[c], rev=True)
    assert torch.allclose(x_back, x, atol=1e-10)
    assert torch.allclose(log_jac_rev, -log_jac, atol=1e-10)
    for i in range(5):
        jac = torch.autograd.functional.jacobian(lambda v: flow(v[None], c=[c[i:i + 1]])[0][0], x[i])
        # the rotations are stored in float32 (as FrEIA stores them), so |det| = 1 only to ~1e-7
        assert torch.slogdet(jac).logabsdet.item() == pytest.approx(log_jac[i].item(), abs=1e-6)


def test_condition_changes_the_transform():
    torch.manual_seed(1)
    flow = _tiny_flow()
    x = torch.randn(1, 6, dtype=torch.float64)
    z1, _ = flow(x, c=[torch.zeros(1, 4, dtype=torch.float64)])
    z2, _ = flow(x, c=[torch.ones(1, 4, dtype=torch.float64)])
    assert not torch.allclose(z1, z2)


def test_flow_building_is_seeded_and_leaves_global_state_alone():
    state = np.random.get_state()[1].copy()
    torch_state = torch.get_rng_state()
    a = F.build_conditional_flow(8, 2, cond_dim=4, seed=5)
    b = F.build_conditional_flow(8, 2, cond_dim=4, seed=5)
    c = F.build_conditional_flow(8, 2, cond_dim=4, seed=6)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.state_dict()["module_list.0.w_perm"], c.state_dict()["module_list.0.w_perm"])
    assert np.array_equal(np.random.get_state()[1], state) and torch.equal(torch.get_rng_state(), torch_state)


def test_random_rotation_is_a_rotation():
    q = F.random_rotation(16, np.random.RandomState(0))
    assert np.allclose(q @ q.T, np.eye(16), atol=1e-10) and np.linalg.det(q) == pytest.approx(1.0)
    assert np.array_equal(q, F.random_rotation(16, np.random.RandomState(0)))


def test_log_likelihood_and_loss_match_a_hand_computation():
    z = torch.tensor([[0.5, -1.0, 2.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    log_jac = torch.tensor([0.25, -0.5], dtype=torch.float64)
    log_p = F.log_likelihood(z, log_jac)
    hand = [3 * math.log(1 / math.sqrt(2 * math.pi)) - 0.5 * (0.25 + 1 + 4) + 0.25,
            3 * math.log(1 / math.sqrt(2 * math.pi)) - 0.5]
    assert log_p.tolist() == pytest.approx(hand, abs=1e-12)
    loss = F.nf_loss(log_p, 3).item()
    expected = np.mean([-math.log(1 / (1 + math.exp(-v / 3))) for v in hand])  # -log sigmoid(log p / C)
    assert loss == pytest.approx(expected, abs=1e-12)


def test_learning_rate_warms_up_then_follows_the_cosine():
    s = F.CNFSettings(lr=1e-3, meta_epochs=10, warm_epochs=2, lr_min_factor=1e-3,
                      schedule_meta_epochs=10)
    assert F.learning_rate(s, 0, 0.0) == pytest.approx(1e-4)
    warm_end = 1e-6 + (1e-3 - 1e-6) * (1 + math.cos(math.pi * 2 / 10)) / 2
    assert F.learning_rate(s, 1, 0.999) == pytest.approx(warm_end, rel=1e-2)
    assert F.learning_rate(s, 2, 0.0) == pytest.approx(warm_end)
    assert F.learning_rate(s, 9, 0.0) < F.learning_rate(s, 5, 0.0) < F.learning_rate(s, 2, 0.0)


def test_reduced_budget_scales_the_schedule():
    """The original's 2-of-25 warm-up, cosine over 25 meta-epochs: a 3-meta-epoch run warms up
    over 8 % of it (0.24 meta-epochs) and then decays to the end, instead of spending 2 of its
    3 meta-epochs in warm-up; at 25 meta-epochs it is the original schedule exactly."""
    lr, eta_min = 2e-4, 2e-7
    cosine = lambda e, total: eta_min + (lr - eta_min) * (1 + math.cos(math.pi * e / total)) / 2
    full = F.CNFSettings(meta_epochs=25)
    assert F.warmup_meta_epochs(full) == 2.0
    assert F.learning_rate(full, 0, 0.0) == pytest.approx(lr / 10)
    assert F.learning_rate(full, 1, 0.5) == pytest.approx(lr / 10 + 0.75 * (cosine(2, 25) - lr / 10))
    assert F.learning_rate(full, 2, 0.0) == pytest.approx(cosine(2, 25))
    assert F.learning_rate(full, 24, 0.9) == pytest.approx(cosine(24, 25))
    short = F.CNFSettings(meta_epochs=3)
    assert F.warmup_meta_epochs(short) == pytest.approx(0.24)
    assert F.learning_rate(short, 0, 0.0) == pytest.approx(lr / 10)
    assert F.learning_rate(short, 0, 0.12) == pytest.approx((lr / 10 + cosine(0.24, 3)) / 2)
    assert F.learning_rate(short, 0, 0.5) == pytest.approx(cosine(0.24, 3))  # warm-up over
    assert F.learning_rate(short, 1, 0.0) == pytest.approx(cosine(1, 3))
    assert F.learning_rate(short, 2, 0.5) == pytest.approx(cosine(2, 3))
    assert F.learning_rate(short, 2, 0.5) < lr / 3
    info = F.schedule_info(short)
    assert info["warmup_meta_epochs"] == pytest.approx(0.24) and info["meta_epochs"] == 3
    assert info["lr_schedule"] == "warmup+cosine" and info["permutation"] == "soft"
    assert info["fiber_batch"] == 256 and json.loads(json.dumps(info)) == info
    assert F.schedule_info(F.CNFSettings(warm_epochs=0))["lr_schedule"] == "cosine"


def test_training_lowers_the_loss_and_nan_features_raise():
    torch.manual_seed(0)
    settings = F.CNFSettings(n_blocks=2, condition_dim=4, meta_epochs=6, sub_epochs=2, warm_epochs=1,
                             lr=2e-3, batch_size=8, fiber_batch=64)
    features = [torch.randn(16, 6, 4, 4) * 0.5 + 2.0]
    flows = F.build_flows([6], settings, seed=0)
    history = F.train_flows(flows, features, settings, torch.Generator().manual_seed(0),
                            torch.device("cpu"), progress=False)
    assert history[-1] < history[0]
    bad = [features[0].clone()]
    bad[0][3, 2, 1, 1] = float("nan")
    with pytest.raises(TrainingDivergedError, match="meta-epoch 1"):
        F.train_flows(F.build_flows([6], settings, seed=0), bad, settings,
                      torch.Generator().manual_seed(0), torch.device("cpu"), progress=False)


def test_anomaly_map_formula():
    logs = [torch.tensor([[[0.0, -1.0], [-2.0, -3.0]]], dtype=torch.float64)]
    normal = F.normal_score_map(logs, [0.0], size=2)  # no resize: exp(l - u)
    assert torch.allclose(normal, torch.exp(logs[0]))
    assert torch.allclose(F.anomaly_from_normal(normal, 1.0), 1.0 - torch.exp(logs[0]))


# ------------------------------------------------------------------------ the detector

def test_cflow_fit_is_deterministic_and_nan_guarded(tiny_demo, monkeypatch):
    train, test = _sets(tiny_demo)
    train, test = train.subset(range(6)), test.subset(range(6))
    outs = []
    for _ in range(2):
        seed_everything(4)
        outs.append(create_method("cflow", **SMOKE).fit(train).score(test))
    np.testing.assert_array_equal(outs[0].pixel, outs[1].pixel)

    real = cflow_detector.frozen_features

    def poisoned(*args, **kwargs):
        features, source = real(*args, **kwargs)
        features = [f.clone() for f in features]
        features[0][0, 0] = float("nan")
        return features, source

    monkeypatch.setattr(cflow_detector, "frozen_features", poisoned)
    with pytest.raises(TrainingDivergedError):
        create_method("cflow", **SMOKE).fit(train)


def test_stage_reuse_gives_the_same_detector(tiny_demo):
    train, test = _sets(tiny_demo)
    train, test = train.subset(range(6)), test.subset(range(4))
    results = []
    for reuse in (False, True, True):  # retrain, train + store, load
        seed_everything(2)
        detector = create_method("cflow", **{**SMOKE, "reuse_stages": reuse}).fit(train)
        results.append(detector.score(test).image)
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[1], results[2])


def test_transductive_scores_depend_on_the_scored_set_inductive_do_not(tiny_demo):
    train, test = _sets(tiny_demo)
    train = train.subset(range(6))
    seed_everything(0)
    detector = create_method("cflow", **{**SMOKE, "normalization": "inductive"}).fit(train)
    part = test.subset(range(5))
    np.testing.assert_allclose(detector.score(part).pixel, detector.score(test).pixel[:5],
                               rtol=1e-5, atol=1e-5)  # float32 batch-size noise only
    transductive = create_method("cflow", **SMOKE)
    transductive.load_state_dict(detector.state_dict())
    whole, sub = transductive.score(test), transductive.score(part)
    assert not np.allclose(sub.pixel, whole.pixel[:5], atol=1e-4)
    # the maps are maxima-normalised over the scored set: some pixel reaches the maximum, 0
    assert whole.pixel.min() == pytest.approx(0.0, abs=1e-6)


def test_cflow_learns_the_demo_above_chance(tiny_demo):
    """Measured on the tiny demo (12 coin train images, 128 px, lite0), seeds 0/1/2: pixel
    AUROC 0.79/0.78/0.75, image AUROC 0.69/0.78/0.75 (chance: 0.5). Thresholds leave room for
    platform noise."""
    train, test = _sets(tiny_demo, "coin")
    seed_everything(0)
    detector = create_method("cflow", **{**SMOKE, "n_blocks": 4, "meta_epochs": 6, "sub_epochs": 2,
                                         "lr": 1e-3, "fiber_fraction": 1.0,
                                         "normalization": "inductive"}).fit(train)
    scores = detector.score(test)
    assert pixel_auroc(test.load_masks(), scores.pixel) > 0.65
    assert image_auroc(np.asarray(test.labels), scores.image) > 0.6


def test_cflow_config_errors():
    with pytest.raises(UserError, match="normalization"):
        create_method("cflow", normalization="sometimes")
    with pytest.raises(UserError, match="padding"):
        create_method("cflow", padding="circular")
    with pytest.raises(UserError, match="multiple of 4"):
        create_method("cflow", condition_dim=30)


def test_category_settings_override_per_category(tiny_demo):
    train, _ = _sets(tiny_demo, "brick")
    seed_everything(0)
    detector = create_method("cflow", **{**SMOKE, "category_settings": {"brick": {"lr": 5e-5},
                                                                         "coin": {"lr": 1.0}}})
    config = detector.config
    detector.fit(train.subset(range(4)))
    assert detector.settings_.lr == 5e-5
    assert detector.config is config and detector.config.lr == 2e-4  # fit leaves the config
    with pytest.raises(UserError, match="invalid key"):
        bad = {**SMOKE, "category_settings": {"brick": {"nope": 1}}}
        create_method("cflow", **bad).fit(train.subset(range(2)))


def test_inference_module_is_the_inductive_score_forward(tiny_demo):
    from nfbench.methods.base import ProfilingNotSupported
    from nfbench.methods.cflow import CFlowModel
    from nfbench.profiling import parameter_stats

    train, test = _sets(tiny_demo)
    seed_everything(0)
    detector = create_method("cflow", **{**SMOKE, "normalization": "inductive"}).fit(train.subset(range(4)))
    part = test.subset(range(3))
    module = detector.inference_module()
    assert isinstance(module, CFlowModel) and module.nf is detector.nf_
    with torch.no_grad():
        image, pixel = module(part.load_images())
    scores = detector.score(part)
    assert image.shape == (3,) and pixel.shape == (3, 128, 128)
    np.testing.assert_allclose(image.numpy(), scores.image, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(pixel.float().numpy(), scores.pixel, rtol=1e-4, atol=1e-5)
    assert detector.profiling_components == ()
    with pytest.raises(ProfilingNotSupported, match="no profiling components"):
        detector.inference_module("CNFs")
    assert parameter_stats(module.nf)["size_mb"] > 0
    # before fit: the same network, untrained
    untrained = create_method("cflow", **SMOKE).inference_module(pretrained=False)
    assert parameter_stats(untrained)["parameters"] == parameter_stats(module)["parameters"]


def test_record_carries_the_effective_schedule(tiny_demo):
    from nfbench.pipeline.experiment import run_experiment

    record = run_experiment("cflow", "demo", "brick", root=tiny_demo, profile="demo",
                            overrides={**{k: v for k, v in SMOKE.items() if k != "warm_epochs"},
                                       "meta_epochs": 3, "sub_epochs": 1})
    schedule = record["fit_info"]["schedule"]
    assert schedule["meta_epochs"] == 3 and schedule["sub_epochs"] == 1
    assert schedule["warmup_meta_epochs"] == pytest.approx(2 * 3 / 25)
    assert schedule["lr_schedule"] == "warmup+cosine" and schedule["fiber_batch"] == 256
    json.dumps(record["fit_info"])
