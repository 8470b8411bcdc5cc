"""Every registered method follows the Detector protocol (DESIGN.md)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from nfbench.datasets import image_sets, load_table
from nfbench.methods import create_method, list_methods, method_class
from nfbench.methods.base import Scores, seed_everything

METHODS = list_methods()


def _sets(root, size):
    table = load_table("demo", root)
    train, test = image_sets(table, sorted(table["category"].unique())[0], size)
    return train.subset(range(8)), test


def _fit_score(name, root, seed):
    cls = method_class(name)
    seed_everything(seed)
    detector = create_method(name, **getattr(cls, "smoke_settings", {}))
    train, test = _sets(root, detector.config.input_size)
    seed_everything(seed)
    return detector, detector.fit(train), detector.score(test), test


def test_registry_lists_the_baseline():
    assert "gaussian" in METHODS


@pytest.mark.parametrize("name", METHODS)
def test_fit_score_shapes_finite_and_deterministic(name, tiny_demo):
    detector, fitted, scores, test = _fit_score(name, tiny_demo, seed=3)
    assert fitted is detector, "fit must return self"
    assert isinstance(scores, Scores)
    assert scores.image.shape == (len(test),)
    assert scores.pixel.shape == (len(test), test.size, test.size)
    assert np.isfinite(scores.image).all() and np.isfinite(scores.pixel).all()
    _, _, again, _ = _fit_score(name, tiny_demo, seed=3)
    np.testing.assert_allclose(again.image, scores.image, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", METHODS)
def test_state_dict_round_trip(name, tiny_demo, tmp_path):
    detector, _, scores, test = _fit_score(name, tiny_demo, seed=1)
    torch.save(detector.state_dict(), tmp_path / "state.pt")
    fresh = create_method(name, **getattr(method_class(name), "smoke_settings", {}))
    fresh.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    np.testing.assert_allclose(fresh.score(test).image, scores.image, rtol=1e-5, atol=1e-6)


def test_unknown_setting_is_rejected():
    from nfbench.errors import UserError

    with pytest.raises(UserError, match="unknown setting"):
        create_method("gaussian", not_a_field=1)
    with pytest.raises(UserError, match="expects a number"):
        create_method("gaussian", n_features="many")


def test_set_values_are_read_as_a_user_means_them():
    detector = create_method("csflow", lr="1e-3", epochs="12", kernel_sizes="[3, 3, 3, 5]")
    assert detector.config.lr == 1e-3 and isinstance(detector.config.lr, float)
    assert detector.config.epochs == 12 and detector.config.kernel_sizes == (3, 3, 3, 5)


def _smoke(name):
    return dict(getattr(method_class(name), "smoke_settings", {}))


@pytest.mark.parametrize("name", METHODS)
def test_protocol_declares_what_the_suite_uses(name):
    """Config, smoke_settings, profiling_components and the one profiling hook (base.py)."""
    from nfbench.methods.base import Detector

    import inspect

    from nfbench.methods.protocol import OriginalProtocol

    cls = method_class(name)
    assert isinstance(cls.smoke_settings, dict)
    assert isinstance(cls.profiling_components, tuple)
    assert dataclasses.is_dataclass(cls.Config) and cls.Config.__dataclass_params__.frozen
    detector = create_method(name, **_smoke(name))
    assert isinstance(detector, Detector)
    # the base config every pipeline stage reads before fit
    config = detector.config
    assert isinstance(config.input_size, int) and isinstance(config.device, str)
    assert isinstance(config.backbone, str)
    # the original protocol: declared data, and the fit hook where it evaluates during fit
    protocol = cls.original_protocol
    if protocol is not None:
        assert issubclass(protocol, OriginalProtocol)
        assert protocol.name and protocol.description and protocol.reported_as
        if protocol.evaluates_during_fit:
            assert "evaluate" in inspect.signature(cls.fit).parameters
    # the optional members, where declared, are what base.py says
    for hook in ("category_config", "needed_datasets"):
        assert not hasattr(cls, hook) or callable(getattr(cls, hook))
    assert isinstance(getattr(cls, "shares_stages", False), bool)


@pytest.mark.parametrize("name", METHODS)
def test_profiling_rows_must_be_declared_components(name):
    """A complexity table's rows are the method's declared ``profiling_components``."""
    from nfbench.errors import UserError
    from nfbench.profiling import profile_components

    with pytest.raises(UserError, match="declares no profiling component nope"):
        profile_components(name, _smoke(name), ["nope"], 1, time_it=False)


@pytest.mark.parametrize("name", METHODS)
def test_profiling_hook_runs_untrained_and_is_counted(name, one_thread):
    """Every method (the Gaussian baseline included) gives an images -> (scores, map) module
    before fit, and the profiling stage counts it; each named component either profiles the
    same way or declares why not."""
    from nfbench.methods.base import ProfilingNotSupported
    from nfbench.profiling import profile_method

    detector = create_method(name, **_smoke(name))
    size = detector.config.input_size
    module = detector.inference_module(pretrained=False).eval()
    with torch.no_grad():
        scores, maps = module(torch.rand(2, 3, size, size))
    assert scores.shape == (2,) and maps.ndim == 3 and maps.shape[0] == 2
    assert torch.isfinite(scores).all() and torch.isfinite(maps).all()
    result = profile_method(name, _smoke(name), time_it=False)
    assert result["gflops_torch"] > 0 and result["parameters"] >= 0
    assert result["gmacs_fvcore"] is None  # count-only: fvcore's JIT trace runs the network
    for component in detector.profiling_components:
        try:
            part = detector.inference_module(component, pretrained=False).eval()
        except ProfilingNotSupported as skip:
            assert str(skip), f"{name}/{component}: a skip must say why"
            continue
        with torch.no_grad():
            scores, maps = part(torch.rand(1, 3, size, size))
        assert scores.shape == (1,) and maps.shape[0] == 1


@pytest.mark.parametrize("name", METHODS)
def test_fit_leaves_the_config_and_a_refit_inherits_nothing(name, tiny_demo):
    """scikit-learn's rule: fit does not rewrite hyperparameters. A detector fitted on one
    category (with a per-category override where the method has them) and then on a second
    scores the second exactly like a fresh detector fitted on the second only."""
    table = load_table("demo", tiny_demo)
    first, second = sorted(table["category"].unique())[:2]
    settings = _smoke(name)
    fields = {f.name for f in dataclasses.fields(method_class(name).Config)}
    if {"category_settings", "lr"} <= fields:
        base_lr = create_method(name, **settings).config.lr
        settings["category_settings"] = {first: {"lr": base_lr * 3}}
    detector = create_method(name, **settings)
    before = detector.config
    train, _ = image_sets(table, first, before.input_size)
    seed_everything(0)
    detector.fit(train.subset(range(8)))
    assert detector.config == before, "fit must leave config as the user set it"
    train, test = image_sets(table, second, before.input_size)
    seed_everything(0)
    refitted = detector.fit(train.subset(range(8))).score(test)
    fresh = create_method(name, **settings)
    seed_everything(0)
    expected = fresh.fit(train.subset(range(8))).score(test)
    np.testing.assert_allclose(refitted.image, expected.image, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", METHODS)
def test_the_profiling_module_is_the_score_forward(name, tiny_demo):
    """After fit, ``inference_module()`` maps the test images to the scores and maps that
    ``score()`` gives (with training-set normalisation where a method offers a choice: a
    module sees one batch, not the whole scored set)."""
    settings = _smoke(name)
    if "normalization" in {f.name for f in dataclasses.fields(method_class(name).Config)}:
        settings["normalization"] = "inductive"
    seed_everything(0)
    detector = create_method(name, **settings)
    train, test = _sets(tiny_demo, detector.config.input_size)
    detector.fit(train)
    test = test.subset(range(3))
    with torch.no_grad():
        image, pixel = detector.inference_module().eval()(test.load_images())
    scores = detector.score(test)
    np.testing.assert_allclose(image.double().numpy(), scores.image, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(pixel.float().numpy(), scores.pixel, rtol=1e-4, atol=1e-5)
