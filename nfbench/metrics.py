"""The one place where every method is measured (MVTec AD protocol).

Higher scores mean "more anomalous" everywhere.  Image-level: AUROC of one score per image.
Pixel-level: AUROC, average precision (AUPR), AUPRO up to an FPR limit (default 0.3) and the
maximal F1 over all thresholds, all computed over every pixel of every test image of a
category (Bergmann et al., "The MVTec Anomaly Detection Dataset", IJCV 2021).

Every curve is built from ONE global descending sort of the scores followed by cumulative
sums, with one curve point per distinct score (ties are merged, never split).  Scores keep
their float dtype (float32 recommended: float16 is widened to float32, integers to float64),
so two scores are tied exactly when they are equal in that dtype.  Undefined metrics (one
class only, no defect region) are ``nan``; malformed inputs raise :class:`ValueError`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy import ndimage

__all__ = ["image_auroc", "pixel_auroc", "pixel_aupr", "aupro", "f1_max", "f1_max_threshold",
           "pixel_aupr_clscnf", "aupro_clscnf", "pixel_auroc_patchflow", "compute_all",
           "METRIC_KEYS", "METRIC_VARIANTS", "official_metric"]

METRIC_KEYS = ("image_auroc", "pixel_auroc", "pixel_aupr", "aupro", "f1_max")

#: Named metric variants: a paper's own metric code where it differs from the official
#: definition above (``<official>@<paper>``). compute_all reports them beside the official
#: metrics; tables compare a paper's published numbers with the variant that made them
#: (``published_metric`` in benchmarks/<paper>.yaml). Facts: original-code.md §1b, §1d, §6.
METRIC_VARIANTS = {
    # AD-CLSCNFs evaluate.py: sklearn precision_recall_curve + auc(recall, precision)
    "pixel_aupr@clscnf": "trapezoid area under the PR curve (sklearn auc(recall, precision)), "
                         "AD-CLSCNFs evaluate.py; official: average precision",
    # AD-CLSCNFs evaluate.py cal_pro_metric (from the CDO project)
    "aupro@clscnf": "CDO cal_pro_metric: 200 equal score steps from the max down, masks > 0.45, "
                    "filled regions, FPR <= 0.3 min-max rescaled, no interpolated end point, "
                    "AD-CLSCNFs evaluate.py; official: exact curve, interpolated at 0.3",
    # BOX-LEO/PatchFlow metrics.py pixel_AUROC on data.py get_mask_dataset
    "pixel_auroc@patchflow": "pixel AUROC over the defective test images only, PatchFlow "
                             "metrics.py; official: every test image",
}


def official_metric(name: str) -> str:
    """``pixel_aupr@clscnf`` -> ``pixel_aupr``; an official name is returned as is."""
    return name.split("@", 1)[0]

# 8-connectivity for ground-truth regions, as in the official MVTec AD evaluation code.
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


# --------------------------------------------------------------------------- validation


def _scores(x, name: str) -> np.ndarray:
    """``x`` as a float array (no copy when already float32/float64); finite or ValueError."""
    arr = np.asarray(x)
    if arr.dtype.kind == "f":
        if arr.dtype.itemsize < 4:
            arr = arr.astype(np.float32)
    elif arr.dtype.kind in "biu":
        arr = arr.astype(np.float64)
    else:
        raise ValueError(f"{name} must be real numbers, got dtype {arr.dtype}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    # min/max propagate NaN and expose +-inf without allocating a per-element mask.
    lo, hi = arr.min(), arr.max()
    if not (math.isfinite(lo) and math.isfinite(hi)):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or inf); "
                         "every score must be finite")
    return arr


def _binary(x, name: str) -> np.ndarray:
    """``x`` as a bool array; values other than 0/1 (or False/True) raise ValueError."""
    arr = np.asarray(x)
    if arr.dtype == bool:
        return arr
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be binary (bool or 0/1), got dtype {arr.dtype}")
    out = arr != 0
    if np.any(arr[out] != 1):
        raise ValueError(f"{name} must be binary (bool or 0/1); found other values")
    return out


def _pair(truth, scores, truth_name: str, score_name: str, ndim: int | None = None):
    y = _binary(truth, truth_name)
    s = _scores(scores, score_name)
    if y.shape != s.shape:
        raise ValueError(f"{truth_name} and {score_name} must have the same shape, "
                         f"got {y.shape} and {s.shape}")
    if ndim is not None and y.ndim != ndim:
        raise ValueError(f"{truth_name} and {score_name} must have {ndim} dimensions, "
                         f"got shape {y.shape}")
    return y, s


# --------------------------------------------------------------------------- shared curve


class _Curve(NamedTuple):
    """Cumulative counts at each distinct score, scores descending (one point per score)."""

    thresholds: np.ndarray   # distinct scores, descending
    tps: np.ndarray          # int32/int64: positives with score >= threshold
    fps: np.ndarray          # int32/int64: negatives with score >= threshold
    pros: np.ndarray | None  # float64: mean per-region overlap at each threshold
    n_pos: int
    n_neg: int


def _curve(scores: np.ndarray, truth: np.ndarray | None = None,
           regions: np.ndarray | None = None, region_weights: np.ndarray | None = None) -> _Curve:
    """One descending argsort of ``scores`` and cumulative sums; pass ``truth`` (bool) or
    ``regions`` (int32 region id per pixel, 0 = defect-free) with ``region_weights`` (weight of
    one pixel of each region id, 0 for id 0).

    Peak memory beyond the inputs, for P elements with up to P distinct scores: the sort order
    (8 B/px) while gathering, then the sorted scores and labels, one cumulative sum at a time
    (4-8 B/px) and the per-threshold outputs: measured ~30 B/px (float32 scores, all distinct).
    """
    s = scores.ravel()
    n = s.size
    order = np.argsort(s)[::-1]                       # 8 B/px (intp), descending
    s = s[order]                                      # 4-8 B/px
    lab = (regions if regions is not None else truth).ravel()[order]   # 4 B/px or 1 B/px
    del order
    # keep[i]: i is the last element of a run of equal scores -> one point per distinct score.
    keep = np.empty(n, dtype=bool)
    np.not_equal(s[1:], s[:-1], out=keep[:-1])
    keep[-1] = True
    thresholds = s[keep]
    del s
    pros = None
    if regions is not None:
        steps = region_weights[lab]                   # 8 B/px: PRO gained by each pixel
        np.cumsum(steps, out=steps)
        pros = steps[keep]
        del steps
        np.clip(pros, 0.0, 1.0, out=pros)             # cumsum rounding must not exceed 1
    count_dtype = np.int32 if n < 2**30 else np.int64  # tps + fps + n_pos must not overflow
    pos = lab != 0 if regions is not None else lab    # 1 B/px, a copy in both cases
    del lab
    tps = np.cumsum(pos, dtype=count_dtype)[keep]
    neg = np.logical_not(pos, out=pos)                 # in place: pos is our own copy
    fps = np.cumsum(neg, dtype=count_dtype)[keep]
    del pos, neg, keep
    return _Curve(thresholds, tps, fps, pros, int(tps[-1]), int(fps[-1]))


def _auroc(c: _Curve) -> float:
    """Trapezoid area under the ROC points (0,0), (fpr_i, tpr_i) ... (1,1)."""
    if c.n_pos == 0 or c.n_neg == 0:
        return float("nan")
    fps = np.concatenate(([0], c.fps)).astype(np.float64)
    tps = np.concatenate(([0], c.tps)).astype(np.float64)
    area2 = float(np.dot(np.diff(fps), tps[1:] + tps[:-1]))   # twice the area in counts
    return area2 / (2.0 * c.n_pos * c.n_neg)


def _average_precision(c: _Curve) -> float:
    """sum_k (R_k - R_{k-1}) P_k over distinct thresholds (step-wise, as in sklearn)."""
    if c.n_pos == 0:
        return float("nan")
    d_tp = np.diff(c.tps, prepend=0).astype(np.float64)
    precision = c.tps / (c.tps + c.fps).astype(np.float64)
    return float(np.dot(d_tp, precision)) / c.n_pos


def _f1_max(c: _Curve) -> tuple[float, float]:
    if c.n_pos == 0:
        return float("nan"), float("nan")
    # F1 = 2TP / (2TP + FP + FN) = 2TP / (TP + FP + n_pos)
    f1 = 2.0 * c.tps / (c.tps + c.fps + c.n_pos).astype(np.float64)
    best = int(np.argmax(f1))  # first maximum = highest threshold reaching it
    return float(f1[best]), float(c.thresholds[best])


def _label_regions(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Global region ids (int32, 0 = defect-free) of the 8-connected components of each image's
    mask, and the weight 1 / (n_regions * region_size) of one pixel of each region."""
    regions = np.zeros(masks.shape, dtype=np.int32)
    offset = 0
    for i in range(masks.shape[0]):
        n = ndimage.label(masks[i], structure=_EIGHT_CONNECTED, output=regions[i])
        if n:
            regions[i][regions[i] > 0] += offset
            offset += n
    sizes = np.bincount(regions.ravel(), minlength=offset + 1)
    weights = np.zeros(offset + 1, dtype=np.float64)
    if offset:
        weights[1:] = 1.0 / (offset * sizes[1:].astype(np.float64))
    return regions, weights


