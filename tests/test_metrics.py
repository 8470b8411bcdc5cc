"""nfbench.metrics against known answers, sklearn and slow, obviously-correct references."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from nfbench import metrics


# --------------------------------------------------------------------------- helpers


def random_masks(rng, n=4, h=24, w=24, blobs=3, normal=1):
    """``n`` images, the first ``normal`` defect-free, the others with a few random rectangles
    (several regions per image, some touching each other)."""
    masks = np.zeros((n, h, w), dtype=bool)
    for i in range(normal, n):
        for _ in range(blobs):
            y, x = rng.integers(0, h - 2), rng.integers(0, w - 2)
            dy, dx = rng.integers(1, max(2, h // 4)), rng.integers(1, max(2, w // 4))
            masks[i, y:y + dy, x:x + dx] = True
    return masks


def slow_aupro(masks, maps, fpr_limit):
    """Straight from the definition: loop over distinct thresholds, descending."""
    regions = []
    for i, mask in enumerate(masks):
        lab, n = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [(i, lab == k) for k in range(1, n + 1)]
    normal = ~masks
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        hit = maps >= t
        fprs.append(np.count_nonzero(hit & normal) / np.count_nonzero(normal))
        pros.append(np.mean([np.count_nonzero(hit[i] & r) / np.count_nonzero(r)
                             for i, r in regions]))
    area = 0.0
    for k in range(1, len(fprs)):
        x0, x1, y0, y1 = fprs[k - 1], fprs[k], pros[k - 1], pros[k]
        if x0 >= fpr_limit:
            break
        if x1 > fpr_limit:
            y_end = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            area += (fpr_limit - x0) * (y0 + y_end) / 2
            break
        area += (x1 - x0) * (y0 + y1) / 2
    return area / fpr_limit


def slow_f1_max(masks, maps):
    best, best_t = -1.0, None
    for t in np.unique(maps)[::-1]:
        pred = maps >= t
        tp = np.count_nonzero(pred & masks)
        fp = np.count_nonzero(pred & ~masks)
        fn = np.count_nonzero(~pred & masks)
        f1 = 2 * tp / (2 * tp + fp + fn)
        if f1 > best:
            best, best_t = f1, t
    return best, best_t


# --------------------------------------------------------------------------- known answers


def test_perfect_and_inverted_maps():
    rng = np.random.default_rng(0)
    masks = random_masks(rng, n=5)
    noise = rng.random(masks.shape).astype(np.float32) * 0.5
    perfect = masks + noise          # every defect pixel above every normal pixel
    inverted = (~masks) + noise
    assert metrics.pixel_auroc(masks, perfect) == pytest.approx(1.0, abs=1e-12)
    assert metrics.pixel_aupr(masks, perfect) == pytest.approx(1.0, abs=1e-12)
    assert metrics.aupro(masks, perfect) == pytest.approx(1.0, abs=1e-12)
    assert metrics.f1_max(masks, perfect) == pytest.approx(1.0, abs=1e-12)
    assert metrics.pixel_auroc(masks, inverted) == pytest.approx(0.0, abs=1e-12)
    assert metrics.aupro(masks, inverted) == pytest.approx(0.0, abs=1e-12)

    labels = np.array([0, 0, 1, 1, 1])
    assert metrics.image_auroc(labels, [0.1, 0.2, 0.3, 0.5, 0.4]) == 1.0
    assert metrics.image_auroc(labels, [0.9, 0.8, 0.3, 0.5, 0.4]) == 0.0
    # all scores tied: the ROC is the diagonal
    assert metrics.image_auroc(labels, np.ones(5)) == pytest.approx(0.5)


def test_regions_are_8_connected_and_weighted_equally():
    # Region A: two diagonal neighbours (ONE region under 8-connectivity), region B: one pixel.
    masks = np.zeros((1, 5, 5), dtype=bool)
    masks[0, 0, 0] = masks[0, 1, 1] = True
    masks[0, 4, 4] = True
    maps = np.full((1, 5, 5), 0.5)
    maps[0, 0, 0] = maps[0, 1, 1] = 1.0
    maps[0, 4, 4] = 0.0
    # t=1: FPR 0, PRO (1 + 0)/2; t=0.5: FPR 1, same PRO; t=0: (1, 1). Area to FPR 1 = 1/2.
    # (Three 4-connected regions would give 2/3; pixel-weighting would give 2/3 as well.)
    assert metrics.aupro(masks, maps, fpr_limit=1.0) == pytest.approx(0.5, abs=1e-12)
    # Cut at 0.3 on the flat part: (0.3 * 0.5) / 0.3.
    assert metrics.aupro(masks, maps, fpr_limit=0.3) == pytest.approx(0.5, abs=1e-12)


def test_ties_give_one_curve_point():
    # One image, all scores equal: the only curve point is (1, 1), so the cut at 0.3 lies on the
    # straight segment from (0, 0): area 0.3**2 / 2, normalized 0.15. Splitting the tie into
    # per-pixel points would depend on the sort order instead.
    masks = np.zeros((2, 6, 6), dtype=bool)
    masks[1, 1:3, 1:4] = True
    maps = np.zeros(masks.shape, dtype=np.float32)
    assert metrics.aupro(masks, maps) == pytest.approx(0.15, abs=1e-12)
    assert metrics.pixel_auroc(masks, maps) == pytest.approx(0.5, abs=1e-12)
    assert metrics.pixel_aupr(masks, maps) == pytest.approx(masks.mean(), abs=1e-12)


# anomalib's AUPRO test: one image of 400 rows x 7 columns, scores arange(2800)/2800 in row-major
# order (so score rises with the row), positives in whole columns. Going down the thresholds, each
# row adds its normal pixels to the FPR and its defect pixels to the PRO in equal proportion, so
# the curve hugs the diagonal PRO = FPR; with fpr_limit = 1/3 the area is (1/3)^2 / 2 and the
# normalized AUPRO is 1/6 up to the staircase inside the last, partial row. The exact value:
# every full row k (k = 0..132 counted from the top) contributes the area of the diagonal over
# that row, (2k+1) / (2 * 400^2), summing to 133^2 / 320000; the partial row 133 adds a flat
# step at height 133/400 (one column: 2 normal pixels of 2400; three columns: 1 normal pixel of
# 1600 at height 133/400 and the remaining 1/3 pixel at 133/400 + 1/1200).
ANOMALIB_ONE = 3 * (133**2 / 320000 + (2 / 2400) * (133 / 400))
ANOMALIB_THREE = 3 * (133**2 / 320000 + (1 / 1600) * (133 / 400)
                      + (1 / 3) * (1 / 1600) * (133 / 400 + 1 / 1200))


def _anomalib_case(columns):
    masks = np.zeros((1, 400, 7), dtype=bool)
    masks[0, :, columns] = True
    maps = (np.arange(2800, dtype=np.float32) / np.float32(2800)).reshape(1, 400, 7)
    return masks, maps


@pytest.mark.parametrize("columns, expected", [([3], ANOMALIB_ONE), ([1, 3, 5], ANOMALIB_THREE)])
def test_anomalib_aupro_case(columns, expected):
    masks, maps = _anomalib_case(columns)
    got = metrics.aupro(masks, maps, fpr_limit=1 / 3)
    assert got == pytest.approx(expected, abs=1e-12)
    assert got == pytest.approx(1 / 6, abs=2e-6)      # anomalib's expected answer
    assert got == pytest.approx(slow_aupro(masks, maps, 1 / 3), abs=1e-12)


def test_anomalib_aupro_case_both_images():
    # anomalib's third case: both images together (4 regions, averaged), still about 1/6.
    m1, p1 = _anomalib_case([3])
    m3, p3 = _anomalib_case([1, 3, 5])
    masks, maps = np.concatenate([m1, m3]), np.concatenate([p1, p3])
    got = metrics.aupro(masks, maps, fpr_limit=1 / 3)
    assert got == pytest.approx(1 / 6, abs=1e-5)
    assert got == pytest.approx(slow_aupro(masks, maps, 1 / 3), abs=1e-12)


def test_uniform_random_maps_give_aupro_near_limit_over_two():
    # Random scores: PRO(t) ~ FPR(t), so area ~ 0.3^2 / 2 and AUPRO ~ 0.15.
    rng = np.random.default_rng(1)
    values = []
    for _ in range(4):
        masks = random_masks(rng, n=8, h=64, w=64, blobs=4, normal=2)
        maps = rng.random(masks.shape, dtype=np.float32)
        values.append(metrics.aupro(masks, maps))
    assert abs(np.mean(values) - 0.15) < 0.02
    assert all(0.1 < v < 0.2 for v in values)


# --------------------------------------------------------------------------- references


@pytest.mark.parametrize("seed", range(4))
def test_roc_and_ap_equal_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    masks = random_masks(rng, n=5, h=20, w=20)
    maps = np.round(rng.random(masks.shape) + 0.3 * masks, 1)      # heavy ties
    assert np.unique(maps).size < 20
    y, s = masks.ravel(), maps.ravel()
    assert metrics.pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(y, s), abs=1e-9)
    assert metrics.pixel_aupr(masks, maps) == pytest.approx(average_precision_score(y, s), abs=1e-9)

    labels = rng.integers(0, 2, 40)
    labels[:2] = [0, 1]
    scores = np.round(rng.normal(size=40) + labels, 1).astype(np.float32)
    expected = roc_auc_score(labels, scores)
    assert metrics.image_auroc(labels, scores) == pytest.approx(expected, abs=1e-9)


def test_continuous_float32_maps_equal_sklearn():
    rng = np.random.default_rng(7)
    masks = random_masks(rng, n=6, h=32, w=32)
    maps = (rng.random(masks.shape) + 0.2 * masks).astype(np.float32)
    y, s = masks.ravel(), maps.ravel()
    assert metrics.pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(y, s), abs=1e-9)
    assert metrics.pixel_aupr(masks, maps) == pytest.approx(average_precision_score(y, s), abs=1e-9)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("fpr_limit", [0.3, 0.05, 1.0])
def test_aupro_equals_slow_reference(seed, fpr_limit):
    rng = np.random.default_rng(100 + seed)
    masks = random_masks(rng, n=4, h=16, w=16, blobs=4)
    # rounded scores: many ties, including ties between defect and defect-free pixels
    maps = np.round(rng.random(masks.shape) + 0.4 * masks, 2 if seed % 2 else 1)
    expected = slow_aupro(masks, maps, fpr_limit)
    assert metrics.aupro(masks, maps, fpr_limit=fpr_limit) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_f1_max_equals_brute_force(seed):
    rng = np.random.default_rng(200 + seed)
    masks = random_masks(rng, n=3, h=16, w=16)
    maps = np.round(rng.random(masks.shape) + 0.3 * masks, 1 + seed % 2)
    f1, threshold = metrics.f1_max_threshold(masks, maps)
    best, best_t = slow_f1_max(masks, maps)
    assert f1 == pytest.approx(best, abs=1e-12)
    assert threshold == best_t
    assert metrics.f1_max(masks, maps) == f1


def test_f1_max_threshold_prefers_highest_threshold_on_ties():
    # t=0.9: TP 1, FP 0 -> F1 2/3; t=0.6: TP 2, FP 2 -> F1 4/6 = 2/3 as well.
    masks = np.array([[[True, False, False, True]]])
    maps = np.array([[[0.9, 0.8, 0.7, 0.6]]])
    assert metrics.f1_max_threshold(masks, maps) == (pytest.approx(2 / 3), 0.9)


def test_compute_all_matches_individual_functions():
    rng = np.random.default_rng(3)
    masks = random_masks(rng, n=6, h=20, w=20, normal=2)
    maps = np.round(rng.random(masks.shape) + 0.3 * masks, 2).astype(np.float32)
    labels = masks.any(axis=(1, 2)).astype(int)
    image_scores = maps.max(axis=(1, 2))
    out = metrics.compute_all(labels, image_scores, masks, maps)
    assert set(out) == set(metrics.METRIC_KEYS) | set(metrics.METRIC_VARIANTS)
    assert out["image_auroc"] == metrics.image_auroc(labels, image_scores)
    assert out["pixel_auroc"] == pytest.approx(metrics.pixel_auroc(masks, maps), abs=1e-12)
    assert out["pixel_aupr"] == pytest.approx(metrics.pixel_aupr(masks, maps), abs=1e-12)
    assert out["aupro"] == pytest.approx(metrics.aupro(masks, maps), abs=1e-12)
    assert out["f1_max"] == pytest.approx(metrics.f1_max(masks, maps), abs=1e-12)
    assert out["pixel_aupr@clscnf"] == pytest.approx(metrics.pixel_aupr_clscnf(masks, maps), abs=1e-12)
    assert out["aupro@clscnf"] == pytest.approx(metrics.aupro_clscnf(masks, maps), abs=1e-12)
    assert out["pixel_auroc@patchflow"] == pytest.approx(
        metrics.pixel_auroc_patchflow(labels, masks, maps), abs=1e-12)
    assert all(isinstance(v, float) for v in out.values())


def _separately(labels, image_scores, masks, maps):
    """compute_all as it was before the shared sort: every metric from its own function."""
    return {
        "image_auroc": metrics.image_auroc(labels, image_scores),
        "pixel_auroc": metrics.pixel_auroc(masks, maps),
        "pixel_aupr": metrics.pixel_aupr(masks, maps),
        "aupro": metrics.aupro(masks, maps),
        "f1_max": metrics.f1_max(masks, maps),
        "pixel_aupr@clscnf": metrics.pixel_aupr_clscnf(masks, maps),
        "aupro@clscnf": metrics.aupro_clscnf(masks, maps),
        "pixel_auroc@patchflow": metrics.pixel_auroc_patchflow(labels, masks, maps),
    }


@pytest.mark.parametrize("case", ["continuous", "ties", "float64", "all_defective",
                                  "none_defective", "mask_in_normal_image", "constant",
                                  "large"])
def test_compute_all_is_bit_identical_to_separate_functions(case):
    """One shared sort must give every value to the last bit (ties, subsets, dtypes)."""
    rng = np.random.default_rng(7)
    side = 181 if case == "large" else 31  # large: BLAS dot products over ~100k points
    masks = random_masks(rng, n=7, h=side, w=side - 2, normal=3)
    maps = (rng.random(masks.shape) + 0.4 * masks).astype(np.float32)
    labels = masks.any(axis=(1, 2)).astype(int)
    if case == "ties":
        maps = np.round(maps * 8).astype(np.float32) / 8
    elif case == "float64":
        maps = maps.astype(np.float64) + 1e-9 * rng.random(masks.shape)
    elif case == "all_defective":
        labels[:] = 1
    elif case == "none_defective":
        labels[:] = 0
    elif case == "mask_in_normal_image":
        labels[3] = 0  # a mask pixel in an image labelled normal: outside PatchFlow's subset
    elif case == "constant":
        maps = np.full(masks.shape, 0.5, dtype=np.float32)
    image_scores = maps.max(axis=(1, 2)) + 0.01 * rng.random(masks.shape[0])
    out = metrics.compute_all(labels, image_scores, masks, maps)
    expected = _separately(labels, image_scores, masks, maps)
    assert out.keys() == expected.keys()
    for key, value in expected.items():
        assert (math.isnan(value) and math.isnan(out[key])) or out[key] == value, key


@pytest.mark.parametrize("fpr_limit", [1e-4, 0.05, 0.3, 0.999, 1.0])
@pytest.mark.parametrize("ties", [False, True])
def test_compute_all_aupro_is_bit_identical_at_any_fpr_limit(fpr_limit, ties):
    """compute_all reads AUPRO from the prefix of the curve up to fpr_limit (and one point
    more): the value must equal aupro's over the whole curve, at tiny and full limits."""
    rng = np.random.default_rng(11)
    masks = random_masks(rng, n=6, h=40, w=37, normal=2)
    maps = (rng.random(masks.shape) + 0.3 * masks).astype(np.float32)
    if ties:
        maps = np.round(maps * 16).astype(np.float32) / 16
    labels = masks.any(axis=(1, 2)).astype(int)
    out = metrics.compute_all(labels, maps.max(axis=(1, 2)), masks, maps, fpr_limit=fpr_limit)
    assert out["aupro"] == metrics.aupro(masks, maps, fpr_limit=fpr_limit)
    cdo = metrics.aupro_clscnf(masks, maps, fpr_limit=fpr_limit)  # nan: one point under 1e-4
    assert out["aupro@clscnf"] == cdo or (math.isnan(cdo) and math.isnan(out["aupro@clscnf"]))


