"""The regression check: fresh result records against a committed baseline.

A baseline (``benchmarks/baselines/<profile>.json``) holds, per run id, the metrics of a
trusted run, and a tolerance per metric. A run regresses when a metric falls below its
baseline by more than the tolerance; a baseline run missing from the results is reported apart
(a missing record is not a regression: ``nfbench check`` exits 1 on a regression, 3 when
records are only missing); a run in the results that the baseline does not know is reported
as a hint (not a failure). Records are found as every consumer finds them
(:func:`nfbench.pipeline.record.record_paths`): a record of a variant its paper no longer
declares is stale, neither compared nor merged, and named as such.

Every input is checked before anything is compared: an unknown ``--paper`` (a typo would
filter every run away and pass), two records with one ``run_id``, a metric that is not a
finite number in [0, 1] (every metric of the suite is an AUROC, AUPR, PRO or F1) and a
tolerance that is not a finite number in [0, 1] are each one error line.

``--update`` merges: it replaces exactly the baseline entries it has fresh records for
(restricted to ``--paper`` when given), keeps every other entry and every metric, and writes
the baseline atomically; with ``--prune`` it drops instead the entries without a record (of
the papers checked): the runs a smaller profile no longer makes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from nfbench.atomic import write_text_atomic
from nfbench.errors import UserError

DEFAULT_TOLERANCE = {"image_auroc": 0.02, "pixel_auroc": 0.02, "aupro": 0.03}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _in_unit_range(value) -> bool:
    """A finite number in [0, 1] (NaN and infinities fail both comparisons or the second)."""
    return _is_number(value) and 0.0 <= value <= 1.0


def _check_metrics(metrics, where: str) -> dict:
    if not isinstance(metrics, dict):
        raise UserError(f"{where}: metrics must be an object of name: number, got "
                        f"{type(metrics).__name__}")
    for name, value in metrics.items():
        if value is not None and not _is_number(value):
            raise UserError(f"{where}: metric {name!r} must be a number or null, got {value!r}")
        if value is not None and not _in_unit_range(value):
            raise UserError(f"{where}: metric {name!r} must be a finite number in [0, 1] or "
                            f"null, got {value!r}")
    return metrics


def collect(results_dir: Path, papers: list[str] | None = None) -> dict[str, dict[str, float]]:
    """``run_id → metrics`` of every record under ``results_dir/<paper>/runs`` but the stale
    ones (:func:`nfbench.pipeline.record.record_paths`)."""
    from nfbench.pipeline.record import read_record, record_paths

    found, where = {}, {}
    for path in record_paths(results_dir):  # stale records (removed variants) left out
        record = read_record(path)
        # a record without "paper" belongs to the paper its run id names
        if papers and (record.get("paper") or str(record.get("run_id", "")).split("/")[0]) \
                not in papers:
            continue
        if not isinstance(record.get("run_id"), str):
            raise UserError(f"result record {path} has no run_id")
        if "metrics" not in record:
            raise UserError(f"result record {path} has no metrics")
        if record["run_id"] in found:
            raise UserError(f"two result records carry run_id {record['run_id']!r}: "
                            f"{where[record['run_id']]} and {path}")
        where[record["run_id"]] = path
        found[record["run_id"]] = _check_metrics(record["metrics"], f"result record {path}")
    return found


def load_baseline(path: Path) -> dict:
    """A validated baseline: ``{"runs": {run_id: {metric: number|null}}, "tolerance": {...}}``."""
    from nfbench.pipeline.record import read_record

    baseline = read_record(path, "baseline")
    if not isinstance(baseline, dict):
        raise UserError(f"baseline {path} must be a JSON object with 'runs', got "
                        f"{type(baseline).__name__}")
    if not isinstance(baseline.get("runs"), dict):
        raise UserError(f"baseline {path} has no 'runs' object")
    for run_id, metrics in baseline["runs"].items():
        _check_metrics(metrics, f"baseline {path}, run {run_id}")
    tolerance = baseline.get("tolerance", {})
    if not isinstance(tolerance, dict) or not all(_is_number(v) for v in tolerance.values()):
        raise UserError(f"baseline {path}: 'tolerance' must map metric names to numbers")
    for name, value in tolerance.items():
        if not _in_unit_range(value):
            raise UserError(f"baseline {path}: tolerance of {name!r} must be a finite number "
                            f"in [0, 1], got {value!r}")
    return baseline


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def missing_runs(baseline: dict, fresh: dict[str, dict[str, float]]) -> list[str]:
    """The baseline's run ids that have no fresh record (reported apart from regressions)."""
    return sorted(set(baseline["runs"]) - set(fresh))


