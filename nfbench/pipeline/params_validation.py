"""params.yaml and ``nfbench run --config`` files, read and type-checked before any work.

A YAML syntax error, an empty file, a ``!!python/...`` tag (``yaml.safe_load`` refuses to
construct it; here it is one line instead of a ``ConstructorError`` traceback) or a value of
the wrong type (``seeds: 'abc'``, ``datasets: 5``, ``joint: "no"``, whose non-empty string
would be true) is one :class:`~nfbench.errors.UserError` naming the file and the key path,
e.g. ``params.yaml: csflow.demo.seeds[1]: expected an integer, got 'x'``. The settings a
block carries are checked by the method's own config (:func:`nfbench.methods.base.build_config`)
when a run resolves them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from nfbench.errors import UserError


def read_yaml(path: Path, what: str) -> Any:
    """The YAML document at ``path``; a syntax error or a tag ``safe_load`` cannot construct
    is one line naming the file and the line."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UserError(f"{what} {path} is not a text file") from None
    try:
        return yaml.safe_load(text)
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise UserError(f"{path}{where}: {exc.problem}; only plain YAML values are "
                        "allowed") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{path}{where}: not valid YAML: {problem}") from None


class _Keys:
    """Type checks whose errors name the file and the key path."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, where: str, message: str) -> None:
        raise UserError(f"{self.path}: {where}: {message}")

    def mapping(self, value: Any, where: str, optional: bool = True) -> Mapping:
        if value is None and optional:
            return {}
        if not isinstance(value, Mapping):
            self.fail(where, f"expected a mapping, got {value!r}")
        return value

    def text(self, value: Any, where: str, optional: bool = True) -> None:
        if value is None and optional:
            return
        if not isinstance(value, str) or not value:
            self.fail(where, f"expected a non-empty string, got {value!r}")

    def integer(self, value: Any, where: str, optional: bool = True, minimum: int = 0) -> None:
        if value is None and optional:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(where, f"expected an integer >= {minimum}, got {value!r}")

    def flag(self, value: Any, where: str) -> None:
        if value is not None and not isinstance(value, bool):
            self.fail(where, f"expected true or false, got {value!r}")


def validate_params(params: Any, path: Path) -> dict[str, Any]:
    """``params`` (params.yaml's document) with every key the pipeline reads type-checked:
    ``profile``, ``profiles.<name>.settings``, and per paper and profile ``seeds`` (a
    non-empty list of integers), ``settings`` and ``datasets.<role>`` (``dataset``,
    ``categories``: ``all`` or a list of names, ``root``, ``settings``)."""
    from nfbench.pipeline.spec import papers

    keys = _Keys(path)
    if params is None:
        raise UserError(f"{path} is empty; it must hold the pipeline parameters")
    if not isinstance(params, Mapping):
        raise UserError(f"{path}: expected a mapping of parameters, got {params!r}")
    keys.text(params.get("profile"), "profile")
    for name, profile in keys.mapping(params.get("profiles"), "profiles").items():
        keys.mapping(keys.mapping(profile, f"profiles.{name}").get("settings"),
                     f"profiles.{name}.settings")
    for paper in papers():
        for profile, block in keys.mapping(params.get(paper), paper).items():
            where = f"{paper}.{profile}"
            block = keys.mapping(block, where)
            seeds = block.get("seeds", [0])
            if not isinstance(seeds, list) or not seeds:
                keys.fail(f"{where}.seeds", f"expected a non-empty list of integers, got "
                          f"{seeds!r}")
            for i, seed in enumerate(seeds):
                keys.integer(seed, f"{where}.seeds[{i}]", optional=False)
            keys.mapping(block.get("settings"), f"{where}.settings")
            roles = keys.mapping(block.get("datasets"), f"{where}.datasets", optional=False)
            for role, entry in roles.items():
                at = f"{where}.datasets.{role}"
                entry = keys.mapping(entry, at, optional=False)
                keys.text(entry.get("dataset"), f"{at}.dataset", optional=False)
                keys.text(entry.get("root"), f"{at}.root")
                keys.mapping(entry.get("settings"), f"{at}.settings")
                categories = entry.get("categories", "all")
                if categories != "all" and not (
                        isinstance(categories, list) and categories
                        and all(isinstance(c, str) and c for c in categories)):
                    keys.fail(f"{at}.categories", f"expected 'all' or a list of category "
                              f"names, got {categories!r}")
    return dict(params)


#: the type of every run field a config file may carry (settings: checked by the method)
CONFIG_FIELDS = {"method": "text", "dataset": "text", "category": "text", "profile": "text",
                 "variant": "text", "root": "text", "seed": "integer", "shots": "integer",
                 "joint": "flag", "settings": "mapping"}


def validate_run_config(loaded: Any, path: Path) -> dict[str, Any]:
    """A ``--config`` file's document (from ``--print-config``) with every field's type
    checked; an unknown field is refused too (a typo would be ignored otherwise)."""
    keys = _Keys(path)
    if loaded is None:
        return {}
    if not isinstance(loaded, Mapping):
        raise UserError(f"{path}: expected a mapping (from --print-config), got {loaded!r}")
    unknown = [k for k in loaded if k not in CONFIG_FIELDS]
    if unknown:
        keys.fail(str(unknown[0]), f"unknown field; allowed: {', '.join(CONFIG_FIELDS)}")
    for name, kind in CONFIG_FIELDS.items():
        value = loaded.get(name)
        if kind == "integer":
            keys.integer(value, name)
        else:
            getattr(keys, kind)(value, name)
    return dict(loaded)
