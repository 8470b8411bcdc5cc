"""Per-category facts shipped as data files inside the package (e.g. the original code's
per-category ``w`` of CLS-CNFs), read and checked where they are used. The files sit beside
the module that reads them; :func:`nfbench.code_digest.code_digest` hashes them with that
module, so editing one changes the code version of every run that reads it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from nfbench.errors import UserError

#: the file suffix of package data hashed into the code version
DATA_SUFFIX = ".yaml"


def load(module_file: str, name: str) -> dict[str, Any]:
    """The mapping in data file ``name`` beside ``module_file`` (a module's ``__file__``)."""
    path = Path(module_file).resolve().parent / name
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"{path}: cannot read the package data: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping at the top, got {type(data).__name__}")
    return data


def fail(module_file: str, name: str, where: str, message: str) -> None:
    """One line naming the data file and the key path of the problem."""
    raise UserError(f"{Path(module_file).resolve().parent / name}: {where}: {message}")
