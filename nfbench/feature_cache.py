"""On-disk cache of frozen-backbone features, shared by every run, table and ablation.

An entry is keyed by everything that determines the features: backbone, weight tag, resolved
layers, input scales and their interpolation, and the image set's content fingerprint (which
includes the input size). A changed image, size, layer or weight file gives a new key, so a
stale entry is never read. Entries are plain tensors saved with ``torch.save`` and read back
with ``weights_only=True``; they are written to a temporary file and renamed, so an
interrupted run never leaves a truncated entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from nfbench.backbones import FeatureExtractor, get_backbone_spec, resolve_layers
from nfbench.datasets.base import ImageSet
from nfbench.paths import cache_root

CACHE_FORMAT = 1

_EXTRACTORS: dict[tuple, FeatureExtractor] = {}


def scaled_inputs(images: torch.Tensor, n_scales: int) -> list[torch.Tensor]:
    """The input at ``n_scales`` resolutions (1, 1/2, 1/4, ...), smaller ones made with
    nearest-neighbour interpolation as in CS-Flow's and PatchFlow's original code."""
    size = images.shape[-1]
    return [images if s == 0 else F.interpolate(images, size=(size // 2**s, size // 2**s),
                                                mode="nearest")
            for s in range(n_scales)]


def get_extractor(backbone: str, layers: Sequence[str], device: torch.device | str,
                  pretrained: bool = True) -> FeatureExtractor:
    """A frozen extractor, built once per process and reused (weights load only once)."""
    key = (backbone, tuple(layers), str(device), pretrained)
    if key not in _EXTRACTORS:
        _EXTRACTORS[key] = FeatureExtractor(backbone, layers, pretrained=pretrained).to(device)
    return _EXTRACTORS[key]


def cache_key(backbone: str, layers: Sequence[str], n_scales: int, images: ImageSet) -> str:
    """The hash that names a cache entry."""
    spec = get_backbone_spec(backbone)
    description = {
        "format": CACHE_FORMAT, "backbone": backbone, "weights": spec.weights_tag,
        "layers": resolve_layers(spec, layers), "n_scales": n_scales,
        "scale_interpolation": "nearest", "images": images.fingerprint,
    }
    return hashlib.sha1(json.dumps(description, sort_keys=True).encode()).hexdigest()[:20]


@torch.no_grad()
def compute_features(backbone: str, layers: Sequence[str], images: ImageSet, n_scales: int = 1,
                     batch_size: int = 16, device: torch.device | str = "cpu",
                     progress: bool = True) -> list[list[torch.Tensor]]:
    """Features without the cache: ``result[scale][layer]`` is ``float [N, C, h, w]`` (CPU)."""
    device = torch.device(device)
    extractor = get_extractor(backbone, layers, device)
    collected: list[list[list[torch.Tensor]]] = [[[] for _ in layers] for _ in range(n_scales)]
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc=f"features {backbone} {images.name}".strip(),
                      disable=not progress, leave=False):
        batch = images.load_images(range(start, min(start + batch_size, len(images))))
        for s, scaled in enumerate(scaled_inputs(batch.to(device), n_scales)):
            for l, fmap in enumerate(extractor(scaled)):
                collected[s][l].append(fmap.float().cpu().contiguous())
    return [[torch.cat(chunks) for chunks in per_layer] for per_layer in collected]


def cached_features(backbone: str, layers: Sequence[str], images: ImageSet, n_scales: int = 1,
                    batch_size: int = 16, device: torch.device | str = "cpu",
                    progress: bool = True, root: Path | None = None) -> list[list[torch.Tensor]]:
    """Like :func:`compute_features`, read from / written to the on-disk cache."""
    root = Path(root) if root is not None else cache_root() / "features"
    path = root / backbone.replace("/", "_") / f"{cache_key(backbone, layers, n_scales, images)}.pt"
    if path.exists():
        stored = torch.load(path, map_location="cpu", weights_only=True)
        return stored["features"]
    features = compute_features(backbone, layers, images, n_scales, batch_size, device, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(handle)
    try:
        torch.save({"features": features, "paths": list(images.paths), "size": images.size},
                   tmp_name)
        os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)
    return features
