"""Image-level decisions at a threshold chosen without test labels: PatchFlow's Table 2 kind.

PatchFlow's Table 2 is a confusion matrix on proprietary valve-body images. The suite makes the
same kind of table for any folder in MVTec AD layout: fit on part of the normal training
images, score the held-out rest, and put the threshold at a quantile of those held-out normal
scores (default: their maximum, i.e. every held-out normal image is called normal). The test
labels are used only to count the matrix, never to choose the threshold.
"""

from __future__ import annotations

import sys
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
                   holdout: float = 0.2, quantile: float = 1.0, detector: Any = None,
                   progress: bool = True) -> dict[str, Any]:
    """Fit ``method`` on (1 - holdout) of the normal training images of ``category``, set the
    threshold on the held-out ones, and count the test set's confusion matrix.

    ``detector``: a fitted detector (``decide --model DIR``) used instead of fitting; the
    threshold still comes from the held-out normal images (which that model may have seen in
    training, unless ``decide --save-model`` saved it: the record says which). The result
    holds the fitted ``detector`` under ``"detector"`` (not serialised), the config, timing,
    environment and every test image's score and prediction."""
    from nfbench.methods.base import config_to_dict, effective_config
    from nfbench.pipeline.experiment import category_table, environment
    from nfbench.pipeline.settings import build_detector

    say = (lambda text: print(f"[decide] {text}", file=sys.stderr, flush=True)) if progress \
        else (lambda text: None)
    table = category_table(dataset, root, category)
    seed_everything(seed)
    fitted = detector is not None
    if not fitted:
        detector = build_detector(method, profile, dict(overrides or {}))
    size = effective_config(detector).input_size
    train, test = image_sets(table, category, size)
    fit_idx, held_idx = holdout_split(len(train), holdout, seed)
    seed_everything(seed)
    start = time.perf_counter()
    if not fitted:
        say(f"fitting {method} on {len(fit_idx)} normal training images of {category}")
        detector.fit(train.subset(fit_idx))
    fit_seconds = time.perf_counter() - start if not fitted else 0.0
    say(f"scoring {len(held_idx)} held-out normal and {len(test)} test images")
    start = time.perf_counter()
    threshold = threshold_from_normals(detector.score(train.subset(held_idx)).image, quantile)
    scores = detector.score(test).image
    score_seconds = time.perf_counter() - start
    labels = np.asarray(test.labels)
    result = confusion(labels, scores, threshold)
    model = getattr(detector, "artifact_", None)
    rule = (f"{quantile:g}-quantile of the image scores of {len(held_idx)} held-out normal "
            f"training images (fit on the other {len(fit_idx)}); no test label used")
    if fitted:
        rule = (f"{quantile:g}-quantile of the image scores of {len(held_idx)} held-out normal "
                f"training images, scored by a saved model (it may have seen them in training "
                f"unless decide saved it); no test label used")
    return {"method": method, "dataset": dataset, "category": category, "seed": seed,
            "profile": profile, "threshold": threshold, "threshold_rule": rule,
            "n_test": len(test), "fit_seconds": fit_seconds, **result,
            "config": config_to_dict(effective_config(detector)),
            "model": {"reused": fitted, "folder": (model or {}).get("folder")},
            "timing": {"fit_seconds": fit_seconds, "score_seconds": score_seconds},
            "environment": environment(),
            "predictions": [{"path": path, "label": int(label), "image_score": float(score),
                             "prediction": int(score > threshold)}
                            for path, label, score in zip(test.paths, labels, scores)],
            "detector": detector}


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
