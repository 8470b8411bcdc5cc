"""The Detector protocol every method follows, in the spirit of scikit-learn estimators.

This is the whole contract between a method and the pipeline: the pipeline uses nothing of a
detector that is not declared here, and reaches the optional members only through the helpers
below (:func:`effective_config`, :func:`resolved_settings`, :func:`fit_info`,
:func:`category_config`, :func:`needed_datasets`, :func:`shares_stages`,
:func:`work_items`).
``tests/test_conformance.py`` checks all of it for every registered method.

Required:

* ``Config``: a frozen dataclass whose defaults are the paper's; it has at least the fields of
  :class:`DetectorConfig` (``input_size``, ``device``, ``backbone``) and is checked by
  :func:`validate_config` (each field's type, its ``range``/``choices`` metadata).
  The constructor only stores a config (``config``).
* ``fit(train) -> self`` learns from normal images only (an :class:`~nfbench.datasets.base.ImageSet`).
  A method whose ``original_protocol`` evaluates during training also takes
  ``fit(train, evaluate=callback)`` and calls ``evaluate(label)`` at the original's evaluation
  points (labels ``"... k/n"``); the callback must not change the model.
* ``score(images) -> Scores``; higher means more anomalous, always.
* ``state_dict()`` / ``load_state_dict()`` save and restore a fitted detector (tensors only, so
  it loads with ``torch.load(..., weights_only=True)``; ``--save-model`` and ``nfbench predict``).
* ``inference_module(component=None, pretrained=True)`` is the one profiling hook: an
  ``nn.Module`` from images ``[B, 3, S, S]`` in [0, 1] to ``(image scores [B], anomaly map
  [B, h, w])``, the same eval forward ``score()`` runs (untrained before ``fit``; FLOPs and
  speed do not depend on the weights). ``component`` names one of ``profiling_components``
  (CLS-CNFs' Table 3 rows; a complexity table's rows must be among them); a method or
  component without such a network raises :class:`ProfilingNotSupported` with the reason.
* ``smoke_settings``: settings for a seconds-long run (conformance tests, CI smoke);
  ``profiling_components``: the named sub-networks (``()``: the method as a whole only);
  ``original_protocol``: the :class:`nfbench.methods.protocol.OriginalProtocol` subclass that
  measures the original code's evaluation protocol, or ``None``.

Optional, with the default the helpers give:

* ``settings_``: the config ``fit`` used for the category (per-category settings applied);
  default ``config``. ``fit`` never rewrites ``config``: what it resolves and learns lives in
  attributes ending in ``_`` (scikit-learn's rule), so a second ``fit`` starts from the config.
* ``resolved_settings_``: what ``fit`` resolved that the record lists with the config (e.g.
  CLS-CNFs' ``w_chosen``); default ``{}``.
* ``fit_info_``: what the record keeps about training (losses, the effective schedule);
  default ``None``.
* ``category_config(config, category)`` (static): the config a run of ``category`` uses
  (e.g. params.yaml's ``category_settings`` applied); default ``config``.
* ``needed_datasets(config)`` (static): datasets a run reads besides its own (e.g. DTD
  textures for synthetic defects); default ``()``.
* ``work_items(config, work)`` (static): the run's work for the cost model (``nfbench plan
  --gpus``): feature extraction and training as FLOPs, keyed so that shared work counts once
  (:class:`nfbench.pipeline.flops.RunWork`); default: feature extraction only.
* ``shares_stages``: whether runs of the same training data and seed may share trained
  stages through a stage cache (the planner keeps them in one shard); default ``False``.

Metrics are computed by :mod:`nfbench.metrics` for every method the same way; a method calls
them only where its own training selects on a validation set or where its original protocol
scored the test set (``original_protocol``), never for the record's honest numbers.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable, Protocol, runtime_checkable

import numpy as np
import torch

from nfbench.errors import TrainingDivergedError, UserError, check_choice


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


class ProfilingNotSupported(UserError):
    """A method (or one of its ``profiling_components``) has no images → scores network to
    profile; the message says why. ``sized`` is a module whose parameters still count (e.g. a
    bare feature extractor's size in CLS-CNFs' Table 3), or None."""

    def __init__(self, reason: str, sized: torch.nn.Module | None = None):
        super().__init__(reason)
        self.sized = sized


class DetectorConfig(Protocol):
    """The fields every method's ``Config`` has: the pipeline reads them before ``fit``."""

    #: the side of the square images the detector takes, in pixels
    input_size: int
    #: ``auto``, ``cpu``, ``cuda``, ``cuda:1``... (:func:`resolve_device`)
    device: str
    #: the feature extractor's name (:mod:`nfbench.backbones`; reports and profiling name it)
    backbone: str