def compare(baseline: dict, fresh: dict[str, dict[str, float]], exact: bool = False) -> list[str]:
    """One message per regression (empty = pass) among the baseline runs that have a fresh
    record (:func:`missing_runs` lists the others). ``exact``: every metric the baseline
    holds must be reproduced to the last digit, either way (a refactor's check: same code
    path, same machine and thread count), not merely within the tolerance below."""
    tolerance = {**DEFAULT_TOLERANCE, **baseline.get("tolerance", {})}
    problems = []
    for run_id, expected in sorted(baseline["runs"].items()):
        if run_id not in fresh:
            continue
        if exact:
            problems += [f"{run_id}: {metric} {fresh[run_id].get(metric)!r} != baseline {value!r}"
                         for metric, value in sorted(expected.items())
                         if fresh[run_id].get(metric) != value
                         and not (_missing(value) and _missing(fresh[run_id].get(metric)))]
            continue
        for metric, allowed in tolerance.items():
            if _missing(expected.get(metric)):
                continue
            value = fresh[run_id].get(metric)
            if _missing(value):
                problems.append(f"{run_id}: {metric} is undefined, baseline "
                                f"{expected[metric]:.4f}")
            elif value < expected[metric] - allowed:
                problems.append(f"{run_id}: {metric} {value:.4f} < baseline "
                                f"{expected[metric]:.4f} - {allowed}")
    return problems


@dataclass
class CheckResult:
    """What :func:`check` found: regressions, baseline runs without a fresh record, runs the
    baseline does not know, and for an update the run ids added, replaced and kept."""

    problems: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)


def known_papers_only(papers: list[str] | None) -> None:
    """Refuse a ``--paper`` filter naming no paper of ``benchmarks/`` (a typo would filter
    every run away and report nothing wrong)."""
    from nfbench.pipeline.spec import papers as known_papers

    unknown = [p for p in papers or [] if p not in known_papers()]
    if unknown:
        raise UserError(f"unknown paper(s) {', '.join(map(repr, unknown))}; known: "
                        f"{', '.join(known_papers())}")


def _paper_of(run_id: str) -> str:
    return run_id.split("/")[0]


def check(baseline_path: Path, results_dir: Path, update: bool = False,
          papers: list[str] | None = None, exact: bool = False,
          prune: bool = False) -> CheckResult:
    """Compare fresh records with the baseline (``exact``: to the last digit), or with
    ``update`` merge them into it (``prune``: dropping the entries without a record)."""
    baseline_path = Path(baseline_path)
    known_papers_only(papers)
    if update:
        from nfbench.atomic import check_output_file

        check_output_file(baseline_path, "--baseline")  # a folder, or a path under a file
    fresh = collect(results_dir, papers)
    from nfbench.pipeline.record import stale_record_paths

    stale = [str(p) for p in stale_record_paths(results_dir, papers)]
    if papers:  # a record without "paper" still belongs to the paper its run id names
        fresh = {k: v for k, v in fresh.items() if _paper_of(k) in papers}
    result = CheckResult(stale=stale)
    if update:
        if not fresh:
            raise UserError(f"no result records under {results_dir} to make a baseline from")
        old = load_baseline(baseline_path) if baseline_path.is_file() else \
            {"tolerance": dict(DEFAULT_TOLERANCE), "runs": {}}
        tracked = {**DEFAULT_TOLERANCE, **old.get("tolerance", {})}
        runs = dict(old["runs"])
        for run_id, metrics in sorted(fresh.items()):
            entry = dict(runs.get(run_id, {}))
            wanted = set(tracked) | set(entry)
            entry.update({m: None if _missing(metrics[m]) else metrics[m]
                          for m in wanted if m in metrics})
            (result.replaced if run_id in runs else result.added).append(run_id)
            runs[run_id] = entry
        without = sorted(set(runs) - set(fresh))
        if prune:  # of the papers checked only: --paper leaves the others' entries alone
            result.pruned = [k for k in without if not papers or _paper_of(k) in papers]
            for run_id in result.pruned:
                del runs[run_id]
        result.kept = sorted(set(runs) - set(fresh))
        new = {k: v for k, v in old.items() if k != "runs"}
        new["runs"] = runs
        write_text_atomic(baseline_path, json.dumps(new, indent=2, sort_keys=True) + "\n")
        return result
    if not baseline_path.is_file():
        raise UserError(f"no baseline {baseline_path}; create it with --update")
    baseline = load_baseline(baseline_path)
    if papers:
        baseline["runs"] = {k: v for k, v in baseline["runs"].items() if _paper_of(k) in papers}
    result.problems = compare(baseline, fresh, exact)
    result.missing = missing_runs(baseline, fresh)
    result.unknown = sorted(set(fresh) - set(baseline["runs"]))
    return result


def run_check(baseline_path: Path, results_dir: Path, update: bool = False,
              papers: list[str] | None = None) -> list[str]:
    """Compare (or, with ``update``, merge into the baseline); returns the regressions and
    the missing records (each ``<run_id>: no fresh result``)."""
    result = check(baseline_path, results_dir, update, papers)
    return result.problems + [f"{run_id}: no fresh result" for run_id in result.missing]
