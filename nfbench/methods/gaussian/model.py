"""PaDiM-style Gaussian baseline behind the Detector protocol.

At every feature-map position the normal features are modelled by a Gaussian N(mu, Sigma)
(PaDiM Eq. 1, Sigma regularised by eps*I); a test position's score is its Mahalanobis distance
(PaDiM Eq. 2). It is not one of the three papers: it is the honest, training-free reference
that every flow should beat, and the method the conformance suite and CLI run first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from nfbench.datasets.base import ImageSet
from nfbench.feature_cache import cached_features
from nfbench.methods import register_method
from nfbench.methods.base import Scores, resolve_device


@dataclass(frozen=True)
class GaussianConfig:
    """Defaults follow PaDiM where it applies (d = 100 random channels, eps = 0.01, Gaussian
    smoothing sigma = 4 of the upsampled map); the backbone is the offline Lite0."""

    backbone: str = "efficientnet_lite0"
    layers: tuple[str, ...] = ("stride8", "stride16")  # PaDiM: the first three ResNet stages
    input_size: int = 256  # PaDiM: 256 resize, 224 crop; no crop here
    n_features: int = 100  # PaDiM: random subset of d = 100 channels
    covariance_eps: float = 0.01  # PaDiM: Sigma + 0.01 I
    blur_sigma: float = 4.0  # PaDiM: Gaussian filter sigma = 4 on the score map
    batch_size: int = 16
    device: str = "auto"


@register_method("gaussian")
class GaussianDetector:
    """Per-position Gaussian on concatenated multi-layer features."""

    Config = GaussianConfig
    #: settings for a seconds-long run (conformance tests, CI smoke)
    smoke_settings = {"input_size": 96, "n_features": 50}

    def __init__(self, config: GaussianConfig = GaussianConfig()):
        self.config = config
        self.mean: torch.Tensor | None = None  # [P, d]
        self.precision: torch.Tensor | None = None  # [P, d, d]
        self.channels: torch.Tensor | None = None  # [d] selected channel indices

    def _embed(self, images: ImageSet) -> torch.Tensor:
        """Features of all layers upsampled to the first layer's size: ``[N, C, h, w]``."""
        cfg = self.config
        maps = cached_features(cfg.backbone, cfg.layers, images, n_scales=1,
                               batch_size=cfg.batch_size, device=resolve_device(cfg.device))[0]
        size = maps[0].shape[-2:]
        return torch.cat([maps[0]] + [F.interpolate(m, size=size, mode="nearest")
                                      for m in maps[1:]], dim=1)

    def fit(self, train: ImageSet) -> "GaussianDetector":
        embedding = self._embed(train)
        n, c, h, w = embedding.shape
        d = min(self.config.n_features, c)
        self.channels = torch.randperm(c)[:d].sort().values
        x = embedding[:, self.channels].permute(2, 3, 0, 1).reshape(h * w, n, d).double()
        self.mean = x.mean(dim=1)
        centred = x - self.mean[:, None]
        covariance = centred.transpose(1, 2) @ centred / max(n - 1, 1)
        covariance += self.config.covariance_eps * torch.eye(d, dtype=torch.float64)
        self.precision = torch.linalg.inv(covariance)
        self._map_size = (h, w)
        return self

    def score(self, images: ImageSet) -> Scores:
        if self.mean is None:
            raise RuntimeError("GaussianDetector.score called before fit")
        embedding = self._embed(images)
        n, _, h, w = embedding.shape
        x = embedding[:, self.channels].permute(2, 3, 0, 1).reshape(h * w, n, -1).double()
        delta = x - self.mean[:, None]
        distance = torch.einsum("pnd,pde,pne->np", delta, self.precision, delta).clamp_min(0).sqrt()
        maps = F.interpolate(distance.reshape(n, 1, h, w).float(), size=(images.size,) * 2,
                             mode="bilinear", align_corners=False)[:, 0].numpy()
        if self.config.blur_sigma > 0:
            maps = np.stack([gaussian_filter(m, sigma=self.config.blur_sigma) for m in maps])
        return Scores(image=maps.reshape(n, -1).max(axis=1), pixel=maps)

    def state_dict(self) -> dict:
        return {"mean": self.mean, "precision": self.precision, "channels": self.channels}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.precision, self.channels = state["mean"], state["precision"], state["channels"]