@runtime_checkable
class Detector(Protocol):
    """What the suite needs from a method (see the module docstring)."""

    name: ClassVar[str]
    #: the frozen, validated hyperparameter dataclass; its defaults are the paper's
    Config: ClassVar[type]
    #: settings for a seconds-long run (conformance tests, CI smoke)
    smoke_settings: ClassVar[dict[str, Any]]
    #: named sub-networks ``inference_module`` can profile besides the whole method
    profiling_components: ClassVar[tuple[str, ...]]
    #: the original code's evaluation protocol (``OriginalProtocol`` subclass), or None
    original_protocol: ClassVar[type | None]
    config: DetectorConfig

    def fit(self, train, **kwargs) -> "Detector": ...

    def score(self, images) -> Scores: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def inference_module(self, component: str | None = None,
                         pretrained: bool = True) -> torch.nn.Module: ...


# -- the optional members, with their defaults (the only place that reads them) ------------

def effective_config(detector: Any) -> Any:
    """The config ``fit`` used for its category (``settings_``); before ``fit``, or for a
    method without per-category settings, ``detector.config``."""
    return getattr(detector, "settings_", detector.config)


def resolved_settings(detector: Any) -> dict[str, Any]:
    """What ``fit`` resolved that the record lists with the config (``resolved_settings_``)."""
    return dict(getattr(detector, "resolved_settings_", {}))


def fit_info(detector: Any) -> dict[str, Any] | None:
    """What the record keeps about training (``fit_info_``), or None."""
    return getattr(detector, "fit_info_", None)


def work_items(method_cls: type, config: dict[str, Any], work: Any) -> None:
    """A run's work for the cost model (the class's ``work_items(config, work)``; by default
    feature extraction only): ``work`` is a :class:`nfbench.pipeline.flops.RunWork`."""
    hook = getattr(method_cls, "work_items", None)
    if hook is None:
        work.add_features()
    else:
        hook(config, work)


def epoch_work_items(config: dict[str, Any], work: Any) -> None:
    """``work_items`` of a method that trains on cached image features for ``epochs``:
    forward + backward (3x the forward) of what trains, per training image and epoch."""
    work.add_features()
    work.add("train", work.key("run", work.method, work.data, work.seed, config),
             3 * work.trained * work.n_train * config.get("epochs", 1))


def shares_stages(method_cls: type) -> bool:
    """Whether runs of the method may share trained stages (the class's ``shares_stages``)."""
    return bool(getattr(method_cls, "shares_stages", False))


def category_config(method_cls: type, config: Any, category: str | None) -> Any:
    """The config a run of ``category`` uses (the class's ``category_config``), else ``config``."""
    hook = getattr(method_cls, "category_config", None)
    return config if hook is None else hook(config, category)


