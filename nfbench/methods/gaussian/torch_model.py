"""The Gaussian baseline as ``nn.Module``\\ s: PaDiM's per-position Mahalanobis distance.

:class:`GaussianModel` maps the backbone's maps of ``layers`` (as the feature cache stores
them) to ``(image scores [B], anomaly map [B, S, S])``: the layers upsampled (nearest) to the
first one's size and concatenated, the fitted channel subset, the Mahalanobis distance to the
position's Gaussian (PaDiM Eq. 2, in float64), bilinear upsampling to the input size, a
Gaussian blur (:func:`gaussian_blur`, scipy's ``gaussian_filter`` to the bit) and the map's
maximum. ``GaussianDetector.score`` runs it on cached features; :class:`GaussianImageModel`
composes it with the backbone extractor (images ``[B, 3, S, S]`` in [0, 1]) for profiling.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _reflect_index(n: int, radius: int) -> torch.Tensor:
    """Indices of a line of ``n`` extended by ``radius`` on both sides, scipy's ``reflect``
    mode (``d c b a | a b c d | d c b a``)."""
    i = torch.arange(-radius, n + radius) % (2 * n)
    return torch.where(i >= n, 2 * n - 1 - i, i)


def gaussian_blur(maps: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """``scipy.ndimage.gaussian_filter(m, sigma)`` of every float32 map ``m`` of ``[B, H, W]``,
    bit for bit: one 1-D pass per axis (rows first) accumulated in float64 in scipy's order
    for symmetric kernels (centre, then the pairs from the outermost in), stored as float32
    between passes, borders reflected."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (sigma * sigma) * x ** 2)
    weights = (phi / phi.sum())[::-1].tolist()  # scipy correlates with the reversed kernel
    out = maps
    for axis in (1, 2):
        n = out.shape[axis]
        line = out.double().index_select(axis, _reflect_index(n, radius).to(out.device))
        part = lambda offset: line.narrow(axis, radius + offset, n)
        acc = part(0) * weights[radius]
        for j in range(radius, 0, -1):
            acc = acc + (part(-j) + part(j)) * weights[radius - j]
        out = acc.to(maps.dtype)
    return out


class GaussianModel(nn.Module):
    """Layer maps → ``(image scores [B], anomaly map [B, S, S])``; buffers ``mean [P, d]``,
    ``precision [P, d, d]`` (float64) and ``channels [d]`` (the selected channel indices)."""

    def __init__(self, mean: torch.Tensor, precision: torch.Tensor, channels: torch.Tensor,
                 image_size: int, blur_sigma: float):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("precision", precision)
        self.register_buffer("channels", channels)
        self.image_size, self.blur_sigma = int(image_size), float(blur_sigma)

    @staticmethod
    def embed(maps: list[torch.Tensor]) -> torch.Tensor:
        """Features of all layers upsampled to the first layer's size: ``[N, C, h, w]``."""
        size = maps[0].shape[-2:]
        return torch.cat([maps[0]] + [F.interpolate(m, size=size, mode="nearest")
                                      for m in maps[1:]], dim=1)

    def forward(self, maps: list[torch.Tensor]):
        embedding = self.embed(maps)
        n, _, h, w = embedding.shape
        x = embedding[:, self.channels].permute(2, 3, 0, 1).reshape(h * w, n, -1).double()
        delta = x - self.mean[:, None]
        distance = torch.einsum("pnd,pde,pne->np", delta, self.precision, delta).clamp_min(0).sqrt()
        pixel = F.interpolate(distance.reshape(n, 1, h, w).float(), size=(self.image_size,) * 2,
                              mode="bilinear", align_corners=False)[:, 0]
        if self.blur_sigma > 0:
            pixel = gaussian_blur(pixel, self.blur_sigma)
        return pixel.reshape(n, -1).amax(dim=1), pixel


class GaussianImageModel(nn.Module):
    """Images ``[B, 3, S, S]`` in [0, 1] → backbone maps of the layers → :class:`GaussianModel`."""

    def __init__(self, extractor: nn.Module, model: GaussianModel):
        super().__init__()
        self.extractor, self.model = extractor, model

    def forward(self, images: torch.Tensor):
        return self.model(list(self.extractor(images)))
