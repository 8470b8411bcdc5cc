"""``nfbench plan --gpus N --device-kind K``: a profile's cost from first principles.

Each run's FLOPs come from the code's own networks (:mod:`nfbench.pipeline.flops`: forward
and backward of what trains, per variant and per category schedule; the frozen extractor
once per cached feature set; a shared trained stage once, whichever run needs it first; the
``peers`` stage's anomalib runs included). The FLOP ideal is FLOPs / the device kind's peak
at the runs' precision (``benchmarks/cost.yaml`` ``devices``), the estimate is ideal /
efficiency, the share of peak a method reaches (``efficiency``: assumed defaults, replaced
by the median over records made on that device kind of ideal / measured seconds, protocol
time included). Wall hours on N GPUs schedule the runs longest first onto the least loaded
GPU (:func:`nfbench.pipeline.cost.wall_seconds`).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from nfbench.datasets import images_per_category
from nfbench.errors import UserError
from nfbench.pipeline.cost import load_cost_model, wall_seconds
from nfbench.pipeline.flops import _category_config, run_items

PRECISIONS = ("fp32", "tf32", "bf16")


def device_kinds(model: dict[str, Any] | None = None) -> list[str]:
    return list((model or load_cost_model())["devices"])


def _counts(model: dict, dataset: str, run) -> tuple[int, int]:
    n_train, n_test = images_per_category(dataset)  # the dataset registry's counts
    if run is not None and getattr(run, "joint", False):
        n_train, n_test = n_train * len(run.joint_categories), n_test * len(run.joint_categories)
    if run is not None and run.shots:
        n_train = min(n_train, int(run.shots))
    return n_train, n_test


def _measured_seconds(path: Path, profile: str, gpu_names: list[str]) -> float | None:
    """Fit + score + protocol seconds of the record at ``path`` if it was made under
    ``profile`` on a GPU whose name contains one of ``gpu_names``."""
    try:
        record = json.loads(path.read_text())
        gpu = str((record.get("environment") or {}).get("gpu") or "")
        if record.get("profile") != profile or not any(n in gpu for n in gpu_names):
            return None
        timing = record["timing"]
        return sum(float(timing.get(k) or 0.0)
                   for k in ("fit_seconds", "score_seconds", "protocol_seconds"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _work(profile: str, params: dict, papers: list[str], model: dict) -> list[dict[str, Any]]:
    """Every unit of work of the profile: the runs of ``papers`` and the peers stage, each
    with its method, precision, own FLOPs (all its items) and attributed FLOPs (items no
    earlier unit claimed)."""
    from nfbench.pipeline.identity import resolved_config
    from nfbench.pipeline.plan import expand_runs

    units, seen = [], set()

    def add(unit: dict, items: list) -> None:
        unit["own_flops"] = sum(f for _, _, f in items)
        fresh = [(k, f) for _, k, f in items if k not in seen]
        seen.update(k for k, _ in fresh)
        unit["flops"] = sum(f for _, f in fresh)
        units.append(unit)

    for paper in papers:
        for run in sorted(expand_runs(paper, profile, params), key=lambda r: r.run_id):
            config = _category_config(resolved_config(run), run.category)
            n_train, n_test = _counts(model, run.dataset, run)
            data = (run.dataset, run.root or "", run.category, run.joint_categories,
                    run.shots or 0)
            add({"paper": paper, "variant": run.variant, "method": run.method, "run": run,
                 "precision": config.get("precision", "fp32")},
                run_items(run.method, config, data, n_train, n_test, run.seed))
    for unit, items in _peer_items(profile, params, model):
        add(unit, items)
    return units


def _peer_items(profile: str, params: dict, model: dict):
    """The peers stage (params.yaml ``peers:``): anomalib's model trained on our run's cached
    features with our run's input size, budget and passes, so counted as our variant's
    network (anomalib's flows are built from the same paper architecture)."""
    from nfbench.methods.base import config_to_dict
    from nfbench.peers.common import ours, stage_runs

    for peer in stage_runs(profile, params):
        config, _ = ours(peer["method"], profile, peer["category"], params)
        config = config_to_dict(config)
        n_train, n_test = images_per_category(peer["dataset"])
        data = (peer["dataset"], peer["root"] or "", peer["category"], (), 0)
        items = [(kind, key if kind == "features" else f"peer {peer['config']} {key}", f)
                 for kind, key, f in run_items(peer["method"], config, data, n_train, n_test,
                                               peer["seed"])]
        yield ({"paper": "peers", "variant": f"{peer['method']}:{peer['config']}",
                "method": "peers", "run": None, "precision": config.get("precision", "fp32")},
               items)


def estimate_profile(profile: str, params: dict[str, Any], gpus: int = 1,
                     device_kind: str = "rtx2080ti", precision: str | None = None,
                     results: Path | None = Path("results"), papers: list[str] | None = None,
                     model: dict[str, Any] | None = None) -> dict[str, Any]:
    """The estimate as a dict: per paper (and ``peers``) and table ``runs``, ``flops``,
    ``ideal_hours``, ``estimate_hours``, ``wall_hours``; ``total``; the assumptions used."""
    from nfbench.pipeline.spec import load_spec
    from nfbench.pipeline.spec import papers as all_papers

    model = model or load_cost_model()
    if gpus < 1:
        raise UserError(f"--gpus must be at least 1, got {gpus}")
    if device_kind not in model["devices"]:
        raise UserError(f"unknown device kind {device_kind!r}; benchmarks/cost.yaml declares: "
                        f"{', '.join(model['devices'])}")
    if precision is not None and precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; one of {', '.join(PRECISIONS)}")
    device = model["devices"][device_kind]
    papers = papers or [p for p in all_papers() if p in params]
    units = _work(profile, params, papers, model)
    for unit in units:
        unit["peak"] = float(device[precision or unit["precision"]]) * 1e12
        unit["ideal_s"] = unit["flops"] / unit["peak"]
    efficiency, calibrated = _efficiencies(units, model, device, profile, results)
    for unit in units:
        unit["estimate_s"] = unit["ideal_s"] / efficiency[unit["method"]]

    def summary(group: list[dict]) -> dict[str, Any]:
        return {"runs": len(group), "flops": sum(u["flops"] for u in group),
                "ideal_hours": sum(u["ideal_s"] for u in group) / 3600,
                "estimate_hours": sum(u["estimate_s"] for u in group) / 3600,
                "wall_hours": wall_seconds([u["estimate_s"] for u in group], gpus) / 3600}

    out: dict[str, Any] = {"profile": profile, "gpus": gpus, "device_kind": device_kind,
                           "device": device["name"], "precision": precision or "as configured",
                           "papers": {}}
    for paper in papers + ["peers"]:
        group = [u for u in units if u["paper"] == paper]
        if not group:
            continue
        entry = summary(group)
        if paper != "peers":
            entry["tables"] = {}
            for table_id, table in load_spec(paper).tables.items():
                members = [u for u in group if u["variant"] in table.variants]
                if table.reproducible and members:
                    entry["tables"][table_id] = summary(members)
        out["papers"][paper] = entry
    out["total"] = summary(units)
    out["efficiency"] = {m: {"value": e, "records": calibrated.get(m, 0)}
                         for m, e in sorted(efficiency.items())}
    return out


def _efficiencies(units: list[dict], model: dict, device: dict, profile: str,
                  results: Path | None) -> tuple[dict[str, float], dict[str, int]]:
    """Per method the efficiency: the median of own ideal / measured seconds over records of
    this device kind, else the assumed default of ``benchmarks/cost.yaml``."""
    ratios: dict[str, list[float]] = {}
    for unit in units:
        run = unit["run"]
        if run is None or results is None:
            continue
        path = Path(results) / run.record_path
        measured = _measured_seconds(path, profile, device.get("gpu_names", [device["name"]])) \
            if path.is_file() else None
        if measured:
            ratios.setdefault(unit["method"], []).append(
                unit["own_flops"] / unit["peak"] / measured)
    efficiency = {m: float(model["efficiency"].get(m, 0.3)) for m in {u["method"] for u in units}}
    efficiency.update({m: statistics.median(r) for m, r in ratios.items()})
    return efficiency, {m: len(r) for m, r in ratios.items()}


def format_estimate(estimate: dict[str, Any]) -> str:
    """The estimate as a table: per paper × table, runs, PFLOP, ideal, estimate and wall hours."""
    gpus = estimate["gpus"]
    lines = [f"Estimate for profile {estimate['profile']} on {gpus} x {estimate['device']} "
             f"({estimate['device_kind']}), precision {estimate['precision']}: FLOPs counted "
             "from the code's networks (forward + backward of what trains), ideal = FLOPs / "
             "peak, estimate = ideal / efficiency (benchmarks/cost.yaml)",
             f"{'paper':10s} {'table':14s} {'runs':>5s} {'PFLOP':>9s} {'ideal-h':>8s} "
             f"{'estimate-h':>10s} {'wall-h on ' + str(gpus):>12s}"]

    def row(paper: str, table: str, s: dict) -> str:
        return (f"{paper:10s} {table:14s} {s['runs']:5d} {s['flops'] / 1e15:9.1f} "
                f"{s['ideal_hours']:8.1f} {s['estimate_hours']:10.1f} {s['wall_hours']:12.1f}")

    for paper, entry in estimate["papers"].items():
        for table_id, table in entry.get("tables", {}).items():
            lines.append(row(paper, table_id, table))
        lines.append(row(paper, "(all runs)", entry))
    lines.append(row("total", "", estimate["total"]))
    lines.append("Shared work (cached features, shared trained stages) counts once, in the "
                 "first run needing it; a run in several tables counts in each table.")
    lines.append("Efficiency (share of peak, protocol included): " + ", ".join(
        f"{m} {e['value']:.2f}" + (f" (from {e['records']} record(s))" if e["records"]
                                   else " (assumed)")
        for m, e in estimate["efficiency"].items()))
    return "\n".join(lines)
