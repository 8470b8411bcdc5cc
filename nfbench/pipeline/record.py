"""A run's result record: its one builder, its one writer and its readers.

A record is a JSON object (its shape is what :class:`RunRecord` lists; :data:`RECORD_VERSION`
is its version, shared by bench and peer records). It is made in two steps, both here:

* :func:`run_record` (called by the one-run driver,
  :func:`nfbench.pipeline.experiment.run_experiment`): what the run measured and how;
* :func:`stamp` (called by :func:`nfbench.pipeline.execution.compute`, the one execution path
  of both executors): which planned run it is (paper, run id, identity) and its wall time.

:func:`write_record` writes any record (strict JSON: a non-finite float is ``null``);
readers use :func:`read_record`, :func:`metric_value` and :func:`format_metric`, which
handle the ``null`` an undefined metric is written as (``"n/a"`` in text).

Where records are: :func:`record_paths` is how every consumer (tables, ``nfbench results``,
``nfbench check``) finds a results folder's run records, at the plan's layout
``<paper>/runs/<variant>/<category>/seed<k>.json``. A record of a paper of ``benchmarks/``
whose variant that paper no longer declares (a removed or renamed variant) is *stale*
(``nfbench run``'s records, under ``run/``, belong to no paper and never are): no consumer
counts it (the tables have no row for it; ``results`` leaves it out; ``check`` neither
compares nor merges it and names it as stale), :func:`stale_record_paths` lists them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, TypedDict

import numpy as np

from nfbench.atomic import write_text_atomic
from nfbench.errors import UserError

#: the version of the record format (bench and peer records)
RECORD_VERSION = 1

#: how text shows a metric that is undefined (``null`` in the record)
UNDEFINED = "n/a"


class RunRecord(TypedDict, total=False):
    """A bench run's record (``results/<paper>/runs/<variant>/<category>/seed<k>.json``).
    The keys the driver always writes come first; ``per_category`` (joint runs),
    ``undefined_metrics``, ``fit_info`` and ``original_protocol`` are present when they
    apply, ``paper``/``run_id``/``identity`` once the run is stamped (:func:`stamp`)."""

    record_version: int
    method: str
    dataset: str
    category: str
    variant: str
    seed: int
    profile: str
    shots: int | None
    joint: bool
    config: dict[str, Any]
    metrics: dict[str, float | None]
    timing: dict[str, Any]
    data: dict[str, Any]
    environment: dict[str, Any]
    created: str
    per_category: dict[str, dict[str, float | None]]
    bootstrap: dict[str, Any]
    intervals: dict[str, list[float]]
    fit_info: Any
    original_protocol: dict[str, Any]
    undefined_metrics: dict[str, str]
    paper: str
    run_id: str
    identity: dict[str, Any]


def run_record(*, method: str, dataset: str, category: str, variant: str, seed: int,
               profile: str, shots: int | None, joint: bool, config: dict[str, Any],
               metrics: dict[str, float], timing: dict[str, Any], data: dict[str, Any],
               environment: dict[str, Any], created: str) -> RunRecord:
    """A run's record, in the key order every record has."""
    return {"record_version": RECORD_VERSION,
            "method": method, "dataset": dataset, "category": category, "variant": variant,
            "seed": seed, "profile": profile, "shots": shots, "joint": joint,
            "config": config, "metrics": metrics, "timing": timing, "data": data,
            "environment": environment, "created": created}


def stamp(record: dict[str, Any], *, paper: str, run_id: str, identity: dict[str, Any],
          wall_seconds: float | None = None) -> dict[str, Any]:
    """``record`` with which run it is (a planned run, or ``nfbench run``'s own) and, for a
    bench run, its wall time (in place)."""
    record["paper"] = paper
    record["run_id"] = run_id
    record["identity"] = identity
    if wall_seconds is not None:
        record["timing"]["wall_seconds"] = wall_seconds
    return record


# ------------------------------------------------------------------------------------------
# writing