def test_undefined_metrics_are_nan():
    masks = np.zeros((3, 8, 8), dtype=bool)
    maps = np.random.default_rng(0).random(masks.shape)
    out = metrics.compute_all([0, 0, 0], [0.1, 0.2, 0.3], masks, maps)
    assert all(math.isnan(v) for v in out.values())
    assert math.isnan(metrics.aupro(masks, maps))
    assert math.isnan(metrics.pixel_auroc(masks, maps))
    assert all(math.isnan(v) for v in metrics.f1_max_threshold(masks, maps))
    assert math.isnan(metrics.image_auroc([1, 1], [0.2, 0.3]))


# --------------------------------------------------------------------------- validation


def test_input_validation():
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[1, 1, 1] = True
    maps = np.zeros((2, 4, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="same shape"):
        metrics.pixel_auroc(masks, maps[:, :3])
    with pytest.raises(ValueError, match="same shape"):
        metrics.aupro(masks, maps[:1])
    with pytest.raises(ValueError, match="same shape"):
        metrics.image_auroc([0, 1, 1], [0.1, 0.2])
    bad = maps.copy()
    bad[0, 0, 0] = np.nan
    for fn in (metrics.pixel_auroc, metrics.pixel_aupr, metrics.aupro, metrics.f1_max):
        with pytest.raises(ValueError, match="non-finite"):
            fn(masks, bad)
    bad[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        metrics.aupro(masks, bad)
    with pytest.raises(ValueError, match="non-finite"):
        metrics.image_auroc([0, 1], [np.nan, 0.3])
    with pytest.raises(ValueError, match="binary"):
        metrics.pixel_auroc(masks * 255, maps)
    with pytest.raises(ValueError, match="binary"):
        metrics.image_auroc([0, 2], [0.1, 0.3])
    with pytest.raises(ValueError, match="fpr_limit"):
        metrics.aupro(masks, maps, fpr_limit=0.0)
    with pytest.raises(ValueError, match="images"):
        metrics.compute_all([0, 1, 1], [0.1, 0.2, 0.3], masks, maps)
    # 0/1 integer masks are accepted and mean the same as bool masks
    assert metrics.pixel_auroc(masks.astype(np.uint8), maps) == metrics.pixel_auroc(masks, maps)


# --------------------------------------------------------------------------- paper variants
# Each variant against a direct, slow transcription of the paper's own metric code.


def slow_cdo_aupro(labeled_imgs, score_imgs, fpr_thresh=0.3, max_steps=200):
    """AD-CLSCNFs evaluate.py ``cal_pro_metric`` (from CDO), transcribed step by step."""
    from skimage import measure
    from sklearn.metrics import auc

    labeled_imgs = np.array(labeled_imgs, dtype=np.float64)
    labeled_imgs[labeled_imgs <= 0.45] = 0
    labeled_imgs[labeled_imgs > 0.45] = 1
    labeled_imgs = labeled_imgs.astype(bool)
    max_th, min_th = score_imgs.max(), score_imgs.min()
    delta = (max_th - min_th) / max_steps
    pros_mean, fprs = [], []
    binary_score_maps = np.zeros_like(score_imgs, dtype=bool)
    for step in range(max_steps):
        thred = max_th - step * delta
        binary_score_maps[score_imgs <= thred] = 0
        binary_score_maps[score_imgs > thred] = 1
        pro = []
        for i in range(len(binary_score_maps)):
            label_map = measure.label(labeled_imgs[i], connectivity=2)
            for prop in measure.regionprops(label_map):
                x_min, y_min, x_max, y_max = prop.bbox
                cropped_pred_label = binary_score_maps[i][x_min:x_max, y_min:y_max]
                cropped_mask = prop.image_filled  # filled_image in skimage < 0.26
                intersection = np.logical_and(cropped_pred_label, cropped_mask).astype(np.float32).sum()
                pro.append(intersection / prop.area)
        pros_mean.append(np.array(pro).mean())
        masks_neg = ~labeled_imgs
        fprs.append(np.logical_and(masks_neg, binary_score_maps).sum() / masks_neg.sum())
    pros_mean, fprs = np.array(pros_mean), np.array(fprs)
    idx = fprs <= fpr_thresh
    selected = fprs[idx]
    selected = (selected - selected.min()) / (selected.max() - selected.min())
    return auc(selected, pros_mean[idx])


def _holed_masks(rng):
    masks = random_masks(rng, n=5, h=24, w=24, normal=1)
    masks[3, 4:13, 4:13] = True  # a ring: its hole is background inside a region
    masks[3, 7:10, 7:10] = False
    return masks


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aupro_clscnf_matches_transcription_of_cdo_code(seed):
    rng = np.random.default_rng(seed)
    masks = _holed_masks(rng)
    maps = (rng.random(masks.shape) + 0.8 * masks).astype(np.float32)
    maps[0, :2, :2] = 2.5  # a far outlier stretches the 200 steps
    fast = metrics.aupro_clscnf(masks, maps)
    assert fast == pytest.approx(slow_cdo_aupro(masks, maps), abs=1e-9)
    # float masks thresholded at 0.45, as the original does
    soft = masks * 0.5 + (~masks) * 0.4
    assert metrics.aupro_clscnf(soft, maps) == pytest.approx(fast, abs=1e-12)
    # it is a different number from the official AUPRO (steps, no interpolation, rescaling)
    assert abs(fast - metrics.aupro(masks, maps)) > 1e-4


def test_aupro_clscnf_filled_region_overlap_can_exceed_one():
    masks = np.zeros((1, 9, 9), dtype=bool)
    masks[0, 1:8, 1:8] = True
    masks[0, 3:6, 3:6] = False  # hole of 9 pixels inside a 40-pixel ring
    maps = np.where(masks, 1.0, 0.0)
    maps[0, 3:6, 3:6] = 1.0  # the hole scores like the defect: counted, but not in the area
    maps[0, 0, 0] = 0.5
    value = metrics.aupro_clscnf(masks, maps)
    assert value == pytest.approx(slow_cdo_aupro(masks, maps), abs=1e-12)
    # PRO = (40 + 9) / 40 from the first step below 1.0 on: FPR 9/41 there, 10/41 below 0.5,
    # rescaled by 10/41 to 0.9 and 1.0: area 0.9 * 1.225 / 2 + 0.1 * 1.225
    assert value == pytest.approx(0.9 * 1.225 / 2 + 0.1 * 1.225, abs=1e-12)


def test_pixel_aupr_clscnf_is_sklearn_auc_of_pr_curve():
    from sklearn.metrics import auc, precision_recall_curve

    rng = np.random.default_rng(5)
    masks = random_masks(rng, n=6, h=16, w=16, normal=2)
    maps = np.round(rng.random(masks.shape) + 0.4 * masks, 2)  # ties
    precision, recall, _ = precision_recall_curve(masks.ravel(), maps.ravel())
    expected = auc(recall, precision)
    assert metrics.pixel_aupr_clscnf(masks, maps) == pytest.approx(expected, abs=1e-12)
    assert abs(expected - average_precision_score(masks.ravel(), maps.ravel())) > 1e-4
    assert metrics.pixel_aupr_clscnf(masks, np.where(masks, 1.0, 0.0)) == pytest.approx(1.0)


def test_pixel_auroc_patchflow_uses_defective_images_only():
    rng = np.random.default_rng(7)
    masks = random_masks(rng, n=6, h=16, w=16, normal=3)
    maps = rng.random(masks.shape) + 0.5 * masks
    maps[:3] += 0.6  # normal images score high: only the official metric sees them
    labels = masks.any(axis=(1, 2)).astype(int)
    defective = labels.astype(bool)
    expected = roc_auc_score(masks[defective].ravel(), maps[defective].ravel())
    assert metrics.pixel_auroc_patchflow(labels, masks, maps) == pytest.approx(expected, abs=1e-12)
    assert metrics.pixel_auroc(masks, maps) < expected - 0.05


def test_metric_variants_name_their_official_metric():
    for name in metrics.METRIC_VARIANTS:
        assert metrics.official_metric(name) in metrics.METRIC_KEYS
    assert metrics.official_metric("aupro") == "aupro"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_one_sort_is_descending_with_ties_in_index_order(dtype):
    """The curve's sort (packed uint64 keys for float32 maps, a stable argsort otherwise) gives
    values descending and equal values in index order: a fully specified order, so the PRO
    cumulative sum is the same on every machine (numpy's argsort leaves ties unspecified)."""
    from nfbench.metrics.curves import _descending_order

    rng = np.random.default_rng(3)
    scores = np.concatenate([np.round(rng.standard_normal(5000), 1), [0.0, -0.0, 3.5, -7.25],
                             np.full(50, 1.0)]).astype(dtype)
    rng.shuffle(scores)
    order, values = _descending_order(scores)
    reference = np.lexsort((np.arange(scores.size), -scores.astype(np.float64)))
    assert np.array_equal(values, scores[order]) and values.dtype == scores.dtype
    assert np.all(values[:-1] >= values[1:])
    # equal values (0.0 and -0.0 apart, which the packed keys order +0 before -0) in index order
    same = (values[:-1] == values[1:]) & (np.signbit(values[:-1]) == np.signbit(values[1:]))
    assert np.all(order[:-1][same] < order[1:][same])
    assert np.array_equal(scores[order], scores[reference])
