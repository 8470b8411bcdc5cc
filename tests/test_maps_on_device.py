"""Every method makes its full-resolution anomaly maps on the run's device: only the finished
maps (and 1-D image scores) are copied to the CPU, never low-resolution maps or latents that
the CPU would then upsample (issue 19 §2). No GPU here: a spy on ``Tensor.cpu`` / ``Tensor.to``
shows where the copies happen; on the CPU the values are the same operations as before."""

from __future__ import annotations

import pytest
import torch

from nfbench.datasets import image_sets, load_table
from nfbench.methods import create_method
from nfbench.methods.base import seed_everything


@pytest.fixture
def copied(monkeypatch):
    """Shapes of the tensors passed through ``Tensor.cpu`` / ``Tensor.to`` (by method name)."""
    seen = {"cpu": [], "to": []}
    for name in seen:
        real = getattr(torch.Tensor, name)

        def spy(self, *args, _real=real, _name=name, **kwargs):
            seen[_name].append(tuple(self.shape))
            return _real(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, spy)
    return seen


def _only_full_maps_copied(shapes, size, images=None):
    """Every copy is a full-resolution map, or (``images`` given) one score per image."""
    return all(s[-2:] == (size, size) if len(s) >= 2 else images is None or s[0] <= images
               for s in shapes)


def test_cnf_maps_are_upsampled_before_they_leave_the_device(copied):
    from nfbench.methods.cnf.config import CNFSettings
    from nfbench.methods.cnf.flows import build_flows
    from nfbench.methods.cnf.scoring import NFMap

    settings = CNFSettings(n_blocks=1, condition_dim=4)
    nf = NFMap(build_flows([6, 6], settings, seed=0), settings.condition_dim)
    features = [torch.randn(3, 6, 4, 4, generator=torch.Generator().manual_seed(0)),
                torch.randn(3, 6, 2, 2, generator=torch.Generator().manual_seed(1))]
    nf.calibrate(features, 16)
    copied["cpu"].clear()
    out = nf(features, 16)
    assert out.shape == (3, 16, 16) and out.dtype == torch.float64 and out.device.type == "cpu"
    assert copied["cpu"] and _only_full_maps_copied(copied["cpu"], 16, 3), copied["cpu"]


def test_patchflow_scores_its_latents_on_the_device(tiny_demo, copied):
    from nfbench.methods.patchflow import PatchFlowDetector

    seed_everything(0)
    detector = create_method("patchflow", **{**PatchFlowDetector.smoke_settings, "epochs": 1})
    train, test = image_sets(load_table("demo", tiny_demo), "brick", detector.config.input_size)
    detector.fit(train.subset(range(4)))
    maps = detector._maps(test.subset(range(2)))
    copied["cpu"].clear()
    image, pixel = detector._pixel_maps(maps)
    size = detector.config.input_size
    assert pixel.shape == (2, size, size)
    assert _only_full_maps_copied(copied["cpu"], size), copied["cpu"]


class _Stop(Exception):
    pass


def test_gaussian_builds_its_maps_on_the_device(tiny_demo, monkeypatch):
    """With the run's device faked as ``meta``, the model and the feature maps reach the
    forward (distances, upsampling, blur) on that device."""
    import nfbench.methods.gaussian.detector as gd
    from nfbench.methods.gaussian import GaussianDetector, GaussianModel

    seed_everything(0)
    detector = create_method("gaussian", **GaussianDetector.smoke_settings, device="cpu")
    train, test = image_sets(load_table("demo", tiny_demo), "brick", detector.config.input_size)
    detector.fit(train.subset(range(4)))
    test = test.subset(range(2))
    maps = detector._maps(test)
    monkeypatch.setattr(detector, "_maps", lambda images: maps)
    monkeypatch.setattr(gd, "resolve_device", lambda requested="auto": torch.device("meta"))
    seen = []

    def forward(self, maps):
        seen.append({self.mean.device.type, self.precision.device.type}
                    | {m.device.type for m in maps})
        raise _Stop
    monkeypatch.setattr(GaussianModel, "forward", forward)
    with pytest.raises(_Stop):
        detector.score(test)
    assert seen == [{"meta"}]
    assert detector.model_.mean.device.type == "cpu"  # the fitted model itself stays put
