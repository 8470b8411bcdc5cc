"""95 % intervals of reproduced numbers, and verdicts against published ones.

Two sources of uncertainty, combined as ``docs/uncertainty.md`` explains:

* **the test set** -- a stratified bootstrap of the test images of one category: normal and
  anomalous images are resampled separately (with replacement, each class keeping its size),
  so every replicate has both classes and the same class balance as the test set. The
  resample indices depend only on the labels and :data:`BOOT_SEED`, so two runs on the same
  test set (other seeds, other variants, a peer) see the *same* resamples: replicate ``b`` of
  two runs is paired. An average over categories averages replicate ``b`` of every category
  (each category's test set resampled independently: the whole benchmark resampled jointly).
* **training seeds** -- where a number is the mean of ``k > 1`` seeds, the seed spread.

The interval of one seed is the percentile interval of its bootstrap replicates. Over
``k > 1`` seeds: the seed mean ± sqrt((t_{k-1}·s/√k)² + (z·SE_boot)²), the t half-width of
the seed means and the normal half-width of the bootstrap SE of the seed-mean replicates
added in quadrature (independent sources; either one only widens the interval).

Pixel metrics are bootstrapped from per-image sufficient statistics (:func:`pixel_statistics`:
per-image histograms of normal and defective pixel scores on shared quantile bins, and one
histogram per defect region for AUPRO), computed when a run is scored; each replicate is
the binned metric of the resampled images, shifted by the binning error of the full test set
(binned minus exact), so the interval is centred on the exact value's scale.

Values here are fractions (AUROC 0-1); tables multiply by 100.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: replicates per bootstrap (stored in run records: enough for a 95 % percentile interval at
#: about ±0.01 AUROC precision of its ends, small enough to keep records small)
N_BOOT = 200
#: the one bootstrap seed: equal labels give equal resamples (paired comparisons)
BOOT_SEED = 20
LEVEL = 0.95
#: metrics bootstrapped at record time (official definitions; the papers' variants are not)
BOOTSTRAPPED = ("image_auroc", "pixel_auroc", "pixel_aupr", "aupro", "f1_max")
#: verdicts against a published number, and of a two-sided comparison
REPRODUCES, BELOW, ABOVE = "reproduces", "below", "above"


@dataclass(frozen=True)
class Interval:
    """``point`` with its ``level`` interval [``lo``, ``hi``] (nan where none is known), from
    ``n_seeds`` seeds and ``n_boot`` bootstrap replicates (0: no test-set resampling)."""

    point: float
    lo: float
    hi: float
    n_seeds: int
    n_boot: int

    @property
    def known(self) -> bool:
        return math.isfinite(self.lo) and math.isfinite(self.hi)

    def contains(self, value: float) -> bool:
        return self.known and self.lo <= value <= self.hi

    def scaled(self, factor: float) -> "Interval":
        return Interval(self.point * factor, self.lo * factor, self.hi * factor,
                        self.n_seeds, self.n_boot)


def stratified_indices(labels, n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> np.ndarray:
    """``[n_boot, N]`` image indices: row ``b`` resamples the normal images among the normal
    ones and the anomalous among the anomalous (with replacement), normal ones first."""
    labels = np.asarray(labels).astype(bool)
    rng = np.random.default_rng(seed)
    normal, anomalous = np.flatnonzero(~labels), np.flatnonzero(labels)
    parts = [group[rng.integers(0, len(group), size=(n_boot, len(group)))]
             for group in (normal, anomalous) if len(group)]
    return np.concatenate(parts, axis=1) if parts else np.zeros((n_boot, 0), dtype=int)


def _auroc_rows(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUROC of every row of ``scores`` [B, N] (ties count one half)."""
    from scipy.stats import rankdata

    pos = labels.astype(bool)
    n1, n0 = int(pos.sum()), int((~pos).sum())
    ranks = rankdata(scores, axis=1)
    return (ranks[:, pos].sum(axis=1) - n1 * (n1 + 1) / 2) / (n0 * n1)


