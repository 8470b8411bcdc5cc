"""The method registry: ``register_method``, ``create_method(name, **overrides)``, ``list_methods``.

Each method is a class following :class:`~nfbench.methods.base.Detector` with a ``Config``
dataclass; ``create_method`` applies overrides (``--set key=value`` from the CLI) to the
paper-default config and checks every key.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from nfbench.errors import UserError
from nfbench.methods.base import Detector, Scores, build_config

_REGISTRY: dict[str, type] = {}

#: Subpackages imported on first use of the registry; each registers its methods.
_BUILTIN_MODULES = ("nfbench.methods.gaussian", "nfbench.methods.csflow", "nfbench.methods.patchflow",
                    "nfbench.methods.cflow", "nfbench.methods.clscnf")


def register_method(name: str) -> Callable[[type], type]:
    """Class decorator: make a Detector class available as ``name``."""

    def decorate(cls: type) -> type:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"method {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:  # a real missing dependency, not a not-yet-written method
                raise


def list_methods() -> list[str]:
    """Names of every registered method, sorted."""
    _load_builtins()
    return sorted(_REGISTRY)


def method_class(name: str) -> type:
    """The class registered as ``name``; :class:`UserError` listing valid names otherwise."""
    _load_builtins()
    if name not in _REGISTRY:
        raise UserError(f"unknown method {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def create_method(name: str, **overrides: Any) -> Detector:
    """A new, unfitted detector ``name`` with its paper-default config updated by ``overrides``."""
    cls = method_class(name)
    return cls(build_config(cls.Config, overrides))


__all__ = ["Detector", "Scores", "register_method", "create_method", "list_methods",
           "method_class"]
