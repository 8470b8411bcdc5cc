"""Where data, caches and results live by default, overridable by environment variables."""

from __future__ import annotations

import os
from pathlib import Path

#: Top of the repository (or of the working directory when installed elsewhere).
def project_root() -> Path:
    """The repository top: the nearest parent of the CWD holding ``dvc.yaml`` or ``pyproject.toml``."""
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if (candidate / "dvc.yaml").exists() or (candidate / "pyproject.toml").exists():
            return candidate
    return here


def config_root() -> Path:
    """Where ``params.yaml`` and ``benchmarks/`` are read: the project top when it holds a
    ``params.yaml``, else the copies packaged with nfbench (``nfbench/defaults``: links to the
    repository's files, copied into a built wheel), so that ``nfbench run``, ``predict`` and
    ``--config`` files work from any folder with the default profiles."""
    top = project_root()
    if (top / "params.yaml").is_file():
        return top
    return Path(__file__).resolve().parent / "defaults"


def datasets_root() -> Path:
    """Folder holding every dataset: ``$NFBENCH_DATA`` or ``<repo>/datasets``."""
    return Path(os.environ.get("NFBENCH_DATA", project_root() / "datasets"))


def default_dataset_root(name: str) -> Path:
    """Default ``--root`` of dataset ``name``: ``<datasets_root>/<name>``."""
    return datasets_root() / name


def cache_root() -> Path:
    """Folder of the on-disk feature cache: ``$NFBENCH_CACHE`` or ``<repo>/cache``."""
    return Path(os.environ.get("NFBENCH_CACHE", project_root() / "cache"))