def image_auroc_replicates(labels, scores, n_boot: int = N_BOOT,
                           seed: int = BOOT_SEED) -> np.ndarray:
    """``n_boot`` bootstrap replicates of the image AUROC (:func:`stratified_indices`)."""
    labels, scores = np.asarray(labels).astype(bool), np.asarray(scores, dtype=np.float64)
    idx = stratified_indices(labels, n_boot, seed)
    return _auroc_rows(labels[idx[0]], scores[idx])


def pixel_statistics(masks, maps, bins: int = 256, sample: int = 2_000_000
                     ) -> dict[str, np.ndarray]:
    """Per-image sufficient statistics of the pixel metrics: shared bin edges (quantiles of
    the pixel scores, estimated on at most ``sample`` evenly strided pixels), per-image
    histograms of normal and defective pixel scores ``[N, bins]``, one histogram per defect
    region (8-connected, as the AUPRO) ``[R, bins]`` with its image index ``[R]``. Image by
    image: memory stays at one image's pixels beyond the inputs."""
    from scipy import ndimage

    from nfbench.metrics.curves import _EIGHT_CONNECTED

    masks, maps = np.asarray(masks), np.asarray(maps)
    flat = maps.reshape(-1)
    step = max(1, flat.size // sample)
    edges = np.unique(np.quantile(flat[::step].astype(np.float64), np.linspace(0, 1, bins + 1)))
    k = max(len(edges) - 1, 1)
    normal, defect, region_hist, region_image = [], [], [], []
    for i in range(maps.shape[0]):
        which = np.clip(np.searchsorted(edges, maps[i].astype(np.float64), side="right") - 1, 0, k - 1)
        truth = masks[i] > 0.5
        normal.append(np.bincount(which[~truth], minlength=k))
        defect.append(np.bincount(which[truth], minlength=k))
        labels, n = ndimage.label(truth, structure=_EIGHT_CONNECTED)
        if n:
            inside = labels > 0
            region_hist.append(np.bincount((labels[inside] - 1) * k + which[inside],
                                           minlength=n * k).reshape(n, k))
            region_image += [i] * n
    return {"edges": edges, "normal": np.stack(normal), "defect": np.stack(defect),
            "region_hist": np.concatenate(region_hist) if region_hist else np.zeros((0, k), int),
            "region_image": np.asarray(region_image, dtype=int)}


def _binned_metrics(normal: np.ndarray, defect: np.ndarray, pro: np.ndarray | None,
                    fpr_limit: float = 0.3) -> dict[str, np.ndarray]:
    """Pixel metrics of binned counts ``[B, K]`` (bins in ascending score order), each bin a
    threshold; ``pro`` ``[B, K]``: PRO at each bin's threshold (None: no AUPRO)."""
    fp = np.cumsum(normal[:, ::-1], axis=1)  # pixels scoring >= threshold, descending
    tp = np.cumsum(defect[:, ::-1], axis=1)
    n_neg, n_pos = fp[:, -1:], tp[:, -1:]
    fpr, tpr = fp / np.maximum(n_neg, 1), tp / np.maximum(n_pos, 1)
    zero = np.zeros((len(fp), 1))
    auroc = np.trapezoid(np.hstack([zero, tpr]), np.hstack([zero, fpr]), axis=1)
    precision = tp / np.maximum(tp + fp, 1)
    aupr = np.sum(np.diff(np.hstack([zero, tpr]), axis=1) * precision, axis=1)
    f1 = np.max(2 * tp / np.maximum(2 * tp + fp + (n_pos - tp), 1), axis=1)
    out = {"pixel_auroc": auroc, "pixel_aupr": aupr, "f1_max": f1}
    if pro is not None:
        x, y = np.hstack([zero, fpr]), np.hstack([zero, pro[:, ::-1]])
        values = []
        for xs, ys in zip(x, y):  # cut at fpr_limit with an interpolated end point
            keep = xs <= fpr_limit
            xe, ye = xs[keep], ys[keep]
            if xe[-1] < fpr_limit and keep.sum() < len(xs):
                xe = np.append(xe, fpr_limit)
                ye = np.append(ye, np.interp(fpr_limit, xs, ys))
            values.append(np.trapezoid(ye, xe) / fpr_limit)
        out["aupro"] = np.asarray(values)
    return out


def pixel_replicates(stats: dict[str, np.ndarray], labels, exact: dict[str, float],
                     n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> dict[str, np.ndarray]:
    """Bootstrap replicates of the pixel metrics (``pixel_auroc``, ``pixel_aupr``, ``aupro``,
    ``f1_max``) from :func:`pixel_statistics`, resampling the images as
    :func:`stratified_indices` does; each shifted by ``exact[m]`` minus the binned value of
    the full test set."""
    idx = stratified_indices(labels, n_boot, seed)
    n = len(np.asarray(labels))
    weights = np.stack([np.bincount(row, minlength=n) for row in idx]).astype(np.float64)
    ones = np.ones((1, n))

    def metrics_of(w: np.ndarray) -> dict[str, np.ndarray]:
        pro = None
        if len(stats["region_image"]):
            sizes = stats["region_hist"].sum(axis=1, keepdims=True)
            frac = np.cumsum(stats["region_hist"][:, ::-1], axis=1)[:, ::-1] / sizes
            wr = w[:, stats["region_image"]]
            pro = (wr @ frac) / np.maximum(wr.sum(axis=1, keepdims=True), 1e-12)
        return _binned_metrics(w @ stats["normal"], w @ stats["defect"], pro)

    full, boot = metrics_of(ones), metrics_of(weights)
    return {m: boot[m] + (exact[m] - full[m][0]) for m in boot
            if exact.get(m) is not None and np.isfinite(exact[m])}


def interval(points: Sequence[float], replicates: np.ndarray | None = None,
             level: float = LEVEL) -> Interval:
    """The interval of a number measured with ``k = len(points)`` seeds (its point: their
    mean). ``replicates`` ``[k, B]``: each seed's bootstrap replicates, paired (the same
    resamples of the same test set), or None. One seed: the percentile interval of its
    replicates (none without them); ``k > 1``: mean ± sqrt((t_{k-1}·s/√k)² + (z·SE_boot)²)
    (SE_boot: the standard deviation of the seed-mean replicates, :func:`_t_interval`)."""
    points = np.asarray([p for p in points], dtype=np.float64)
    k = len(points)
    reps = None if replicates is None else np.atleast_2d(np.asarray(replicates, np.float64))
    n_boot = 0 if reps is None else reps.shape[1]
    if k == 0 or not np.isfinite(points).all():
        return Interval(float("nan"), float("nan"), float("nan"), k, n_boot)
    point = float(points.mean())
    alpha = (1 - level) / 2
    if k == 1:
        if reps is None or not np.isfinite(reps).all():
            return Interval(point, float("nan"), float("nan"), 1, 0)
        lo, hi = np.quantile(reps[0], [alpha, 1 - alpha])
        return Interval(point, float(min(lo, point)), float(max(hi, point)), 1, n_boot)
    return _t_interval(point, [(float(np.var(points, ddof=1)), k)],
                       0.0 if reps is None else float(np.var(reps.mean(axis=0), ddof=1)),
                       level, k, n_boot)


def _t_interval(point: float, seed_terms: list[tuple[float, int]], boot_var: float,
                level: float, k: int, n_boot: int) -> Interval:
    """point ± sqrt((t_df·SE_seeds)² + (z·SE_boot)²): the seed half-width (SE_seeds² = Σ s²/k,
    df by Welch-Satterthwaite over the seed terms; one term: k − 1) and the test-set half-width
    (normal quantile) added in quadrature, so either source only ever widens the interval."""
    from scipy.stats import norm, t

    terms = [(s2 / n, n) for s2, n in seed_terms if n > 1]
    seed_var = sum(v for v, _ in terms)
    q = 1 - (1 - level) / 2
    seed_half = 0.0
    if seed_var > 0:
        df = seed_var ** 2 / sum(v * v / (n - 1) for v, n in terms)
        seed_half = float(t.ppf(q, df)) * math.sqrt(seed_var)
    half = math.hypot(seed_half, float(norm.ppf(q)) * math.sqrt(max(boot_var, 0.0)))
    return Interval(point, point - half, point + half, k, n_boot)


def average(parts: Sequence[tuple[Sequence[float], np.ndarray | None]]
            ) -> tuple[list[float], np.ndarray | None]:
    """Points and replicates of the average over categories of ``parts`` (one ``(points
    [k], replicates [k, B] or None)`` per category, the same seeds in the same order):
    per-seed means, and replicate ``b`` averaged over categories (each category resampled
    independently: a joint resample of every test set). Replicates None if any part lacks them."""
    points = np.mean([np.asarray(p, np.float64) for p, _ in parts], axis=0)
    reps = [r for _, r in parts]
    joint = None if any(r is None for r in reps) else np.mean([np.atleast_2d(r) for r in reps], axis=0)
    return points.tolist(), joint


def difference(a: Sequence[float], a_reps: np.ndarray | None, b: Sequence[float],
               b_reps: np.ndarray | None, level: float = LEVEL) -> Interval:
    """The interval of mean(a) − mean(b), two numbers measured on the same test set(s):
    paired bootstrap (replicate ``b`` of both uses the same resample) where both have
    replicates, plus each side's seed variance (Welch-Satterthwaite df). Each side may have
    its own number of seeds."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    point = float(a.mean() - b.mean())
    paired = a_reps is not None and b_reps is not None
    diff = (np.atleast_2d(a_reps).mean(axis=0) - np.atleast_2d(b_reps).mean(axis=0)) if paired else None
    n_boot = 0 if diff is None else len(diff)
    if len(a) == 1 and len(b) == 1:
        if diff is None:
            return Interval(point, float("nan"), float("nan"), 1, 0)
        alpha = (1 - level) / 2
        lo, hi = np.quantile(diff, [alpha, 1 - alpha])
        return Interval(point, float(min(lo, point)), float(max(hi, point)), 1, n_boot)
    terms = [(float(np.var(x, ddof=1)) if len(x) > 1 else 0.0, len(x)) for x in (a, b)]
    if diff is None and any(n == 1 for _, n in terms):
        return Interval(point, float("nan"), float("nan"), max(len(a), len(b)), 0)
    return _t_interval(point, terms, 0.0 if diff is None else float(np.var(diff, ddof=1)),
                       level, max(len(a), len(b)), n_boot)


def verdict(published: float, iv: Interval, tolerance: float | None = None) -> str:
    """*reproduces* (``published`` inside the interval, or within ``tolerance`` of the point),
    else *below* / *above* (the reproduced number below / above the published one)."""
    if iv.contains(published) or (tolerance is not None and abs(iv.point - published) <= tolerance):
        return REPRODUCES
    return BELOW if iv.point < published else ABOVE


def two_sided(diff: Interval, names: tuple[str, str] = ("within noise", "ours above", "ours below")
              ) -> str:
    """A two-sided comparison from the interval of (ours − theirs): ``within noise`` where it
    contains zero (or is unknown), else ``ours above`` / ``ours below``."""
    if not diff.known or diff.lo <= 0 <= diff.hi:
        return names[0]
    return names[1] if diff.lo > 0 else names[2]


def resolved(diff: Interval) -> bool:
    """A question "does A beat B" is resolved only when the interval of A − B excludes zero."""
    return diff.known and not (diff.lo <= 0 <= diff.hi)


def record_bootstrap(labels, image_scores, masks, maps, exact: dict[str, float],
                     n_boot: int = N_BOOT) -> dict[str, list[float]]:
    """Replicates of :data:`BOOTSTRAPPED` for one scored test set, as a run record stores
    them (rounded to 6 decimals; an undefined metric left out)."""
    out = {}
    if exact.get("image_auroc") is not None and np.isfinite(exact["image_auroc"]):
        out["image_auroc"] = image_auroc_replicates(labels, image_scores, n_boot)
    if np.asarray(masks).any():
        out.update(pixel_replicates(pixel_statistics(masks, maps), labels, exact, n_boot))
    return {m: np.round(v, 6).tolist() for m, v in out.items() if m in BOOTSTRAPPED}
