"""The one quiet switch: ``NFBENCH_QUIET=1`` (set by ``--quiet``) silences every per-epoch
and per-batch progress bar; the runner's run counter (runs done / total) stays on."""

from __future__ import annotations

import os


def bars_enabled() -> bool:
    """Whether per-epoch and per-batch progress bars are shown."""
    return os.environ.get("NFBENCH_QUIET") != "1"
