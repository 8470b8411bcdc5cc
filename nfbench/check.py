"""The regression check: fresh result records against a committed baseline.

A baseline (``benchmarks/baselines/<profile>.json``) holds, per run id, the metrics of a
trusted run, and a tolerance per metric. A run regresses when a metric falls below its
baseline by more than the tolerance; a run missing from the results is a failure too.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from nfbench.errors import UserError

DEFAULT_TOLERANCE = {"image_auroc": 0.02, "pixel_auroc": 0.02, "aupro": 0.03}


def collect(results_dir: Path, papers: list[str] | None = None) -> dict[str, dict[str, float]]:
    """``run_id → metrics`` of every record under ``results_dir/<paper>/runs``."""
    found = {}
    for path in sorted(Path(results_dir).glob("*/runs/*/*/seed*.json")):
        record = json.loads(path.read_text())
        if papers and record.get("paper") not in papers:
            continue
        found[record["run_id"]] = record["metrics"]
    return found


def compare(baseline: dict, fresh: dict[str, dict[str, float]]) -> list[str]:
    """One message per regression (empty = pass)."""
    tolerance = {**DEFAULT_TOLERANCE, **baseline.get("tolerance", {})}
    problems = []
    for run_id, expected in sorted(baseline["runs"].items()):
        if run_id not in fresh:
            problems.append(f"{run_id}: no fresh result")
            continue
        for metric, allowed in tolerance.items():
            if metric not in expected or expected[metric] is None or math.isnan(expected[metric]):
                continue
            value = fresh[run_id].get(metric, float("nan"))
            if math.isnan(value) or value < expected[metric] - allowed:
                problems.append(f"{run_id}: {metric} {value:.4f} < baseline "
                                f"{expected[metric]:.4f} - {allowed}")
    return problems


def run_check(baseline_path: Path, results_dir: Path, update: bool = False,
              papers: list[str] | None = None) -> list[str]:
    """Compare (or, with ``update``, rewrite the baseline); returns the regressions."""
    fresh = collect(results_dir, papers)
    if update:
        if not fresh:
            raise UserError(f"no result records under {results_dir} to make a baseline from")
        old = json.loads(Path(baseline_path).read_text()) if Path(baseline_path).is_file() else {}
        tolerance = old.get("tolerance", DEFAULT_TOLERANCE)
        runs = {run_id: {m: metrics[m] for m in tolerance if m in metrics}
                for run_id, metrics in fresh.items()}
        Path(baseline_path).parent.mkdir(parents=True, exist_ok=True)
        Path(baseline_path).write_text(json.dumps({"tolerance": tolerance, "runs": runs},
                                                  indent=2, sort_keys=True) + "\n")
        return []
    if not Path(baseline_path).is_file():
        raise UserError(f"no baseline {baseline_path}; create it with --update")
    baseline = json.loads(Path(baseline_path).read_text())
    if papers:
        baseline["runs"] = {k: v for k, v in baseline["runs"].items() if k.split("/")[0] in papers}
    return compare(baseline, fresh)