def needed_datasets(method_cls: type, config: Any) -> tuple[str, ...]:
    """Datasets a run with ``config`` reads besides its own (the class's ``needed_datasets``)."""
    hook = getattr(method_cls, "needed_datasets", None)
    return () if hook is None else tuple(hook(config))


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
    """Convert a ``--set`` string (or YAML value) to the type of the field's default (or, for
    an optional field whose default is None, of its annotation: a list becomes a tuple)."""
    tuple_field = isinstance(default, tuple) or str(target_type).startswith("tuple[")
    if not isinstance(value, str):
        if tuple_field and isinstance(value, list):
            return tuple(value)
        return value
    if target_type in ("str", str):  # a string field keeps the text as given ("" is not null)
        return value
    import yaml  # YAML reads "[3, 3]", "true", "null" the way a user means them

    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as exc:  # pragma: no cover - message only
        raise UserError(f"cannot parse value {value!r} for {key}: {exc}") from None
    if default is None or parsed is None:
        return tuple(parsed) if tuple_field and isinstance(parsed, list) else parsed
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
        config = dataclasses.replace(defaults, **kwargs)
    except (TypeError, ValueError) as exc:
        raise UserError(f"invalid setting for {config_cls.__name__}: {exc}") from None
    return validate_config(config)


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return {k: (list(v) if isinstance(v, tuple) else v)
            for k, v in dataclasses.asdict(config).items()}


def evaluation_epochs(total: int, evaluations: int = 4) -> set[int]:
    """1-based epochs at which an original that tests ``evaluations`` times over ``total``
    epochs evaluates, scaled to the budget: ``round(k * total / evaluations)``, k = 1..n
    (CS-Flow: meta_epochs 4 x sub_epochs 60 = tests at epochs 60, 120, 180, 240)."""
    return {max(1, round(k * total / evaluations)) for k in range(1, evaluations + 1)}


class EpochLosses:
    """The optimiser steps of one epoch and the NaN guard every method shares.

    :meth:`step` takes one step on a loss and keeps the loss on its device: no host
    synchronisation inside a step (a ``loss.item()`` per step stalls a GPU's queue).
    :meth:`end_epoch` reads the epoch's losses once and returns their mean (the same float as
    reading each loss and averaging with NumPy); a NaN or inf loss raises
    :class:`TrainingDivergedError` "<what> loss became <value> at <where>" naming the first
    bad step. A non-finite step is still taken, so the weights may be NaN when the error
    comes: nothing is saved from a diverged fit."""

    def __init__(self, what: str):
        self.what = what
        self._losses: list[torch.Tensor] = []
        self._where: list[str] = []

    def step(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor, where: str,
             clip: tuple[Iterable[torch.nn.Parameter], float] | None = None) -> None:
        """One optimiser step on ``loss`` (gradients clipped to norm ``clip[1]`` when given);
        ``where`` names the step in the error message."""
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(*clip)
        optimizer.step()
        self._losses.append(loss.detach())
        self._where.append(where)

    def end_epoch(self) -> float:
        """The mean loss of the steps since the last call (NaN without steps), after the
        finiteness check; starts the next epoch."""
        losses, where = self._losses, self._where
        self._losses, self._where = [], []
        if not losses:
            return float("nan")
        values = torch.stack(losses).double().cpu().numpy()
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise TrainingDivergedError(f"{self.what} loss became {values[bad[0]]} "
                                        f"at {where[bad[0]]}")
        return float(np.mean(values))


def adam(params, device: torch.device, **kwargs) -> torch.optim.Adam:
    """``torch.optim.Adam``, fused on CUDA (one kernel per step; not used on the CPU, whose
    results must stay those of the default implementation)."""
    return torch.optim.Adam(params, **kwargs, **({"fused": True} if device.type == "cuda" else {}))


def compiled_step(function: Callable, enabled: bool) -> Callable:
    """``function`` wrapped by ``torch.compile`` when ``enabled`` (the ``compile`` setting),
    else itself. Opt-in and off by default: it has not been measured or checked on a GPU yet,
    and a compiled step need not match the eager one to the last bit."""
    return torch.compile(function) if enabled else function


# --------------------------------------------------------------------------------------------
# one validator for every config value

_INF = float("inf")
#: A field's range: ``(low, high, bounds)``, bounds "()" open, "[]" closed, mixed ok.
POSITIVE = (0, _INF, "()")
NON_NEGATIVE = (0, _INF, "[)")
FRACTION = (0, 1, "(]")  # a share of something: not none of it
OPEN_FRACTION = (0, 1, "()")
PROBABILITY = (0, 1, "[]")
BELOW_ONE = (0, 1, "[)")  # e.g. Adam's betas
IMAGE_SIDE = (32, 2048, "[]")  # a sane image side: refused before 60000 px allocate tens of GB


