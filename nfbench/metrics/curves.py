"""Input checks and the one curve every pixel metric is read from (see :mod:`nfbench.metrics`):
one global descending sort, cumulative sums, one point per distinct score."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy import ndimage


# 8-connectivity for ground-truth regions, as in the official MVTec AD evaluation code.
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


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


class _Curve(NamedTuple):
    """Cumulative counts at each distinct score, scores descending (one point per score)."""

    thresholds: np.ndarray   # distinct scores, descending
    tps: np.ndarray          # int32/int64: positives with score >= threshold
    fps: np.ndarray          # int32/int64: negatives with score >= threshold
    pros: np.ndarray | None  # float64: mean per-region overlap at each threshold (or a prefix)
    n_pos: int
    n_neg: int
    #: (tps, fps) of the elements in ``subset`` at the same thresholds (None without subset)
    sub: tuple[np.ndarray, np.ndarray] | None = None


def _curve(scores: np.ndarray, truth: np.ndarray | None = None,
           regions: np.ndarray | None = None, region_weights: np.ndarray | None = None,
           subset: np.ndarray | None = None, pro_count: int | None = None) -> _Curve:
    """One descending sort of ``scores`` and cumulative sums; pass ``truth`` (bool) or
    ``regions`` (int32 region id per pixel, 0 = defect-free) with ``region_weights`` (weight of
    one pixel of each region id, 0 for id 0).

    ``subset`` (bool, one flag per image along the first axis; needs ``regions``) also counts
    the positives and negatives among the flagged images' pixels at the same thresholds
    (``_Curve.sub``), so a second curve over a subset costs cumulative sums, not a second
    sort. ``pro_count``: PRO is needed only at the points with at most that many negatives
    above them and the next one (``_Curve.pros`` stops there: AUPRO up to an FPR limit), so
    its cumulative sum runs over that prefix of the pixels only. Thresholds where only
    unflagged pixels change repeat a point of the subset's curve;
    that adds nothing to a trapezoid over integer counts (every partial sum of :func:`_auroc`
    is an exact integer in float64).

    The sort (:func:`_descending_order`) is the only pass in pixel order that costs more than
    a few streaming passes; it also fixes the order of the PRO cumulative sum, so equal
    scores are taken in index order (a fully specified order: the same sums on every machine
    and numpy version). The labels of a subset curve travel in the ONE gather of region ids
    (flagged pixels keep their id ``r``, the others are gathered as ``-r - 1``).

    Peak memory beyond the inputs, for P elements with up to P distinct scores: the packed
    sort keys (8 B/px) and the sort order (8 B/px) while gathering, then the sorted scores and
    labels, one cumulative sum at a time (4-8 B/px) and the per-threshold outputs: measured
    ~24 B/px (float32 scores, all distinct, boolean truth).
    """
    order, s = _descending_order(scores.ravel())      # 4-8 B/px each
    n = s.size
    if regions is None:
        lab = truth.ravel()[order]                    # 1 B/px
    else:
        unflagged = None if subset is None else np.flatnonzero(~np.asarray(subset, dtype=bool))
        _flip_ids(regions, unflagged)                 # r -> -r - 1 on unflagged images ...
        lab = regions.ravel()[order]                  # 4 B/px
        _flip_ids(regions, unflagged)                 # ... and back: the caller's ids unchanged
    del order
    # keep[i]: i is the last element of a run of equal scores -> one point per distinct score.
    keep = np.empty(n, dtype=bool)
    np.not_equal(s[1:], s[:-1], out=keep[:-1])
    keep[-1] = True
    thresholds = s[keep]
    del s
    at = np.flatnonzero(keep)                          # index of each curve point
    del keep
    count_dtype = np.int32 if n < 2**30 else np.int64  # tps + fps + n_pos must not overflow
    marked = None
    if regions is not None:
        pos = lab != 0                                 # 1 B/px
        if subset is not None:
            marked = np.not_equal(lab, -1)             # 1 B/px, "not an unflagged id 0" ...
            pos &= marked
            np.greater_equal(lab, 0, out=marked)       # ... then "flagged"
    else:
        pos = lab
    counts = np.cumsum(pos, dtype=count_dtype)         # 4-8 B/px
    tps = counts[at]
    fps = at.astype(count_dtype)                       # the rest of the first at + 1 elements
    fps -= tps
    fps += 1
    pros = None
    if regions is not None:
        points = at.size
        if pro_count is not None:  # AUPRO up to an FPR limit reads no further than this point
            points = min(int(np.searchsorted(fps, count_dtype(pro_count), side="right")) + 1,
                         at.size)
        weights = region_weights
        if subset is not None:                         # id -r - 1 reads the weight of id r
            weights = np.concatenate((region_weights, region_weights[::-1]))
        steps = weights[lab[:at[points - 1] + 1]]      # <= 8 B/px: PRO gained by each pixel
        np.cumsum(steps, out=steps)                    # sequential: a prefix is the same sums
        pros = steps[at[:points]]
        del steps
        np.clip(pros, 0.0, 1.0, out=pros)             # cumsum rounding must not exceed 1
    del lab
    sub = None
    if marked is not None:
        np.cumsum(np.logical_and(pos, marked, out=pos), dtype=count_dtype, out=counts)
        sub_tps = counts[at]
        np.cumsum(marked, dtype=count_dtype, out=counts)
        sub_fps = counts[at]
        sub_fps -= sub_tps
        sub = (sub_tps, sub_fps)
    del pos, counts, marked, at
    return _Curve(thresholds, tps, fps, pros, int(tps[-1]), int(fps[-1]), sub)


#: Sign bit of a float32 seen as uint32.
_SIGN32 = np.uint32(0x80000000)


def _descending_order(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indices, values) of the 1-D ``s`` sorted by value, descending, equal values in index
    order: the same result whatever sorting algorithm numpy picks (numpy's argsort leaves
    ties in an unspecified order, which differs between numpy versions and CPUs).

    float32 with fewer than 2**32 elements (every pixel map): each value becomes a uint32 key
    that orders like the float, reversed, packed with its index into one uint64 and sorted
    with ``np.sort`` (vectorised where the CPU allows: ~10x faster than ``np.argsort`` of the
    floats; every packed key is distinct, so the result does not depend on the algorithm).
    Anything else (float64 image scores, giant inputs): a stable argsort of ``-s``."""
    n = s.size
    if s.dtype != np.float32 or n >= 2**32:
        order = np.argsort(-s, kind="stable")
        return order, s[order]
    bits = np.ascontiguousarray(s).view(np.uint32)
    low, high = (0, 1) if np.little_endian else (1, 0)
    packed = np.arange(n, dtype=np.uint64)             # 8 B/px: the index, low half ...
    key = packed.view(np.uint32).reshape(n, 2)[:, high]  # ... and the key, written in place:
    # a non-negative float's bits inverted (larger float, smaller key, below 2**31), a
    # negative float's bits as they are (from 2**31 up, more negative larger)
    np.invert(bits, out=key)
    np.bitwise_and(key, np.uint32(0x7FFFFFFF), out=key)
    np.copyto(key, bits, where=bits >= _SIGN32)
    packed.sort()
    halves = packed.view(np.uint32).reshape(n, 2)
    order = halves[:, low].astype(np.intp)             # 8 B/px
    key = halves[:, high].copy()                       # 4 B/px
    del packed, halves
    positive = key < _SIGN32                           # keys of non-negative floats
    np.invert(key, out=key, where=positive)
    np.bitwise_and(key, np.uint32(0x7FFFFFFF), out=key, where=positive)
    return order, key.view(np.float32)