def _area_to_limit(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under (x, y) (x nondecreasing, starting at 0) for x in [0, limit]; the
    end point at ``limit`` is linearly interpolated, as in the official MVTec AD code."""
    ins = int(np.searchsorted(x, limit, side="right"))       # points with x <= limit
    xs, ys = x[:ins], y[:ins]
    area = float(np.dot(np.diff(xs), 0.5 * (ys[1:] + ys[:-1])))
    if ins < x.size and xs[-1] < limit:
        x0, x1, y0, y1 = xs[-1], x[ins], ys[-1], y[ins]
        y_end = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        area += 0.5 * (y0 + y_end) * (limit - x0)
    return area


def _aupro(c: _Curve, fpr_limit: float) -> float:
    if c.pros is None or c.n_pos == 0 or c.n_neg == 0:
        return float("nan")
    fpr = np.concatenate(([0.0], c.fps / float(c.n_neg)))
    pro = np.concatenate(([0.0], c.pros))
    return float(_area_to_limit(fpr, pro, fpr_limit) / fpr_limit)


def _check_limit(fpr_limit: float) -> float:
    fpr_limit = float(fpr_limit)
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    return fpr_limit


# --------------------------------------------------------------------------- public API


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


# --------------------------------------------------------------------------- paper variants


def _pr_trapezoid(c: _Curve) -> float:
    """sklearn ``auc(recall, precision)`` of ``precision_recall_curve``: the trapezoid over the
    points (R_k, P_k), one per distinct threshold, and the end point (0, 1) sklearn appends.
    (Points past full recall, which some sklearn versions drop, add no area.)"""
    if c.n_pos == 0:
        return float("nan")
    recall = np.concatenate(([0.0], c.tps / float(c.n_pos)))
    precision = np.concatenate(([1.0], c.tps / (c.tps + c.fps).astype(np.float64)))
    return float(np.dot(np.diff(recall), 0.5 * (precision[1:] + precision[:-1])))


def pixel_aupr_clscnf(masks, maps) -> float:
    """CLS-CNFs' published pixel AUPR (AD-CLSCNFs ``evaluate.py``): ``auc(recall, precision)``
    of sklearn's ``precision_recall_curve`` over all pixels, a trapezoid over the PR curve that
    linearly interpolates precision (the official :func:`pixel_aupr` is average precision)."""
    y, s = _pair(masks, maps, "masks", "maps")
    return _pr_trapezoid(_curve(s, truth=y))


def aupro_clscnf(masks, maps, fpr_limit: float = 0.3, max_steps: int = 200) -> float:
    """CLS-CNFs' published AUPRO: ``cal_pro_metric`` of AD-CLSCNFs ``evaluate.py`` (from CDO).

    As the original: ground truth ``masks > 0.45`` (its masks arrive as bools, so any non-zero
    value counts); ``max_steps`` thresholds ``t_k = max - k * (max - min) / max_steps``,
    k = 0 .. max_steps-1 (never the minimum), a pixel is positive when its score ``> t_k``;
    regions are 8-connected components, and each region's overlap counts the positive pixels
    of the region *with its holes filled* (skimage ``filled_image``) over its area without holes
    (so it can exceed 1); FPR over every defect-free pixel; the points with FPR <= ``fpr_limit``
    are kept, their FPRs min-max rescaled to [0, 1] (no interpolated end point, so the scale
    is the last FPR reached, not ``fpr_limit``), and integrated with the trapezoid rule.
    ``nan`` without a defect region. Thresholds and comparisons in the maps' dtype, as numpy
    evaluates the original. O(P log max_steps) time: one binary search per pixel instead of
    200 passes over the maps.
    """
    fpr_limit = _check_limit(fpr_limit)
    m = np.asarray(masks)
    s = _scores(maps, "maps")
    if m.shape != s.shape or s.ndim != 3:
        raise ValueError(f"masks and maps must have the same 3-D shape, got {m.shape} and {s.shape}")
    truth = m.astype(bool) if m.dtype == bool else m > 0.45
    max_th, min_th = s.max(), s.min()
    delta = (max_th - min_th) / max_steps
    thresholds = np.array([max_th - step * delta for step in range(max_steps)], dtype=s.dtype)

    ascending = thresholds[::-1]

    def above(values: np.ndarray) -> np.ndarray:  # count of values > t_k for every k
        below = np.searchsorted(ascending, values, side="left")  # thresholds < each value
        counts = np.bincount(below, minlength=max_steps + 1)
        # values > ascending[j] are those with more than j thresholds below them
        return (values.size - np.cumsum(counts)[:max_steps])[::-1]

    pros, n_regions = np.zeros(max_steps, dtype=np.float64), 0
    structure = np.ones((3, 3), dtype=bool)
    for i in range(truth.shape[0]):
        labels, n = ndimage.label(truth[i], structure=_EIGHT_CONNECTED)
        for k, box in enumerate(ndimage.find_objects(labels), start=1):
            region = labels[box] == k
            filled = ndimage.binary_fill_holes(region, structure=structure)
            pros += above(s[i][box][filled]) / float(region.sum())
            n_regions += 1
    negatives = ~truth
    n_neg = int(negatives.sum())
    if n_regions == 0 or n_neg == 0:
        return float("nan")
    pros /= n_regions
    fprs = above(s[negatives]) / float(n_neg)
    keep = fprs <= fpr_limit
    x, y = fprs[keep], pros[keep]
    span = x.max() - x.min()
    if x.size < 2 or span == 0:
        return float("nan")
    x = (x - x.min()) / span
    return float(np.dot(np.diff(x), 0.5 * (y[1:] + y[:-1])))


def pixel_auroc_patchflow(labels, masks, maps) -> float:
    """PatchFlow's pixel AUROC (BOX-LEO/PatchFlow ``metrics.py pixel_AUROC`` on
    ``get_mask_dataset``): the pixel AUROC over the anomalous test images only."""
    y_img = _binary(labels, "labels").reshape(-1)
    y, s = _pair(masks, maps, "masks", "maps", ndim=3)
    if y_img.shape[0] != y.shape[0]:
        raise ValueError(f"labels has {y_img.shape[0]} images but masks has {y.shape[0]}")
    if not y_img.any():
        return float("nan")
    return _auroc(_curve(s[y_img], truth=y[y_img]))


def compute_all(labels, image_scores, masks, maps, fpr_limit: float = 0.3) -> dict[str, float]:
    """Every metric of one test set: keys image_auroc, pixel_auroc, pixel_aupr, aupro, f1_max
    (:data:`METRIC_KEYS`, the official definitions) and the papers' own variants
    (:data:`METRIC_VARIANTS`: pixel_aupr@clscnf, aupro@clscnf, pixel_auroc@patchflow).

    Pixel metrics are ``nan`` when there are no positive pixels, image_auroc when only one
    class is present. The pixel metrics share ONE global sort: O(P log P) time, peak ~32 bytes
    per pixel beyond the inputs (~0.3 GB for a 256 px MVTec category, ~3 GB at 768 px).
    """
    fpr_limit = _check_limit(fpr_limit)
    y_img, s_img = _pair(labels, image_scores, "labels", "image_scores", ndim=1)
    y, s = _pair(masks, maps, "masks", "maps", ndim=3)
    if y.shape[0] != y_img.shape[0]:
        raise ValueError(f"labels has {y_img.shape[0]} images but masks has {y.shape[0]}")
    regions, weights = _label_regions(y)
    c = _curve(s, regions=regions, region_weights=weights)
    del regions
    return {
        "image_auroc": _auroc(_curve(s_img, truth=y_img)),
        "pixel_auroc": _auroc(c),
        "pixel_aupr": _average_precision(c),
        "aupro": _aupro(c, fpr_limit),
        "f1_max": _f1_max(c)[0],
        "pixel_aupr@clscnf": _pr_trapezoid(c),
        "aupro@clscnf": aupro_clscnf(y, s, fpr_limit),
        "pixel_auroc@patchflow": pixel_auroc_patchflow(y_img, y, s),
    }
