"""``nfbench plan --gpus N``: how many device-hours a profile costs, before anything starts.

The cost model is data (``benchmarks/cost.yaml``): per method a published timing and how it
scales with training images, input size, epochs and width. Records already on disk refine
it: a run with a record counts its own measured fit + score seconds, and the median ratio of
measured to modelled seconds over a method's records rescales that method's other runs. Wall
time on N GPUs schedules the runs longest first onto the least loaded GPU (one run per GPU
at a time).
"""

from __future__ import annotations

import heapq
import json
import math
import statistics
from pathlib import Path
from typing import Any

import yaml

from nfbench.datasets import images_per_category
from nfbench.errors import UserError
from nfbench.paths import config_root


def load_cost_model(path: Path | None = None) -> dict[str, Any]:
    path = Path(path) if path is not None else config_root() / "benchmarks" / "cost.yaml"
    if not path.is_file():
        raise UserError(f"no cost model {path}")
    return yaml.safe_load(path.read_text())


def _product(config: dict, fields: list) -> float:
    """prod over ``fields`` (a nested list sums its fields) of the config's values."""
    value = 1.0
    for field in fields:
        if isinstance(field, list):
            value *= sum(float(config.get(f) or 0) for f in field)
        else:
            value *= float(config.get(field) or 0)
    return value


def run_seconds(model: dict[str, Any], method: str, config: dict[str, Any],
                dataset: str, joint_categories: int = 0) -> float:
    """Modelled device-seconds (reference device) of one run."""
    entry = model["methods"].get(method)
    if entry is None:
        raise UserError(f"benchmarks/cost.yaml has no cost model for method {method!r}")
    n_train, n_test = images_per_category(dataset)  # the dataset registry's counts
    if joint_categories:  # one model on every category's images, each test set scored
        n_train, n_test = n_train * joint_categories, n_test * joint_categories
    ref = entry["ref"]
    area = (float(config.get("input_size") or ref["input_size"]) / ref["input_size"]) ** 2
    epochs = _product(config, entry["fields"]["epochs"]) / _product(
        dict(zip(map(str, range(len(ref["epochs"]))), ref["epochs"])),
        [str(i) for i in range(len(ref["epochs"]))]) if entry["fields"]["epochs"] else 1.0
    width_field = entry["fields"].get("width")
    width = (float(config.get(width_field) or ref["width"]) / ref["width"]) if width_field else 1.0
    fit = entry["fit_seconds"] * n_train / ref["n_train"] * epochs * area \
        * width ** entry.get("width_exponent", 1.0)
    if entry.get("extra"):
        extra = entry["extra"]
        ref_passes = math.prod(extra["ref_epochs"])
        fit += extra["fit_seconds"] * n_train / ref["n_train"] * area \
            * _product(config, extra["fields"]) / ref_passes
    score = n_test / entry["score_fps"] * area if entry.get("score_fps") else 0.0
    return fit + score


def _measured(path: Path, profile: str) -> float | None:
    """Fit + score seconds of the record at ``path`` if it was made under ``profile``."""
    try:
        record = json.loads(path.read_text())
        if record.get("profile") != profile:
            return None
        timing = record["timing"]
        return float(timing["fit_seconds"]) + float(timing.get("score_seconds", 0.0))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def wall_seconds(durations: list[float], gpus: int) -> float:
    """Makespan of ``durations`` on ``gpus`` devices, longest first onto the least loaded."""
    loads = [0.0] * max(1, gpus)
    for duration in sorted(durations, reverse=True):
        heapq.heapreplace(loads, loads[0] + duration)
    return max(loads)


def estimate(runs, model: dict[str, Any], results: Path | None) -> tuple[list[float], dict]:
    """Per-run seconds (measured where a record exists, else modelled and calibrated) and,
    per method, how many records calibrated it."""
    from nfbench.pipeline.identity import resolved_config

    modelled, measured = [], []
    for run in runs:
        config = resolved_config(run)
        modelled.append(run_seconds(model, run.method, config, run.dataset,
                                    len(run.joint_categories) if run.joint else 0))
        path = Path(results) / run.record_path if results is not None else None
        measured.append(_measured(path, run.profile) if path is not None and path.is_file() else None)
    ratios: dict[str, list[float]] = {}
    for run, s, m in zip(runs, modelled, measured):
        if m is not None and s > 0:
            ratios.setdefault(run.method, []).append(m / s)
    factor = {method: statistics.median(r) for method, r in ratios.items()}
    seconds = [m if m is not None else s * factor.get(run.method, 1.0)
               for run, s, m in zip(runs, modelled, measured)]
    return seconds, {method: len(r) for method, r in ratios.items()}


def plan_table(profile: str, params: dict[str, Any], gpus: int = 1,
               results: Path | None = Path("results"), papers: list[str] | None = None,
               model: dict[str, Any] | None = None) -> str:
    """The estimate table: per paper and table, runs, device-hours, wall hours on ``gpus``."""
    from nfbench.pipeline.plan import expand_runs
    from nfbench.pipeline.spec import load_spec
    from nfbench.pipeline.spec import papers as all_papers

    model = model or load_cost_model()
    papers = papers or [p for p in all_papers() if p in params]
    lines = [f"Estimate for profile {profile} on {gpus} GPU(s), in {model['reference_device']}"
             f"-equivalent device-hours (cost model: benchmarks/cost.yaml)",
             f"{'paper':10s} {'table':14s} {'runs':>5s} {'device-h':>9s} "
             f"{'wall-h on ' + str(gpus):>12s}"]
    total_runs, total_seconds, all_seconds, calibrated = 0, 0.0, [], {}
    for paper in papers:
        spec = load_spec(paper)
        runs = expand_runs(paper, profile, params)
        seconds, used = estimate(runs, model, results)
        for method, count in used.items():
            calibrated[method] = calibrated.get(method, 0) + count
        by_variant: dict[str, list[float]] = {}
        for run, s in zip(runs, seconds):
            by_variant.setdefault(run.variant, []).append(s)
        for table_id, table in spec.tables.items():
            if not table.reproducible:
                continue
            durations = [s for v in table.variants for s in by_variant.get(v, [])]
            if not durations:
                continue
            lines.append(f"{paper:10s} {table_id:14s} {len(durations):5d} "
                         f"{sum(durations) / 3600:9.1f} {wall_seconds(durations, gpus) / 3600:12.1f}")
        lines.append(f"{paper:10s} {'(all runs)':14s} {len(runs):5d} {sum(seconds) / 3600:9.1f} "
                     f"{wall_seconds(seconds, gpus) / 3600:12.1f}")
        total_runs += len(runs)
        total_seconds += sum(seconds)
        all_seconds += seconds
    lines.append(f"{'total':10s} {'':14s} {total_runs:5d} {total_seconds / 3600:9.1f} "
                 f"{wall_seconds(all_seconds, gpus) / 3600:12.1f}")
    lines.append("A run shared by several tables counts in each table, once in (all runs).")
    lines.append("Where the numbers come from:")
    methods = sorted({m for p in papers for m in _methods(p)})
    for method in methods:
        entry = model["methods"].get(method, {})
        note = (f" calibrated from {calibrated[method]} record(s) on disk"
                if calibrated.get(method) else " (no record on disk to calibrate it)")
        lines.append(f"  {method}: {entry.get('source', '?')};{note}")
    return "\n".join(lines)


def _methods(paper: str) -> set[str]:
    from nfbench.pipeline.spec import load_spec

    return load_spec(paper).methods
