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


def scaled_inputs(images: torch.Tensor, n_scales: int, base_size: int | None = None
                  ) -> list[torch.Tensor]:
    """The input at ``n_scales`` resolutions (1, 1/2, 1/4, ...), smaller ones made with
    nearest-neighbour interpolation of the whole input as in CS-Flow's and PatchFlow's
    original code. Scale 0 is always the input itself; scale s > 0 has side
    ``base_size // 2**s`` (default: the input's side). PatchFlow's original centre crop uses
    ``base_size = crop``: the whole 768 px image resized to 672 // 2**s."""
    size = images.shape[-1] if base_size is None else int(base_size)
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


SHARED_ROLES = ("stride8", "stride16", "stride32")
"""Layers computed together whenever one of them is missing: the three papers tap these
roles, and the deepest one costs the whole forward pass anyway, so CS-Flow, PatchFlow and
CFlow share one extraction per image set."""


def cache_key(backbone: str, layer: str, scale: int, images: ImageSet,
              base_size: int | None = None) -> str:
    """The hash that names the cache entry of one (layer, scale) of an image set. A scale
    input whose side differs from the default ``images.size // 2**scale`` (``base_size``, see
    :func:`scaled_inputs`) adds that side to the key; every other key is unchanged."""
    spec = get_backbone_spec(backbone)
    description = {
        "format": CACHE_FORMAT, "backbone": backbone, "weights": spec.weights_tag,
        "layer": resolve_layers(spec, [layer])[0], "scale": scale,
        "scale_interpolation": "nearest", "images": images.fingerprint,
    }
    if scale > 0 and base_size is not None and (
            int(base_size) // 2**scale != int(images.size) // 2**scale):
        description["scale_side"] = int(base_size) // 2**scale
    return hashlib.sha1(json.dumps(description, sort_keys=True).encode()).hexdigest()[:20]


@torch.no_grad()
def compute_features(backbone: str, layers: Sequence[str], images: ImageSet,
                     scales: Sequence[int] = (0,), batch_size: int = 16,
                     device: torch.device | str = "cpu", progress: bool = True,
                     base_size: int | None = None) -> dict[tuple[int, str], torch.Tensor]:
    """Features without the cache: ``{(scale, layer): float [N, C, h, w]}`` on the CPU, where
    scale s is the input downsampled to ``base_size // 2**s`` (default base: the input size;
    nearest, as in the original codes)."""
    device = torch.device(device)
    extractor = get_extractor(backbone, layers, device)
    n_scales = max(scales) + 1
    collected: dict[tuple[int, str], list[torch.Tensor]] = {
        (s, layer): [] for s in scales for layer in layers}
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc=f"features {backbone} {images.name}".strip(),
                      disable=not progress, leave=False):
        batch = images.load_images(range(start, min(start + batch_size, len(images))))
        for s, scaled in enumerate(scaled_inputs(batch.to(device), n_scales, base_size)):
            if s not in scales:
                continue
            for layer, fmap in zip(layers, extractor(scaled)):
                collected[(s, layer)].append(fmap.float().cpu().contiguous())
    return {key: torch.cat(chunks) for key, chunks in collected.items()}


def save_atomic(obj, path: Path) -> None:
    """``torch.save`` to a temporary file renamed into ``path``: never a truncated file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(handle)
    try:
        torch.save(obj, tmp_name)
        os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)


def cached_features(backbone: str, layers: Sequence[str], images: ImageSet, n_scales: int = 1,
                    batch_size: int = 16, device: torch.device | str = "cpu",
                    progress: bool = True, root: Path | None = None,
                    base_size: int | None = None) -> list[list[torch.Tensor]]:
    """Features of ``layers`` at ``n_scales`` input scales, ``result[scale][layer]``, read from
    (or computed once into) the on-disk cache, one entry per (layer, scale). ``base_size``
    sets the side of the scale-s inputs to ``base_size // 2**s`` (see :func:`scaled_inputs`);
    scale 0 is always the whole image, so it shares its entry with every other method.

    On a miss, every shared role layer (:data:`SHARED_ROLES`) is computed in the same pass
    and stored, so a later request by another method for another role hits the cache.
    """
    spec = get_backbone_spec(backbone)
    resolved = resolve_layers(spec, layers)
    root = Path(root) if root is not None else cache_root() / "features"
    folder = root / backbone.replace("/", "_")
    path = lambda s, layer: folder / f"{cache_key(backbone, layer, s, images, base_size)}.pt"
    wanted = [(s, layer) for s in range(n_scales) for layer in resolved]
    missing_scales = sorted({s for s, layer in wanted if not path(s, layer).exists()})
    if missing_scales:
        shared = resolve_layers(spec, [r for r in SHARED_ROLES if r in spec.roles])
        to_compute = list(dict.fromkeys(resolved + (shared if set(resolved) <= set(shared) else [])))
        computed = compute_features(backbone, to_compute, images, missing_scales, batch_size,
                                    device, progress, base_size)
        for (s, layer), tensor in computed.items():
            if not path(s, layer).exists():
                save_atomic(tensor, path(s, layer))
    return [[torch.load(path(s, layer), map_location="cpu", weights_only=True)
             for layer in resolved] for s in range(n_scales)]
