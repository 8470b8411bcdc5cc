"""The official metrics (MVTec AD protocol) and :func:`compute_all`, every metric of one test
set from one shared curve."""

from __future__ import annotations

import numpy as np

from nfbench.metrics.curves import (_auroc, _average_precision, _aupro, _check_limit, _curve,
                                    _f1_max, _label_regions, _pair, _sub_curve)
from nfbench.metrics.variants import (CDO_STEPS, _cdo_area, _cdo_thresholds,
                                      _count_above_from_curve)

#: the official metrics every record carries
METRIC_KEYS = ("image_auroc", "pixel_auroc", "pixel_aupr", "aupro", "f1_max")


def image_auroc(labels, scores) -> float:
    """Image-level AUROC: area under the ROC curve of one score per image.

    ``labels`` [N] 0/1 (1 = anomalous), ``scores`` [N]. Trapezoid rule over one point per
    distinct score (equals sklearn's ``roc_auc_score``); ``nan`` if only one class is present.
    O(N log N) time, ~30 bytes per image.
    """
    y, s = _pair(labels, scores, "labels", "scores", ndim=1)
    return _auroc(_curve(s, truth=y))


def pixel_auroc(masks, maps) -> float:
    """Pixel-level AUROC over all pixels of all images (MVTec AD, Bergmann et al. 2021).

    ``masks`` bool [N, H, W] (True = defect), ``maps`` float [N, H, W] (any equal shapes work).
    Equals sklearn's ``roc_auc_score`` on the flattened arrays; ``nan`` without positive or
    without negative pixels. One global sort: O(P log P) time for P pixels, peak ~30 bytes per
    pixel beyond the inputs (about 0.3 GB, 3 s for a 10 M-pixel category at 256 px).
    """
    y, s = _pair(masks, maps, "masks", "maps")
    return _auroc(_curve(s, truth=y))


def pixel_aupr(masks, maps) -> float:
    """Pixel-level average precision: sum_k (R_k - R_{k-1}) P_k over distinct thresholds.

    Step-wise like sklearn's ``average_precision_score`` (not a trapezoid over the PR curve);
    ``nan`` without positive pixels. O(P log P) time, peak ~30 bytes per pixel.
    """
    y, s = _pair(masks, maps, "masks", "maps")
    return _average_precision(_curve(s, truth=y))


def aupro(masks, maps, fpr_limit: float = 0.3) -> float:
    """Normalized area under the PRO curve up to ``fpr_limit`` (Bergmann et al., IJCV 2021).

    Regions are the 8-connected components of each image's mask, each weighted equally;
    PRO(t) is the mean over regions of the fraction of the region's pixels with score >= t;
    FPR(t) is the fraction of all defect-free pixels (normal images included) with score >= t.
    One point per distinct score; the curve is cut at ``fpr_limit`` with an interpolated end
    point, integrated with the trapezoid rule and divided by ``fpr_limit`` (1.0 is perfect,
    about ``fpr_limit / 2`` is random). ``nan`` if there is no defect region.
    ``masks`` bool [N, H, W], ``maps`` float [N, H, W]. O(P log P) time, peak ~32 bytes per
    pixel beyond the inputs (region ids, sort order, cumulative overlap).
    """
    fpr_limit = _check_limit(fpr_limit)
    y, s = _pair(masks, maps, "masks", "maps", ndim=3)
    regions, weights = _label_regions(y)
    return _aupro(_curve(s, regions=regions, region_weights=weights), fpr_limit)


def f1_max_threshold(masks, maps) -> tuple[float, float]:
    """Maximal pixel-level F1 over all thresholds and the threshold reaching it.

    Pixels with score >= threshold are predicted anomalous; the highest such threshold is
    returned on ties. This is an ORACLE threshold: it is chosen with the test labels, so it
    is an upper bound, not a deployable operating point. ``(nan, nan)`` without positive
    pixels. O(P log P) time, peak ~30 bytes per pixel.
    """
    y, s = _pair(masks, maps, "masks", "maps")
    return _f1_max(_curve(s, truth=y))


def f1_max(masks, maps) -> float:
    """Maximal pixel-level F1 over all thresholds (oracle; see :func:`f1_max_threshold`)."""
    return f1_max_threshold(masks, maps)[0]


