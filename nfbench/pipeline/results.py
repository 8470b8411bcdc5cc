"""Every run record as one tidy pandas DataFrame, for notebooks and ad-hoc analysis.

One row per run record under ``<results>/<paper>/runs/<variant>/<category>/seed<k>.json``
(records of a variant the paper no longer declares are stale and left out, as in the tables
and ``nfbench check``: :mod:`nfbench.pipeline.record`):
what identifies the run (paper, method, variant, dataset, category, seed, profile), the
settings that differ from the method's paper defaults, every metric, the timing and the
environment that made it. The reports are built from the same records, so any report table
can be rebuilt from this frame::

    from nfbench.pipeline import results
    runs = results.load("results")
    runs.query("paper == 'csflow' and variant == 'full'").groupby("category").image_auroc.mean()
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from nfbench.errors import UserError

#: Columns that come first, in this order; metrics, timing and environment follow.
ID_COLUMNS = ("paper", "method", "variant", "dataset", "category", "seed", "profile", "run_id")


def record_paths(results_dir: Path | str, papers: Iterable[str] | None = None) -> list[Path]:
    """The run-record files under ``results_dir`` (optionally of some ``papers`` only), as
    every consumer finds them (:func:`nfbench.pipeline.record.record_paths`: records of a
    variant no longer declared are stale and left out)."""
    from nfbench.pipeline.record import record_paths as found

    return found(results_dir, papers)


def changed_settings(method: str, config: dict[str, Any]) -> dict[str, Any]:
    """The entries of a record's resolved ``config`` that differ from the method's paper
    defaults (its ``Config`` dataclass): what this run changed, profile budget included."""
    from nfbench.methods import method_class
    from nfbench.methods.base import config_to_dict

    try:
        defaults = config_to_dict(method_class(method).Config())
    except UserError:  # a record of a method this installation does not have
        return dict(config)
    return {key: value for key, value in config.items() if defaults.get(key, object()) != value}


def record_row(record: dict[str, Any]) -> dict[str, Any]:
    """One tidy row of a run record (see the module docstring)."""
    row = {key: record.get(key) for key in ID_COLUMNS}
    row["settings"] = changed_settings(record["method"], record.get("config", {}))
    row.update({key: value for key, value in record.get("metrics", {}).items()})
    timing = record.get("timing", {})
    row.update({key: timing.get(key) for key in
                ("fit_seconds", "score_seconds", "wall_seconds", "images_per_second", "device")})
    environment = record.get("environment", {})
    row.update({key: environment.get(key) for key in
                ("git_commit", "torch", "cpu_threads", "gpu", "platform")})
    row["created"] = record.get("created")
    return row


def load(results_dir: Path | str = "results", papers: Iterable[str] | None = None) -> pd.DataFrame:
    """Every run record under ``results_dir`` as one DataFrame, one row per run (empty frame
    with the identifying columns when there is none)."""
    rows = []
    for path in record_paths(results_dir, papers):
        try:
            rows.append(record_row(json.loads(path.read_text())))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # incl. bad UTF-8
            raise UserError(f"{path}: not a run record ({exc})") from None
        except RecursionError:
            raise UserError(f"{path}: not a run record (nested too deeply)") from None
        except OSError as exc:
            raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not rows:
        return pd.DataFrame(columns=[*ID_COLUMNS, "settings"])
    return pd.DataFrame(rows).sort_values(["paper", "variant", "category", "seed"],
                                          ignore_index=True)


def flatten_settings(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its ``settings`` dicts spread into one ``setting.<key>`` column per
    setting any run changed (empty where a run keeps the paper default; lists and dicts as
    compact JSON), in place of the ``settings`` column: a spreadsheet filters on them."""
    frame = frame.copy()
    settings = frame.pop("settings") if "settings" in frame else pd.Series(dtype=object)
    keys = sorted({key for s in settings for key in (s or {})})
    cell = lambda v: json.dumps(v, sort_keys=True) if isinstance(v, (list, dict, tuple)) else v
    for key in keys:
        frame[f"setting.{key}"] = [cell((s or {}).get(key)) for s in settings]
    return frame


def to_csv(frame: pd.DataFrame, out) -> None:
    """Write ``frame`` as CSV, its settings flattened (:func:`flatten_settings`)."""
    frame = flatten_settings(frame)
    if isinstance(out, (str, Path)):  # a file: written whole or not at all
        from nfbench.atomic import atomic_path

        with atomic_path(out) as tmp:
            frame.to_csv(tmp, index=False)
        return
    frame.to_csv(out, index=False)