def write_record(record: dict[str, Any], path: Path) -> None:
    """Write a record as JSON atomically (temporary file, then rename); where that fails
    (full disk), the record is rescued and the error line says where (:mod:`nfbench.pipeline.rescue`)."""
    text = record_json(record)
    try:
        write_text_atomic(path, text)
    except OSError as exc:  # a full disk after hours of training: keep the result elsewhere
        from nfbench.pipeline.rescue import unwritable

        raise unwritable("the record", path, exc, text) from None


def record_json(record: dict[str, Any]) -> str:
    """A record's strict-JSON text (non-finite floats as ``null``), as it is written."""
    return json.dumps(_finite_or_none(record), indent=2, default=_json_default,
                      allow_nan=False) + "\n"


def _finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, inf) replaced by ``None``: strict JSON."""
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    if isinstance(value, (float, np.floating)) and not np.isfinite(value):
        return None
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


# ------------------------------------------------------------------------------------------
# reading


def read_record(path: Path, what: str = "result record") -> dict[str, Any]:
    """The record at ``path`` (a JSON object), or one :class:`UserError` naming it."""
    try:
        record = json.loads(Path(path).read_text())
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{what} {path} is not valid JSON: {exc}") from None
    except RecursionError:
        raise UserError(f"{what} {path} is nested too deeply to be a {what}") from None
    if not isinstance(record, dict):
        raise UserError(f"{what} {path} must be a JSON object, got {type(record).__name__}")
    return record


def metric_value(record: dict[str, Any], metric: str, category: str | None = None) -> float:
    """``metric`` of a record as a float, NaN where undefined (``null``) or absent; of one
    ``category`` of a joint run (``category: all``) when given."""
    if record["category"] == "all" and category is not None:
        value = record["per_category"][category].get(metric)
    else:
        value = record["metrics"].get(metric)
    return float("nan") if value is None else float(value)


def format_metric(value: float | None, spec: str = ".4f") -> str:
    """A metric as text: ``format(value, spec)``, :data:`UNDEFINED` for ``null``/NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return UNDEFINED
    return format(value, spec)


# ------------------------------------------------------------------------------------------
# finding


#: where a run's record lies below a results folder (:attr:`nfbench.pipeline.plan.Run.record_path`)
RECORD_GLOB = "*/runs/*/*/seed*.json"


def _declared(path: Path, root: Path) -> bool:
    """Whether the record at ``path`` is not stale: its folder is no paper of
    ``benchmarks/`` (``nfbench run``'s own ``run/`` records), or that paper declares its
    variant."""
    from nfbench.pipeline.spec import load_spec, papers

    paper, _, variant = path.relative_to(root).parts[:3]
    return paper not in papers() or variant in load_spec(paper).variants


def _layout_paths(results_dir: Path | str, papers: Iterable[str] | None) -> list[Path]:
    root = Path(results_dir)
    wanted = set(papers) if papers else None
    return [path for path in sorted(root.glob(RECORD_GLOB))
            if wanted is None or path.relative_to(root).parts[0] in wanted]


def record_paths(results_dir: Path | str, papers: Iterable[str] | None = None) -> list[Path]:
    """The run records under ``results_dir`` (optionally of some ``papers`` only), stale
    ones left out (see the module docstring)."""
    root = Path(results_dir)
    return [path for path in _layout_paths(root, papers) if _declared(path, root)]


def unwanted_files(folder: Path | str, pattern: str, wanted: Iterable[Path | str]) -> list[Path]:
    """The files below ``folder`` matching ``pattern`` (records ``seed<k>.json`` and the figure
    material beside them) whose record is not among the ``wanted`` record paths: what a stage
    whose runs changed (a category or seed dropped from params.yaml) no longer makes."""
    keep = {Path(p) for p in wanted}
    return sorted(p for p in Path(folder).glob(pattern) if p.with_suffix(".json") not in keep)


def stale_record_paths(results_dir: Path | str,
                       papers: Iterable[str] | None = None) -> list[Path]:
    """The stale run records under ``results_dir``: of a variant its paper no longer
    declares."""
    root = Path(results_dir)
    return [path for path in _layout_paths(root, papers) if not _declared(path, root)]
