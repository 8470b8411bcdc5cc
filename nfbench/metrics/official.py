"""The official metrics (MVTec AD protocol) and :func:`compute_all`, every metric of one test
set from one shared curve."""

from __future__ import annotations

import math

import numpy as np

from nfbench.metrics.curves import (_area_to_limit, _auroc, _average_precision, _aupro,
                                    _check_limit, _curve, _f1_max, _label_regions, _pair)
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
    sort (of index-packed keys, ties in index order: :func:`~nfbench.metrics.curves._curve`;
    then one gather of the region ids, cumulative sums and a few passes over reused
    buffers; benchmarks/bench_metrics.py times it against one ``numpy.argsort``: 1.07x on a
    quiet 2-core machine), with values bit-identical to the separate functions
    (tests/test_metrics.py). Peak ~66 bytes per pixel beyond the inputs, as before these
    passes were shared (tracemalloc, float32 maps with mostly distinct scores: ~0.4 GB for
    83 images at 256 px, ~3.2 GB at 768 px).
    """
    fpr_limit = _check_limit(fpr_limit)
    y_img, s_img = _pair(labels, image_scores, "labels", "image_scores", ndim=1)
    y, s = _pair(masks, maps, "masks", "maps", ndim=3)
    if y.shape[0] != y_img.shape[0]:
        raise ValueError(f"labels has {y_img.shape[0]} images but masks has {y.shape[0]}")
    regions, weights = _label_regions(y)
    # PatchFlow's pixel AUROC counts the defective images' pixels only: flagged in the same sort
    some = bool(y_img.any() and not y_img.all())
    # AUPRO reads PRO up to fps <= floor(fpr_limit * n_neg) + 1 and one point more
    bound = math.floor(fpr_limit * (y.size - np.count_nonzero(y))) + 1
    c = _curve(s, regions=regions, region_weights=weights, subset=y_img if some else None,
               pro_count=bound)
    work = _Work(c.tps.size)
    metrics = _curve_metrics(c, fpr_limit, work)
    if not y_img.any():
        auroc_patchflow = float("nan")
    elif y_img.all():
        auroc_patchflow = metrics["pixel_auroc"]
    else:
        sub_tps, sub_fps = c.sub
        auroc_patchflow = _auroc_counts(work, sub_tps, sub_fps, int(sub_tps[-1]),
                                        int(sub_fps[-1]))
    del work
    thresholds = _cdo_thresholds(s, CDO_STEPS, (c.thresholds[0], c.thresholds[-1]))
    return {
        "image_auroc": _auroc(_curve(s_img, truth=y_img)),
        **metrics,
        "aupro@clscnf": _cdo_area(y, s, thresholds, _count_above_from_curve(c, thresholds),
                                  c.n_neg, fpr_limit, regions),
        "pixel_auroc@patchflow": auroc_patchflow,
    }


class _Work:
    """Float64 buffers of k + 1 curve points (the point (0, 0) first) reused by
    :func:`_curve_metrics`: at one point per pixel every fresh array costs its page faults,
    about as much as the pass that fills it."""

    def __init__(self, k: int):
        self.t, self.f, self.a, self.b = (np.empty(k + 1) for _ in range(4))
        self.t[0] = self.f[0] = 0.0


def _auroc_counts(w: _Work, tps, fps, n_pos: int, n_neg: int) -> float:
    """:func:`_auroc` of the counts ``tps``/``fps`` in ``w``'s buffers (the same float
    operations: a trapezoid in counts, every partial sum an exact integer)."""
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    w.t[1:], w.f[1:] = tps, fps                       # exact: counts < 2**53
    d_fp = np.subtract(w.f[1:], w.f[:-1], out=w.a[1:])
    mid = np.add(w.t[1:], w.t[:-1], out=w.b[1:])
    return float(np.dot(d_fp, mid)) / (2.0 * n_pos * n_neg)


def _curve_metrics(c, fpr_limit: float, w: _Work) -> dict[str, float]:
    """pixel_auroc, pixel_aupr, aupro, f1_max and pixel_aupr@clscnf of one curve, equal to the
    last bit to :func:`_auroc`, :func:`_average_precision`, :func:`_aupro`, :func:`_f1_max`
    and :func:`_pr_trapezoid` (the same float operations on the same values), computed in
    the four reused buffers of ``w``: no fresh array of one element per point."""
    if c.n_pos == 0:
        nan = float("nan")
        return {"pixel_auroc": nan, "pixel_aupr": nan, "aupro": nan, "f1_max": nan,
                "pixel_aupr@clscnf": nan}
    t, f, a, b = w.t, w.f, w.a, w.b
    auroc = _auroc_counts(w, c.tps, c.fps, c.n_pos, c.n_neg)
    w.t[1:], w.f[1:] = c.tps, c.fps                   # (again when n_neg == 0)
    tps, fps = t[1:], f[1:]
    # _average_precision: sum_k (R_k - R_{k-1}) P_k
    d_tp = np.subtract(t[1:], t[:-1], out=a[1:])
    precision = np.add(tps, fps, out=b[1:])           # exact integers, as (tps + fps) in int
    np.divide(tps, precision, out=precision)
    aupr = float(np.dot(d_tp, precision)) / c.n_pos
    # _pr_trapezoid: points (R_k, P_k) after (0, 1)
    b[0] = 1.0
    recall = np.divide(t, float(c.n_pos), out=a)     # R_0 = 0 / n_pos = 0.0
    np.subtract(recall[1:], recall[:-1], out=f[1:])   # fps is rebuilt below
    d_recall = f[1:]
    mid = np.add(b[1:], b[:-1], out=a[1:])
    mid *= 0.5
    pr_trapezoid = float(np.dot(d_recall, mid))
    # _f1_max: 2TP / (TP + FP + n_pos), first maximum
    f[1:] = c.fps
    total = np.add(tps, fps, out=a[1:])
    total += c.n_pos
    f1 = np.multiply(tps, 2.0, out=b[1:])
    f1 /= total
    f1_max = float(f1[int(np.argmax(f1))])
    # _aupro: the PRO curve against FPR = fps / n_neg, both from (0, 0)
    aupro = float("nan")
    if c.pros is not None and c.n_neg:
        # only the points up to the first one past fpr_limit count: a point with
        # fps / n_neg <= fpr_limit has fps <= floor(fpr_limit * n_neg) + 1 (a division's
        # rounding is far below 1 / n_neg), so those, the origin and one more suffice
        m = min(int(np.searchsorted(c.fps, math.floor(fpr_limit * c.n_neg) + 1, side="right")) + 2,
                c.fps.size + 1)                        # c.pros holds m - 1 points (compute_all)
        fpr = np.divide(f[:m], float(c.n_neg), out=a[:m])
        pro = b[:m]
        pro[0] = 0.0
        pro[1:] = c.pros[:m - 1]
        aupro = float(_area_to_limit(fpr, pro, fpr_limit) / fpr_limit)
    return {"pixel_auroc": auroc, "pixel_aupr": aupr, "aupro": aupro,
            "f1_max": f1_max, "pixel_aupr@clscnf": pr_trapezoid}