def _flip_ids(regions: np.ndarray, images: np.ndarray | None) -> None:
    """Map region id ``r`` to ``-r - 1`` in place on ``regions[images]`` (its own inverse)."""
    if images is None:
        return
    for i in images:
        np.negative(regions[i], out=regions[i])
        regions[i] -= 1


def _sub_curve(c: _Curve) -> _Curve:
    """The subset's counts of ``c`` (see :func:`_curve`) as a curve for :func:`_auroc`
    (thresholds and PRO are the full curve's, unused there)."""
    tps, fps = c.sub
    return _Curve(c.thresholds, tps, fps, None, int(tps[-1]), int(fps[-1]))


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
    mask, and the weight 1 / (n_regions * region_size) of one pixel of each region.
    Defect-free images are skipped and region sizes are counted per labelled image."""
    regions = np.zeros(masks.shape, dtype=np.int32)
    sizes = [np.zeros(1, dtype=np.intp)]
    offset = 0
    for i in range(masks.shape[0]):
        if not masks[i].any():
            continue
        n = ndimage.label(masks[i], structure=_EIGHT_CONNECTED, output=regions[i])
        sizes.append(np.bincount(regions[i].ravel(), minlength=n + 1)[1:])
        np.add(regions[i], offset, out=regions[i], where=masks[i])
        offset += n
    sizes = np.concatenate(sizes)
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