def compute_all(labels, image_scores, masks, maps, fpr_limit: float = 0.3) -> dict[str, float]:
    """Every metric of one test set: keys image_auroc, pixel_auroc, pixel_aupr, aupro, f1_max
    (:data:`METRIC_KEYS`, the official definitions) and the papers' own variants
    (:data:`METRIC_VARIANTS`: pixel_aupr@clscnf, aupro@clscnf, pixel_auroc@patchflow).

    Pixel metrics are ``nan`` when there are no positive pixels, image_auroc when only one
    class is present. Every pixel metric, the variants included, is read from ONE global
    sort (one argsort, then gathers and cumulative sums: about 1.3x the argsort's time, see
    benchmarks/bench_metrics.py), with values bit-identical to the separate functions
    (tests/test_metrics.py). Peak ~33 bytes per pixel beyond the inputs (~0.3 GB for a 256 px
    MVTec category, ~3 GB at 768 px).
    """
    fpr_limit = _check_limit(fpr_limit)
    y_img, s_img = _pair(labels, image_scores, "labels", "image_scores", ndim=1)
    y, s = _pair(masks, maps, "masks", "maps", ndim=3)
    if y.shape[0] != y_img.shape[0]:
        raise ValueError(f"labels has {y_img.shape[0]} images but masks has {y.shape[0]}")
    regions, weights = _label_regions(y)
    # PatchFlow's pixel AUROC counts the defective images' pixels only: marked in the same sort
    marked = None
    if y_img.any() and not y_img.all():
        marked = np.repeat(y_img, y[0].size).reshape(y.shape)
    c = _curve(s, regions=regions, region_weights=weights, subset=marked)
    del regions, marked
    if not y_img.any():
        auroc_patchflow = float("nan")
    else:
        auroc_patchflow = _auroc(c if y_img.all() else _sub_curve(c))
    thresholds = _cdo_thresholds(s, CDO_STEPS)
    return {
        "image_auroc": _auroc(_curve(s_img, truth=y_img)),
        **_curve_metrics(c, fpr_limit),
        "aupro@clscnf": _cdo_area(y, s, thresholds, _count_above_from_curve(c, thresholds),
                                  c.n_neg, fpr_limit),
        "pixel_auroc@patchflow": auroc_patchflow,
    }


def _curve_metrics(c, fpr_limit: float) -> dict[str, float]:
    """pixel_auroc, pixel_aupr, aupro, f1_max and pixel_aupr@clscnf of one curve, equal to the
    last bit to :func:`_auroc`, :func:`_average_precision`, :func:`_aupro`, :func:`_f1_max`
    and :func:`_pr_trapezoid` (the same float operations on the same values), with the
    per-point float64 arrays they share (counts, precision) built once: fewer passes over
    up to one point per pixel."""
    if c.n_pos == 0:
        nan = float("nan")
        return {"pixel_auroc": nan, "pixel_aupr": nan, "aupro": nan, "f1_max": nan,
                "pixel_aupr@clscnf": nan}
    k = c.tps.size
    tps0, fps0 = np.zeros(k + 1), np.zeros(k + 1)   # the curve from (0, 0), float64 counts
    tps0[1:], fps0[1:] = c.tps, c.fps                 # exact: counts < 2**53
    tps, fps = tps0[1:], fps0[1:]
    d_tp = np.diff(tps0)
    total = tps + fps                                 # exact integers, as (tps + fps) in int
    precision = tps / total
    # _average_precision: sum_k (R_k - R_{k-1}) P_k
    aupr = float(np.dot(d_tp, precision)) / c.n_pos
    del d_tp
    # _f1_max: 2TP / (TP + FP + n_pos), first maximum
    total += c.n_pos
    f1 = 2.0 * tps
    f1 /= total
    f1_max = float(f1[int(np.argmax(f1))])
    del f1, total
    # _pr_trapezoid: points (R_k, P_k) after (0, 1)
    recall = np.diff(np.concatenate(([0.0], tps / float(c.n_pos))))
    precision = np.concatenate(([1.0], precision))
    mid = precision[1:] + precision[:-1]
    del precision
    mid *= 0.5
    pr_trapezoid = float(np.dot(recall, mid))
    del recall, mid
    # _auroc: trapezoid in counts (every partial sum an exact integer)
    auroc = float("nan")
    if c.n_neg:
        area2 = float(np.dot(np.diff(fps0), tps0[1:] + tps0[:-1]))
        auroc = area2 / (2.0 * c.n_pos * c.n_neg)
    return {"pixel_auroc": auroc, "pixel_aupr": aupr, "aupro": _aupro(c, fpr_limit),
            "f1_max": f1_max, "pixel_aupr@clscnf": pr_trapezoid}
