"""Every registered method follows the Detector protocol (DESIGN.md)."""

from __future__ import annotations

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
