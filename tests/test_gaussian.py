"""The Gaussian baseline's torch model: scipy's blur to the bit, the profiling hook before and
after fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nfbench.datasets import image_sets, load_table
from nfbench.methods import create_method
from nfbench.methods.base import ProfilingNotSupported, seed_everything
from nfbench.methods.gaussian import GaussianDetector, gaussian_blur


@pytest.mark.parametrize("shape,sigma", [((3, 96, 96), 4.0), ((2, 20, 30), 4.0),
                                         ((1, 64, 64), 0.7)])
def test_gaussian_blur_is_scipys(shape, sigma):
    from scipy.ndimage import gaussian_filter

    maps = np.random.default_rng(0).random(shape).astype(np.float32) * 5
    expected = np.stack([gaussian_filter(m, sigma=sigma) for m in maps])
    np.testing.assert_array_equal(gaussian_blur(torch.from_numpy(maps), sigma).numpy(), expected)


def test_hook_before_and_after_fit_and_no_components(tiny_demo):
    """(inference_module equals score() for every method: tests/test_conformance.py.)"""
    settings = GaussianDetector.smoke_settings
    seed_everything(0)
    detector = create_method("gaussian", **settings)
    train, _ = image_sets(load_table("demo", tiny_demo), "coin", settings["input_size"])
    detector.fit(train.subset(range(8)))
    assert detector.map_size_ == (12, 12)
    untrained = create_method("gaussian", **settings).inference_module(pretrained=False)
    image, pixel = untrained(torch.rand(2, 3, 96, 96))
    assert image.shape == (2,) and pixel.shape == (2, 96, 96)
    with pytest.raises(ProfilingNotSupported):
        detector.inference_module("backbone")
