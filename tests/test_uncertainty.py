"""Intervals and verdicts (nfbench/metrics/uncertainty.py) against known answers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm, t

from nfbench.metrics import compute_all
from nfbench.metrics import uncertainty as u


def test_separable_scores_have_auroc_one_with_interval_one_one():
    labels = np.r_[np.zeros(20), np.ones(10)]
    scores = labels + np.linspace(0, 0.5, 30)
    reps = u.image_auroc_replicates(labels, scores)
    iv = u.interval([1.0], reps[None])
    assert (iv.lo, iv.hi) == (1.0, 1.0)
    assert u.verdict(1.0, iv) == u.REPRODUCES and u.verdict(0.99, iv) == u.ABOVE


def test_stratified_resamples_keep_each_class_and_are_paired():
    labels = np.array([0, 1, 0, 0, 1, 0])
    idx = u.stratified_indices(labels, 50)
    assert (labels[idx].sum(axis=1) == 2).all()  # the class balance of the test set
    assert (idx == u.stratified_indices(labels, 50)).all()  # same labels, same resamples


def test_binormal_coverage_is_near_95_percent():
    """Normal scores N(0, 1), anomalous N(d, 1): the true AUROC is Phi(d / sqrt 2); the
    percentile interval of one test set holds it in about 95 % of 300 test sets."""
    d, rng, hits = 1.0, np.random.default_rng(0), 0
    truth = norm.cdf(d / np.sqrt(2))
    labels = np.r_[np.zeros(60), np.ones(40)]
    for _ in range(300):
        scores = rng.normal(size=100) + d * labels
        reps = u.image_auroc_replicates(labels, scores)
        hits += u.interval([0.0], reps[None]).contains(truth) or False
    assert 0.90 <= hits / 300 <= 0.99


def test_seeds_without_test_resampling_give_the_t_interval():
    points = [0.90, 0.92, 0.94]
    iv = u.interval(points)
    half = t.ppf(0.975, 2) * np.std(points, ddof=1) / np.sqrt(3)
    assert iv.point == pytest.approx(0.92) and iv.hi - iv.point == pytest.approx(half)
    wider = u.interval(points, np.random.default_rng(0).normal(0.92, 0.01, size=(3, 200)))
    assert wider.hi - wider.lo > iv.hi - iv.lo  # the test-set spread widens it


def test_pixel_bootstrap_is_centred_on_the_exact_metrics():
    rng = np.random.default_rng(1)
    labels = np.r_[np.zeros(12), np.ones(8)].astype(int)
    masks = np.zeros((20, 32, 32), bool)
    for i in range(12, 20):
        masks[i, 5:12, 8:8 + i] = True
    maps = rng.normal(size=masks.shape) + 2 * masks
    exact = compute_all(labels, maps.reshape(20, -1).max(1), masks, maps)
    reps = u.pixel_replicates(u.pixel_statistics(masks, maps), labels, exact)
    for metric in ("pixel_auroc", "pixel_aupr", "aupro", "f1_max"):
        iv = u.interval([exact[metric]], reps[metric][None])
        assert iv.lo < exact[metric] < iv.hi and iv.hi - iv.lo < 0.2, metric
    separable = u.pixel_replicates(u.pixel_statistics(masks, masks * 1.0 + 0), labels,
                                   compute_all(labels, labels * 1.0, masks, masks * 1.0))
    assert np.allclose(separable["pixel_auroc"], 1.0) and np.allclose(separable["aupro"], 1.0)


def test_difference_of_equal_runs_is_not_resolved_and_two_sided():
    reps = np.random.default_rng(0).normal(0.9, 0.02, size=(1, 200))
    same = u.difference([0.9], reps, [0.9], reps)
    assert (same.lo, same.hi) == (0.0, 0.0) and not u.resolved(same)
    assert u.two_sided(same) == "within noise"
    ahead = u.difference([0.95], reps + 0.05, [0.9], reps)
    assert u.resolved(ahead) and u.two_sided(ahead) == "ours above"
    # 1 seed against 3: the seed spread of the three counts
    spread = u.difference([0.95], None, [0.90, 0.96, 0.99], None)
    assert not spread.known  # one seed without replicates: no interval
    three = u.difference([0.95, 0.96, 0.94], None, [0.90, 0.96, 0.99], None)
    assert three.known and u.two_sided(three) == "within noise"


def test_average_over_categories_averages_replicates():
    a, b = np.full((1, 200), 0.8), np.full((1, 200), 1.0)
    points, reps = u.average([([0.8], a), ([1.0], b)])
    assert points == [pytest.approx(0.9)] and np.allclose(reps, 0.9)
    assert u.average([([0.8], a), ([1.0], None)])[1] is None


def test_record_fields_hold_replicates_and_intervals_and_joint_runs_average_them():
    from nfbench.pipeline.experiment import _bootstrap_fields

    rng = np.random.default_rng(2)
    labels = np.r_[np.zeros(10), np.ones(6)].astype(int)
    masks = np.zeros((16, 16, 16), bool)
    masks[10:, 4:9, 4:9] = True
    maps = rng.normal(size=masks.shape) + masks
    scores = maps.reshape(16, -1).max(1)
    exact = compute_all(labels, scores, masks, maps)
    one = u.record_bootstrap(labels, scores, masks, maps, exact)
    assert set(one) == set(u.BOOTSTRAPPED) and all(len(v) == u.N_BOOT for v in one.values())
    fields = _bootstrap_fields({"a": one, "b": {k: [1.0] * u.N_BOOT for k in one}})
    reps = fields["bootstrap"]["replicates"]["image_auroc"]
    assert reps[0] == pytest.approx((one["image_auroc"][0] + 1.0) / 2)  # replicate b averaged
    lo, hi = fields["intervals"]["image_auroc"]
    assert lo <= hi and fields["bootstrap"]["n"] == u.N_BOOT
