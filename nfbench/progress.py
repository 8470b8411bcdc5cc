"""The one quiet switch: ``--quiet`` (or ``NFBENCH_QUIET=1``) silences every per-epoch and
per-batch progress bar; the runner's run counter (runs done / total) stays on.

The switch is an environment variable, not a module global, so that worker processes (local
pool or Ray) inherit it.
"""

from __future__ import annotations

import os

#: the environment variable behind the switch
QUIET_VARIABLE = "NFBENCH_QUIET"


def silence_bars() -> None:
    """Turn the per-epoch and per-batch bars off, here and in every worker started later."""
    os.environ[QUIET_VARIABLE] = "1"


def bars_enabled() -> bool:
    """Whether per-epoch and per-batch progress bars are shown."""
    return os.environ.get(QUIET_VARIABLE) != "1"
