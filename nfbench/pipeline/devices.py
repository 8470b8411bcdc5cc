"""``--device cpu|cuda|cuda:N|auto``: validated once, before any work, with one clear error."""

from __future__ import annotations

import re

from nfbench.errors import UserError


def device_type(requested: str) -> str:
    """``cpu`` or ``cuda`` for a device string (``auto``: what this machine has)."""
    if requested == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested.split(":")[0]


def validate_device(requested: str | None) -> str | None:
    """``requested`` if this machine has it; :class:`UserError` otherwise (None passes)."""
    if requested is None or requested in ("auto", "cpu"):
        return requested
    match = re.fullmatch(r"cuda(?::(\d+))?", requested)
    if not match:
        raise UserError(f"--device expects cpu, cuda, cuda:N or auto, got {requested!r}")
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise UserError(f"device {requested} requested, but this machine has no CUDA GPU "
                        "(torch.cuda.is_available() is False); use --device cpu")
    if match.group(1) is not None and int(match.group(1)) >= count:
        raise UserError(f"device {requested} requested, but this machine has {count} CUDA "
                        f"GPU(s): cuda:0..cuda:{count - 1}")
    return requested


def visible_gpus() -> int:
    """CUDA devices this process can use (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def release_memory() -> None:
    """Free what a finished run leaves in its process: the cached feature extractors and
    encoders (module-level caches), unreachable objects, and, when CUDA was used, the memory
    PyTorch's caching allocator still holds (``torch.cuda.empty_cache()``), so that the next
    run in the same worker (or another process on the GPU) gets it back."""
    import gc
    import sys

    import torch

    for module, name in (("nfbench.feature_cache", "_EXTRACTORS"),
                         ("nfbench.methods.cnf.encoder", "_REFLECT_ENCODERS")):
        cache = getattr(sys.modules.get(module), name, None)
        if cache is not None:
            cache.clear()
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
