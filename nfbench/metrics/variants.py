"""The papers' own metric code where it differs from the official definitions
(``<official>@<paper>``), each a transcription of the original's evaluation; compute_all
reports them beside the official metrics."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from nfbench.metrics.curves import (_EIGHT_CONNECTED, _auroc, _binary, _check_limit, _Curve, _curve,
                                    _pair, _scores)


#: Named metric variants: a paper's own metric code where it differs from the official
#: definitions (:mod:`nfbench.metrics.official`; ``<official>@<paper>``). compute_all reports them beside the official
#: metrics; tables compare a paper's published numbers with the variant that made them
#: (``published_metric`` in benchmarks/<paper>.yaml). Facts: docs/original-code.md §1b, §1d, §6.
METRIC_VARIANTS = {
    # AD-CLSCNFs evaluate.py: sklearn precision_recall_curve + auc(recall, precision)
    "pixel_aupr@clscnf": "trapezoid area under the PR curve (sklearn auc(recall, precision)), "
                         "AD-CLSCNFs evaluate.py; official: average precision",
    # AD-CLSCNFs evaluate.py cal_pro_metric (from the CDO project)
    "aupro@clscnf": "CDO cal_pro_metric: 200 equal score steps from the max down, masks > 0.45, "
                    "filled regions, FPR <= 0.3 min-max rescaled (without the original's +1e-7 "
                    "in the denominator: a relative change below 3e-7), no interpolated end point, "
                    "AD-CLSCNFs evaluate.py; official: exact curve, interpolated at 0.3",
    # BOX-LEO/PatchFlow metrics.py pixel_AUROC on data.py get_mask_dataset
    "pixel_auroc@patchflow": "pixel AUROC over the defective test images only, PatchFlow "
                             "metrics.py; official: every test image",
}


def official_metric(name: str) -> str:
    """``pixel_aupr@clscnf`` -> ``pixel_aupr``; an official name is returned as is."""
    return name.split("@", 1)[0]

# 8-connectivity for ground-truth regions, as in the official MVTec AD evaluation code.


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


#: CDO cal_pro_metric's number of equal score steps
CDO_STEPS = 200


def aupro_clscnf(masks, maps, fpr_limit: float = 0.3, max_steps: int = CDO_STEPS) -> float:
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
    thresholds = _cdo_thresholds(s, max_steps)
    negatives = ~truth
    n_neg = int(negatives.sum())
    neg_above = _count_above(thresholds[::-1], s[negatives])
    return _cdo_area(truth, s, thresholds, neg_above, n_neg, fpr_limit)


def _cdo_thresholds(s: np.ndarray, max_steps: int, bounds=None) -> np.ndarray:
    """CDO's ``max_steps`` thresholds ``max - k * (max - min) / max_steps``, descending, in the
    maps' dtype. ``bounds``: ``(max, min)`` of ``s`` when the caller has them (a curve's first
    and last thresholds), saving two passes over the maps."""
    max_th, min_th = bounds if bounds is not None else (s.max(), s.min())
    delta = (max_th - min_th) / max_steps
    return np.array([max_th - step * delta for step in range(max_steps)], dtype=s.dtype)


def _count_above(ascending: np.ndarray, values: np.ndarray) -> np.ndarray:
    """How many ``values`` are > each threshold, thresholds descending (given ascending)."""
    below = np.searchsorted(ascending, values, side="left")  # thresholds < each value
    counts = np.bincount(below, minlength=ascending.size + 1)
    # values > ascending[j] are those with more than j thresholds below them
    return (values.size - np.cumsum(counts)[:ascending.size])[::-1]


def _count_above_from_curve(c: _Curve, thresholds: np.ndarray) -> np.ndarray:
    """:func:`_count_above` of the negatives, read from a curve's cumulative false positives:
    the negatives > t are those at or above the lowest distinct score > t (exact integers,
    no pass over the pixels)."""
    ascending = c.thresholds[::-1]
    distinct_above = ascending.size - np.searchsorted(ascending, thresholds, side="right")
    return np.concatenate(([0], c.fps))[distinct_above]


def _cdo_area(truth: np.ndarray, s: np.ndarray, thresholds: np.ndarray, neg_above: np.ndarray,
              n_neg: int, fpr_limit: float, regions: np.ndarray | None = None) -> float:
    """The rest of ``cal_pro_metric`` (see :func:`aupro_clscnf`) given the count of negatives
    above each threshold: the filled regions' overlaps, the FPR cut and the rescaled area.
    ``regions``: the global region ids of ``truth`` from :func:`_label_regions` when the caller
    has them (the same 8-connected components in the same order, not labelled again)."""
    ascending = thresholds[::-1]
    pros, n_regions = np.zeros(thresholds.size, dtype=np.float64), 0
    structure = np.ones((3, 3), dtype=bool)
    for i in range(truth.shape[0]):
        if regions is None:
            labels, first = ndimage.label(truth[i], structure=_EIGHT_CONNECTED)[0], 1
        elif truth[i].any():
            labels = regions[i]
            first = int(labels[truth[i]].min())        # ids are consecutive within an image
        else:
            continue
        boxes = ndimage.find_objects(labels)[first - 1:]
        for k, box in enumerate(boxes, start=first):
            region = labels[box] == k
            filled = ndimage.binary_fill_holes(region, structure=structure)
            pros += _count_above(ascending, s[i][box][filled]) / float(region.sum())
            n_regions += 1
    if n_regions == 0 or n_neg == 0:
        return float("nan")
    pros /= n_regions
    fprs = neg_above / float(n_neg)
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
