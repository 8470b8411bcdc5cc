"""The Detector protocol every method follows, in the spirit of scikit-learn estimators.

* The constructor only stores a config: a frozen dataclass whose defaults are the paper's.
* ``fit(train) -> self`` learns from normal images only (an :class:`~nfbench.datasets.base.ImageSet`).
* ``score(images) -> Scores``; higher means more anomalous, always.
* ``state_dict()`` / ``load_state_dict()`` save and restore a fitted detector (tensors only, so
  it loads with ``torch.load(..., weights_only=True)``).

Metrics are never computed inside a method: :mod:`nfbench.metrics` measures every method the
same way.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable, Protocol, runtime_checkable

import numpy as np
import torch

from nfbench.errors import TrainingDivergedError, UserError


@dataclass
class Scores:
    """Anomaly scores of N images: ``image`` is ``float [N]``, ``pixel`` is ``float [N, H, W]``
    at the input size; higher = more anomalous."""

    image: np.ndarray
    pixel: np.ndarray

    def __post_init__(self) -> None:
        self.image = np.asarray(self.image, dtype=np.float64).reshape(-1)
        self.pixel = np.asarray(self.pixel, dtype=np.float32)
        if self.pixel.ndim != 3 or self.pixel.shape[0] != self.image.shape[0]:
            raise ValueError(f"Scores: image {self.image.shape} and pixel {self.pixel.shape} "
                             "must be [N] and [N, H, W]")


@runtime_checkable
class Detector(Protocol):
    """What the suite needs from a method."""

    name: ClassVar[str]
    config: Any

    def fit(self, train, **kwargs) -> "Detector": ...

    def score(self, images) -> Scores: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA) and return a torch generator from ``seed``."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def resolve_device(requested: str = "auto") -> torch.device:
    """``auto`` means CUDA when available, else CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def _coerce(value: Any, target_type: Any, default: Any, key: str) -> Any:
    """Convert a ``--set`` string (or YAML value) to the type of the field's default."""
    if not isinstance(value, str):
        if isinstance(default, tuple) and isinstance(value, list):
            return tuple(value)
        return value
    import yaml  # YAML reads "[3, 3]", "true", "null" the way a user means them

    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as exc:  # pragma: no cover - message only
        raise UserError(f"cannot parse value {value!r} for {key}: {exc}") from None
    if default is None or parsed is None:
        return parsed
    if isinstance(default, bool):
        if not isinstance(parsed, bool):
            raise UserError(f"{key} expects true/false, got {value!r}")
        return parsed
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        if isinstance(parsed, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        if not isinstance(parsed, (int, float)) or isinstance(parsed, bool):
            raise UserError(f"{key} expects a number, got {value!r}")
        return type(default)(parsed) if isinstance(default, float) or float(parsed).is_integer() \
            else parsed
    if isinstance(default, tuple):
        if not isinstance(parsed, list):
            raise UserError(f"{key} expects a list like [1, 2], got {value!r}")
        return tuple(parsed)
    if isinstance(default, str):
        return str(value)
    return parsed


def build_config(config_cls: type, overrides: dict[str, Any]) -> Any:
    """Instantiate ``config_cls`` with ``overrides`` applied, checking every key and value type;
    unknown keys or bad values raise :class:`UserError` naming the key."""
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise UserError(f"unknown setting(s) {', '.join(unknown)} for {config_cls.__name__}; "
                        f"valid: {', '.join(sorted(fields))}")
    defaults = config_cls()
    kwargs = {k: _coerce(v, fields[k].type, getattr(defaults, k), k) for k, v in overrides.items()}
    try:
        return dataclasses.replace(defaults, **kwargs)
    except (TypeError, ValueError) as exc:
        raise UserError(f"invalid setting for {config_cls.__name__}: {exc}") from None


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return {k: (list(v) if isinstance(v, tuple) else v)
            for k, v in dataclasses.asdict(config).items()}


def descent_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, what: str,
                 where: Callable[[], str],
                 clip: tuple[Iterable[torch.nn.Parameter], float] | None = None) -> float:
    """One optimiser step on ``loss`` (gradients clipped to norm ``clip[1]`` when given), with
    the NaN guard every method shares: a NaN or inf loss stops training with a
    :class:`TrainingDivergedError` "<what> loss became <value> at <where()>" instead of a
    silent NaN model. Returns the loss value."""
    value = loss.item()
    if not math.isfinite(value):
        raise TrainingDivergedError(f"{what} loss became {value} at {where()}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(*clip)
    optimizer.step()
    return value
