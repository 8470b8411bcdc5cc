"""Independent-implementation cross-check: anomalib's torch models on our cached features.

``nfbench peer`` trains anomalib's own ``torch_model.py`` classes (CS-Flow, PatchFlow, CFlow;
no Lightning, no Engine) on exactly the features of a run of ours (resolved as ``nfbench run``
resolves it), at its input size, budget and seed and on its device, with a training loop that
mirrors anomalib's ``lightning_model.py``, scores the same test set through anomalib's
anomaly-map code and writes a record of kind ``peer``. Two configs: ``shipped`` (anomalib's own
defaults for everything it lets a user set, taking from our run only what ``deviations.yaml``
``takes_from_ours`` names) and ``matched`` (exactly the listed deviations set to our run's
values); the list of deviations is data (``deviations.yaml``). The ``peers`` stage skips runs
whose record carries the same identity, and its config ``ours`` runs extra seeds of our
compared variant. The extra ``peers`` installs anomalib; without it the pipeline stage writes
``skipped`` records and the reports say how to enable it.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

PEER = "anomalib"
PEER_VERSION = "2.7.0"
METHODS = ("csflow", "patchflow", "cflow")
CONFIGS = ("shipped", "matched")
#: what the ``peers`` stage runs: the two anomalib configs, and ``ours``: extra seeds of OUR
#: compared variant (records beside the peers'), so that ours has as many seeds as the peer
#: where the two are compared without changing the paper's bench runs
STAGE_CONFIGS = CONFIGS + ("ours",)
ENABLE_HINT = 'python -m pip install -e ".[dev,peers]"  (installs anomalib==2.7.0)'


@lru_cache(maxsize=1)
def deviations() -> dict[str, Any]:
    """``deviations.yaml``: per method, its paper/variant and anomalib's deviations."""
    return yaml.safe_load((Path(__file__).with_name("deviations.yaml")).read_text())


def peer_version() -> str | None:
    """The installed anomalib version, or ``None`` when anomalib is missing or broken."""
    try:
        import anomalib
    except Exception:  # ImportError, or a broken install: the stage must still write records
        return None
    return str(getattr(anomalib, "__version__", "unknown"))


def record_path(method: str, config: str, category: str, seed: int) -> Path:
    """Where a peer record lives, relative to the results folder."""
    return Path("peers") / method / config / category / f"seed{seed}.json"
