"""Synthetic images as an image source for the feature cache: duck-typed like
:class:`~nfbench.datasets.base.ImageSet` (``name``, ``paths``, ``size``, ``fingerprint``,
``__len__``, ``load_images``), with a fingerprint that names the derivation so that the cache
keys them correctly (PatchFlow's validation set, :mod:`.validation`)."""

from __future__ import annotations

import hashlib
from typing import Callable, Sequence

import torch


class DerivedImages:
    """Images computed from another source (synthetic anomalies), with a fingerprint that names the derivation so the feature cache keys them correctly."""

    def __init__(self, name: str, paths: Sequence[str], size: int, fingerprint: str,
                 load: Callable[[Sequence[int]], torch.Tensor]):
        self.name = name
        self.paths = tuple(paths)
        self.size = int(size)
        self.fingerprint = fingerprint
        self._load = load

    def __len__(self) -> int:
        return len(self.paths)

    def load_images(self, indices: Sequence[int] | None = None) -> torch.Tensor:
        return self._load(range(len(self)) if indices is None else indices)


def tensor_images(name: str, paths: Sequence[str], images: torch.Tensor) -> DerivedImages:
    """``images [N, 3, S, S]`` in memory as an image source; the fingerprint hashes their
    bytes."""
    array = images.detach().cpu().float().contiguous().numpy()
    digest = hashlib.sha1(f"tensor;{array.shape}".encode() + array.tobytes()).hexdigest()
    return DerivedImages(name, paths, images.shape[-1], digest,
                         lambda idx: images[list(idx)].clone())