def setting(default: Any, *, range: tuple[float, float, str] | None = None,
            choices: Iterable[Any] | None = None) -> Any:
    """A config field with its own rule, which :func:`validate_config` checks: ``range`` for a
    number (or each number of a tuple), ``choices`` for a value from a fixed set. Without
    one, an integer must be >= 1 (counts and sizes) and a float finite."""
    metadata: dict[str, Any] = {}
    if range is not None:
        metadata["range"] = range
    if choices is not None:
        metadata["choices"] = tuple(choices)
    return dataclasses.field(default=default, metadata=metadata)


_INT_DEFAULT_RANGE = (1, _INF, "[)")


def _describe(low: float, high: float, bounds: str) -> str:
    if high == _INF:
        return f"{'>=' if bounds[0] == '[' else '>'} {low:g}"
    return f"in {bounds[0]}{low:g}, {high:g}{bounds[1]}"


def _in_range(value: float, low: float, high: float, bounds: str) -> bool:
    above = value >= low if bounds[0] == "[" else value > low
    below = value <= high if bounds[1] == "]" else value < high
    return above and below


def _field_range(f: dataclasses.Field, integer: bool) -> tuple[float, float, str] | None:
    if "range" in f.metadata:
        return f.metadata["range"]
    return _INT_DEFAULT_RANGE if integer else None


def _check_number(name: str, value: Any, kind: str, rule, allow_nan: bool) -> None:
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{name} must be an integer, got {value!r}")
    else:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{name} must be a number, got {value!r}")
        if not math.isfinite(value):
            if allow_nan and math.isnan(value):
                return
            raise UserError(f"{name} must be a finite number, got {value!r}")
    if rule is not None and not _in_range(value, *rule):
        raise UserError(f"{name} must be {_describe(*rule)}, got {value!r}")


def validate_config(config: Any) -> Any:
    """Check every value of a config dataclass against its annotated type and its own rule
    (:func:`setting`: ``range``, ``choices``); raises :class:`UserError` naming the first bad field. Returns
    ``config``. Integers must be true integers (``96.5`` is refused, never truncated); floats
    finite (a field whose default is NaN, an output, may stay NaN). Reads the defaults from
    the fields (never instantiates the class), so a config may call it in ``__post_init__``."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        annotation = str(f.type).replace(" ", "")
        optional = annotation.endswith("|None") or annotation.startswith("None|")
        annotation = annotation.replace("|None", "").replace("None|", "")
        if value is None and optional:
            continue
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        allow_nan = isinstance(default, float) and math.isnan(default)
        if annotation in ("int", "float"):
            _check_number(f.name, value, annotation, _field_range(f, annotation == "int"),
                          allow_nan)
        elif annotation == "bool" and not isinstance(value, bool):
            raise UserError(f"{f.name} must be true or false, got {value!r}")
        elif annotation == "str" and not isinstance(value, str):
            raise UserError(f"{f.name} must be a string, got {value!r}")
        elif annotation.startswith("dict") and not isinstance(value, dict):
            raise UserError(f"{f.name} must be a mapping, got {value!r}")
        elif "choices" in f.metadata:
            check_choice(f.name, value, f.metadata["choices"])
        elif annotation.startswith("tuple[") and annotation.rstrip("]").split("[", 1)[1]:
            kinds = annotation[len("tuple["):-1].split(",")
            if not isinstance(value, tuple):
                raise UserError(f"{f.name} must be a list, got {value!r}")
            if not value:
                raise UserError(f"{f.name} must not be empty")
            if kinds[-1] != "...":
                if len(value) != len(kinds):
                    raise UserError(f"{f.name} must have {len(kinds)} values, got {value!r}")
            else:
                kinds = [kinds[0]] * len(value)
            for item, kind in zip(value, kinds):
                if kind in ("int", "float"):
                    _check_number(f.name, item, kind, _field_range(f, kind == "int"), False)
                elif kind == "str" and not isinstance(item, str):
                    raise UserError(f"{f.name} must hold strings, got {value!r}")
    return config
