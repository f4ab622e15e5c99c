"""Issue #28, round two: multi-label and classification metrics where earlier tests had no
case that tells a fault apart (ties in Youden's J, a finding without positives in a macro
mean, a confusion matrix that is not symmetric), each against a direct computation."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from robustkit.metrics import classification as M
from robustkit.metrics import multilabel as ML
from robustkit.metrics.decisions import counts_from_confusion, decision_scores


def test_youden_ties_go_to_the_highest_threshold_halfway_to_the_next_score() -> None:
    # scores + - + - (descending): J = 1/2 at 0.9, 0 at 0.8, 1/2 at 0.7, 0 at 0.6: a tie
    y = np.array([1, 0, 1, 0], dtype=bool)
    s = np.array([0.9, 0.8, 0.7, 0.6])

    def j(th: float) -> float:
        c = s >= th
        return (c & y).sum() / y.sum() - (c & ~y).sum() / (~y).sum()

    values = {float(th): j(th) for th in s}
    best = max(values.values())
    tied = sorted((th for th, v in values.items() if v == pytest.approx(best)), reverse=True)
    assert tied == [0.9, 0.7]  # J = 1/2 at both
    below = max(float(v) for v in s if v < tied[0])
    assert ML.youden_thresholds(y[:, None], s[:, None])[0] == pytest.approx((tied[0] + below) / 2)


def test_macro_means_leave_out_a_finding_without_positives() -> None:
    rng = np.random.default_rng(4)
    targets = rng.random((120, 3)) < [0.3, 0.0, 0.5]  # the second finding is absent everywhere
    probs = np.clip(0.5 * targets + 0.5 * rng.random((120, 3)), 0, 1)
    flat = ML.finding_summary(targets, probs, np.full(3, 0.5)).flat(["a", "b", "c"])
    assert np.isnan(flat["auroc.b"])
    expected = np.mean([roc_auc_score(targets[:, k], probs[:, k]) for k in (0, 2)])
    assert flat["auroc.macro"] == pytest.approx(expected)


def test_specificity_of_an_asymmetric_confusion_matrix_equals_a_count() -> None:
    rng = np.random.default_rng(8)
    y = rng.integers(0, 3, 200)
    pred = np.where(rng.random(200) < 0.6, y, (y + 1) % 3)  # errors go one way only: not symmetric
    cm = M.confusion_matrix(y, pred, 3)
    assert not np.array_equal(cm, cm.T)
    for k in range(3):
        others = y != k
        assert decision_scores(counts_from_confusion(cm))["specificity"][k] == pytest.approx(np.mean(pred[others] != k))


def test_precision_recall_f1_equal_scikit_learn() -> None:
    from sklearn.metrics import precision_recall_fscore_support

    rng = np.random.default_rng(9)
    y = rng.integers(0, 3, 200)
    pred = np.where(rng.random(200) < 0.6, y, rng.integers(0, 3, 200))
    rates = decision_scores(counts_from_confusion(M.confusion_matrix(y, pred, 3)))
    precision, recall, f1 = rates["precision"], rates["sensitivity"], rates["f1"]
    ref = precision_recall_fscore_support(y, pred, labels=[0, 1, 2], zero_division=0)
    np.testing.assert_allclose(np.c_[precision, recall, f1], np.c_[ref[0], ref[1], ref[2]], rtol=1e-12)


def test_stratified_resamples_keep_every_stratum_in_place() -> None:
    strata = np.repeat([0, 1, 2], [5, 30, 65])
    idx = M.bootstrap_indices(len(strata), 200, seed=1, strata=strata)
    assert idx.shape == (200, 100)
    np.testing.assert_array_equal(strata[idx], np.broadcast_to(strata, idx.shape))  # position i draws from i's stratum
    assert len(np.unique(idx[:, :5])) == 5  # and every member of the smallest stratum is drawn somewhere


def test_sigmoid_temperature_gradient_at_a_bound_equals_a_finite_difference() -> None:
    from robustkit.metrics import outputs as OUT
    from robustkit.metrics.temperature import fit_temperature

    rng = np.random.default_rng(10)
    y = rng.integers(0, 3, 60)
    z = np.where(np.eye(3, dtype=bool)[y], 0.03, -0.03) + 0.005 * rng.standard_normal((60, 3))  # separable
    fit = fit_temperature(z, y, "sigmoid")
    assert fit.at_bound and fit.temperature == pytest.approx(0.01, rel=1e-3)

    def mean_nll(log_t: float) -> float:
        return float(OUT.sample_nll(z, y, "sigmoid", float(np.exp(log_t))).mean())

    s, h = float(np.log(fit.temperature)), 1e-5
    numeric = (mean_nll(s + h) - mean_nll(s - h)) / (2 * h)
    assert numeric > 1e-3  # the NLL rises with T here: the sign is visible
    assert fit.grad_log_t == pytest.approx(numeric, rel=1e-4)


def test_percentile_interval_is_two_sided_and_leaves_out_undefined_resamples() -> None:
    """Known answer: 0..1000 resampled values give the 2.5 % and 97.5 % points 25 and 975
    (not the one-tailed 50 and 950); a column undefined in most resamples gives NaN, one with
    a few undefined resamples the quantiles of its finite ones."""
    from robustkit.metrics.resampling import percentile_interval

    rng = np.random.default_rng(3)
    base = np.arange(1001, dtype=np.float64)
    few = rng.permutation(base)
    few[:100] = np.nan
    most = base.copy()
    most[:600] = np.inf
    lo, hi = percentile_interval(np.stack([base, few, most], axis=1), level=0.95)
    np.testing.assert_allclose([lo[0], hi[0]], [25.0, 975.0], rtol=1e-12)
    finite = few[np.isfinite(few)]
    np.testing.assert_allclose([lo[1], hi[1]], np.quantile(finite, [0.025, 0.975]))
    assert np.isnan(lo[2]) and np.isnan(hi[2])
    lo90, hi90 = percentile_interval(base[:, None], level=0.9)
    np.testing.assert_allclose([lo90[0], hi90[0]], [50.0, 950.0], rtol=1e-12)
