"""On-disk cache of frozen-backbone features, shared by every run, table and ablation.

An entry is keyed by everything that determines the features: backbone, weight tag, resolved
layers, input scales and their interpolation, and the image set's content fingerprint (which
includes the input size). A changed image, size, layer or weight file gives a new key, so a
stale entry is never read. Entries are saved with ``torch.save`` and read back with
``weights_only=True``; they are written to a temporary file (mode per the user's umask) and
renamed, so an interrupted run never leaves a truncated entry.

Entries are self-checking: each stores its key, the tensor's shape and a sha256 digest of the
tensor bytes (:func:`save_entry`), and every load verifies them (:func:`load_entry`). A damaged
entry (flipped bytes, an entry copied over another, truncated, empty, NaN, wrong shape, an
older format) is recomputed with one warning line instead of being used or crashing.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from nfbench.atomic import atomic_path
from nfbench.backbones import FeatureExtractor, get_backbone_spec, resolve_layers
from nfbench.datasets.base import ImageSet
from nfbench.errors import UserError
from nfbench.paths import cache_root
from nfbench.progress import bars_enabled

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
                     device: torch.device | str = "cpu", progress: bool | None = None,
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
                      disable=not (bars_enabled() if progress is None else progress),
                      leave=False):
        batch = images.load_images(range(start, min(start + batch_size, len(images))))
        for s, scaled in enumerate(scaled_inputs(batch.to(device), n_scales, base_size)):
            if s not in scales:
                continue
            for layer, fmap in zip(layers, extractor(scaled)):
                collected[(s, layer)].append(fmap.float().cpu().contiguous())
    return {key: torch.cat(chunks) for key, chunks in collected.items()}


def save_atomic(obj, path: Path) -> None:
    """``torch.save`` to a temporary file renamed into ``path``: never a truncated file. A
    folder where nothing can be written is one :class:`UserError`."""
    try:
        with atomic_path(path) as tmp:
            torch.save(obj, tmp)
    except OSError as exc:
        raise UserError(f"cannot write to the cache folder {Path(path).parent}: "
                        f"{exc.strerror or exc}; make it writable or set NFBENCH_CACHE to "
                        "another folder") from None
    except RuntimeError as exc:  # torch.save's writer reports a failed write (ENOSPC) so
        if "write" not in str(exc).lower():
            raise
        raise UserError(f"cannot write to the cache folder {Path(path).parent}: "
                        f"{str(exc).splitlines()[0]} (is the disk full?); free space or set "
                        "NFBENCH_CACHE to another folder") from None


ENTRY_FORMAT = "nfbench-entry-1"


def _digest(obj: Any, digest=None):
    """sha256 over the tensors' bytes (and the structure, keys, dtypes, shapes) of ``obj``
    (sha256, not blake2b: hardware-accelerated on current CPUs, the faster of the two here)."""
    digest = digest if digest is not None else hashlib.sha256()
    if isinstance(obj, torch.Tensor):
        tensor = obj.detach().cpu().contiguous()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
        # raw bytes without a copy (bfloat16 etc. have no NumPy view: go through uint8)
        digest.update(tensor.view(-1).view(torch.uint8).numpy() if tensor.numel() else b"")
    elif isinstance(obj, dict):
        digest.update(f"D{len(obj)}".encode())
        for key in sorted(obj, key=str):
            digest.update(f"K{key!r}".encode())
            _digest(obj[key], digest)
    elif isinstance(obj, (list, tuple)):
        digest.update(f"L{len(obj)}".encode())
        for item in obj:
            _digest(item, digest)
    else:
        digest.update(f"V{obj!r}".encode())
    return digest


def save_entry(path: Path, key: str, payload: Any) -> None:
    """Save ``payload`` (a tensor, or a dict/list of tensors and plain values) with its key,
    its shape (a tensor's) and a sha256 digest, atomically."""
    entry = {"format": ENTRY_FORMAT, "key": key, "sha256": _digest(payload).hexdigest(),
             "shape": list(payload.shape) if isinstance(payload, torch.Tensor) else None,
             "payload": payload}
    save_atomic(entry, path)


def _non_finite(obj: Any) -> bool:
    if isinstance(obj, torch.Tensor):
        if not obj.is_floating_point():
            return False
        if obj.dtype in (torch.float32, torch.float64, torch.float16):
            # NumPy: torch.isfinite spins its threads on a shared CPU (~100x slower here)
            return not bool(np.isfinite(obj.detach().cpu().numpy()).all())
        return not bool(torch.isfinite(obj).all())
    if isinstance(obj, dict):
        return any(_non_finite(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_non_finite(v) for v in obj)
    return False


def _entry_problem(entry: Any, key: str, shape_ok) -> str | None:
    if not isinstance(entry, dict) or entry.get("format") != ENTRY_FORMAT:
        return "an older or unknown format"
    if entry.get("key") != key:
        return f"the entry of another key ({entry.get('key')!r})"
    payload = entry.get("payload")
    if isinstance(payload, torch.Tensor):
        if entry.get("shape") != list(payload.shape) or (shape_ok and not shape_ok(payload)):
            return f"a wrong shape {tuple(payload.shape)}"
    if _digest(payload).hexdigest() != entry.get("sha256"):
        return "a checksum mismatch (damaged bytes)"
    if _non_finite(payload):
        return "NaN or infinite values"
    return None


def load_entry(path: Path, key: str, shape_ok=None, what: str = "feature cache") -> Any | None:
    """The verified payload of the entry at ``path``, or ``None`` when there is none or it is
    damaged; a damaged entry is deleted with one warning line on stderr (the caller then
    recomputes it). ``shape_ok(tensor) -> bool`` adds a shape check for tensor payloads."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
        problem = _entry_problem(entry, key, shape_ok)
    except Exception as exc:  # truncated, empty, not a torch file: unreadable either way
        problem = f"an unreadable file ({type(exc).__name__})"
    if problem is None:
        return entry["payload"]
    print(f"warning: {what} entry {path} holds {problem}; recomputing it", file=sys.stderr)
    try:
        path.unlink()
    except OSError:
        pass  # a read-only cache: the fresh entry's write says so
    return None


def cached_features(backbone: str, layers: Sequence[str], images: ImageSet, n_scales: int = 1,
                    batch_size: int = 16, device: torch.device | str = "cpu",
                    progress: bool | None = None, root: Path | None = None,
                    base_size: int | None = None) -> list[list[torch.Tensor]]:
    """Features of ``layers`` at ``n_scales`` input scales, ``result[scale][layer]``, read from
    (or computed once into) the on-disk cache, one verified entry per (layer, scale).
    ``base_size`` sets the side of the scale-s inputs to ``base_size // 2**s`` (see
    :func:`scaled_inputs`); scale 0 is always the whole image, so it shares its entry with
    every other method.

    On a miss, every shared role layer (:data:`SHARED_ROLES`) is computed in the same pass
    and stored, so a later request by another method for another role hits the cache.
    """
    spec = get_backbone_spec(backbone)
    resolved = resolve_layers(spec, layers)
    root = Path(root) if root is not None else cache_root() / "features"
    folder = root / backbone.replace("/", "_")
    key = lambda s, layer: cache_key(backbone, layer, s, images, base_size)
    path = lambda s, layer: folder / f"{key(s, layer)}.pt"
    shape_ok = lambda t: t.ndim == 4 and t.shape[0] == len(images)
    wanted = [(s, layer) for s in range(n_scales) for layer in resolved]
    found = {(s, layer): load_entry(path(s, layer), key(s, layer), shape_ok)
             for s, layer in wanted}
    missing_scales = sorted({s for s, layer in wanted if found[(s, layer)] is None})
    if missing_scales:
        shared = resolve_layers(spec, [r for r in SHARED_ROLES if r in spec.roles])
        to_compute = list(dict.fromkeys(resolved + (shared if set(resolved) <= set(shared) else [])))
        computed = compute_features(backbone, to_compute, images, missing_scales, batch_size,
                                    device, progress, base_size)
        for (s, layer), tensor in computed.items():
            if (s, layer) in found:
                if found[(s, layer)] is None:  # missing or damaged: store the fresh one
                    save_entry(path(s, layer), key(s, layer), tensor)
                    found[(s, layer)] = tensor
            elif not path(s, layer).exists():  # a shared layer another method will want
                save_entry(path(s, layer), key(s, layer), tensor)
    return [[found[(s, layer)] for layer in resolved] for s in range(n_scales)]
