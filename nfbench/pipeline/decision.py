"""Image-level decisions at a threshold chosen without test labels: PatchFlow's Table 2 kind.

PatchFlow's Table 2 is a confusion matrix on proprietary valve-body images. The suite makes the
same kind of table for any folder in MVTec AD layout: fit on part of the normal training
images, score the held-out rest, and put the threshold at a quantile of those held-out normal
scores (default: their maximum, i.e. every held-out normal image is called normal). The test
labels are used only to count the matrix, never to choose the threshold.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from nfbench.datasets import image_sets
from nfbench.errors import UserError
from nfbench.methods.base import seed_everything


def holdout_split(n: int, holdout: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (fit, held out) of ``n`` normal training images; at least one of each."""
    if not 0 < holdout < 1:
        raise UserError(f"--holdout must be in (0, 1), got {holdout}")
    n_held = int(round(n * holdout))
    if n < 2 or not 1 <= n_held < n:
        raise UserError(f"cannot hold out {holdout:.0%} of {n} training images: need at least "
                        "one image to fit on and one to set the threshold")
    order = np.random.default_rng(seed).permutation(n)
    return sorted(order[n_held:].tolist()), sorted(order[:n_held].tolist())


def threshold_from_normals(normal_scores: np.ndarray, quantile: float) -> float:
    """The ``quantile`` of held-out normal image scores (1.0 = their maximum)."""
    if not 0 < quantile <= 1:
        raise UserError(f"--quantile must be in (0, 1], got {quantile}")
    return float(np.quantile(np.asarray(normal_scores, dtype=np.float64), quantile))


def confusion(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """Confusion matrix (score > threshold = predicted anomalous), accuracy and F1 with either
    class as the positive one (PatchFlow's 95.77 % F1 takes the normal class as positive)."""
    labels = np.asarray(labels).astype(bool)
    predicted = np.asarray(scores) > threshold
    tp, fn = int(np.sum(predicted & labels)), int(np.sum(~predicted & labels))
    fp, tn = int(np.sum(predicted & ~labels)), int(np.sum(~predicted & ~labels))
    f1 = lambda t, f_pos, f_neg: 2 * t / (2 * t + f_pos + f_neg) if t else 0.0
    return {"predicted_normal": {"actual_normal": tn, "actual_abnormal": fn},
            "predicted_abnormal": {"actual_normal": fp, "actual_abnormal": tp},
            "accuracy": (tp + tn) / len(labels),
            "f1_anomalous_positive": f1(tp, fp, fn), "f1_normal_positive": f1(tn, fn, fp)}


def decision_table(method: str, dataset: str, category: str, *, root: Path | None = None,
                   profile: str = "demo", seed: int = 0, overrides: dict | None = None,
                   holdout: float = 0.2, quantile: float = 1.0) -> dict[str, Any]:
    """Fit ``method`` on (1 - holdout) of the normal training images of ``category``, set the
    threshold on the held-out ones, and count the test set's confusion matrix."""
    from nfbench.pipeline.experiment import category_table, resolve_config

    table = category_table(dataset, root, category)
    seed_everything(seed)
    detector = resolve_config(method, profile, dict(overrides or {}))
    train, test = image_sets(table, category, detector.config.input_size)
    fit_idx, held_idx = holdout_split(len(train), holdout, seed)
    seed_everything(seed)
    start = time.perf_counter()
    detector.fit(train.subset(fit_idx))
    fit_seconds = time.perf_counter() - start
    threshold = threshold_from_normals(detector.score(train.subset(held_idx)).image, quantile)
    scores = detector.score(test).image
    result = confusion(np.asarray(test.labels), scores, threshold)
    return {"method": method, "dataset": dataset, "category": category, "seed": seed,
            "profile": profile, "threshold": threshold,
            "threshold_rule": (f"{quantile:g}-quantile of the image scores of {len(held_idx)} "
                               f"held-out normal training images (fit on the other "
                               f"{len(fit_idx)}); no test label used"),
            "n_test": len(test), "fit_seconds": fit_seconds, **result}


def decision_markdown(result: dict[str, Any]) -> str:
    """The table in the layout of PatchFlow's Table 2 (rows predicted, columns actual)."""
    pn, pa = result["predicted_normal"], result["predicted_abnormal"]
    return "\n".join([
        f"Confusion matrix: `{result['method']}` on `{result['dataset']}/{result['category']}` "
        f"(profile {result['profile']}, seed {result['seed']}).", "",
        "| | actual normal | actual abnormal |", "|---|---|---|",
        f"| predicted normal | {pn['actual_normal']} | {pn['actual_abnormal']} |",
        f"| predicted abnormal | {pa['actual_normal']} | {pa['actual_abnormal']} |", "",
        f"- accuracy: {100 * result['accuracy']:.2f} %",
        f"- F1, anomalous class positive: {100 * result['f1_anomalous_positive']:.2f} %",
        f"- F1, normal class positive: {100 * result['f1_normal_positive']:.2f} %",
        f"- threshold {result['threshold']:.6g}: {result['threshold_rule']}", ""])
