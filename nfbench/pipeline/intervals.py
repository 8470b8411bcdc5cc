"""Intervals of table cells from run records (:mod:`nfbench.metrics.uncertainty`).

A cell (a variant, a metric, the categories it averages, every seed) gets its per-seed
values and, where the records have them, the paired bootstrap replicates of each: the
record's ``bootstrap`` (written when the run was scored), or, for image AUROC of a record
made before records carried one, replicates recomputed from the per-image scores and labels
of the NPZ beside the record (the same resamples: they depend only on the labels).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from nfbench.metrics import uncertainty
from nfbench.pipeline.record import metric_value


@functools.lru_cache(maxsize=4096)
def _npz_image_replicates(path: str) -> np.ndarray | None:
    """Image AUROC replicates from a record's NPZ (per-image labels and scores), or None."""
    if not Path(path).is_file():
        return None
    with np.load(path) as e:
        if "labels" not in e or "image_scores" not in e:
            return None
        labels, scores = e["labels"], e["image_scores"]
    if labels.min() == labels.max():
        return None
    return uncertainty.image_auroc_replicates(labels, scores)


def record_replicates(record: dict, metric: str, npz: Path | None = None) -> np.ndarray | None:
    """Bootstrap replicates of ``record``'s ``metric`` (its test set, or for a joint run the
    mean over its categories), or None where neither the record nor its NPZ allow them."""
    reps = ((record.get("bootstrap") or {}).get("replicates") or {}).get(metric)
    if reps is not None:
        return np.asarray(reps, dtype=np.float64)
    if metric == "image_auroc" and record.get("category") != "all" and npz is not None:
        return _npz_image_replicates(str(npz))
    return None


def cell_samples(records: dict, paths: dict, variant: str, members: list[str], metric: str,
                 seeds: list[int], value=None) -> tuple[list[float], np.ndarray | None]:
    """Per-seed values (categories averaged within a seed, as :func:`tables._cell`) and
    replicates ``[k, B]`` (None if any part lacks them) of one cell. ``records`` and ``paths``
    are keyed by (variant, category, seed); ``value`` as in :func:`tables.build_tables`
    (companion tables: no replicates)."""
    points, reps = [], []
    for seed in seeds:
        joint = records.get((variant, "all", seed))
        if joint is not None:
            covers = set(members) == set(joint.get("per_category", {}))
            values = [metric_value(joint, metric, c) for c in members]
            rep = record_replicates(joint, metric) if covers and value is None else None
        else:
            found = [(c, records.get((variant, c, seed))) for c in members]
            found = [(c, r) for c, r in found if r is not None]
            if not found:
                continue
            values = [metric_value(r, metric, c) if value is None else value(r, metric, c, variant)
                      for c, r in found]
            parts = [record_replicates(r, metric, paths.get((variant, c, seed)))
                     if value is None else None for c, r in found]
            rep = None if any(p is None for p in parts) or len(found) < len(members) \
                else np.mean(parts, axis=0)
        points.append(float(np.mean(values)))
        reps.append(rep)
    joint_reps = None if not reps or any(r is None for r in reps) else np.stack(reps)
    return points, joint_reps


def cell_interval(records: dict, paths: dict, variant: str, members: list[str], metric: str,
                  seeds: list[int], value=None) -> uncertainty.Interval:
    """The 95 % interval of one cell, in % (like the tables)."""
    points, reps = cell_samples(records, paths, variant, members, metric, seeds, value)
    return uncertainty.interval(points, reps).scaled(100.0)


def cell_difference(records: dict, paths: dict, a: str, b: str, members: list[str],
                    metric: str, seeds: list[int]) -> uncertainty.Interval:
    """The 95 % interval of cell(a) − cell(b), in %: paired over the same test images."""
    pa, ra = cell_samples(records, paths, a, members, metric, seeds)
    pb, rb = cell_samples(records, paths, b, members, metric, seeds)
    if not pa or not pb:
        nan = float("nan")
        return uncertainty.Interval(nan, nan, nan, 0, 0)
    return uncertainty.difference(pa, ra, pb, rb).scaled(100.0)
