"""The calibration study's intervals from resampled counts: every metric of the study computed
from the counts (vectorised over a block of resamples) equals the per-resample ``_scores`` on
the drawn rows ``np.repeat(np.arange(n), counts)``, and the intervals lie within Monte Carlo
error of the index bootstrap the study used before."""

from __future__ import annotations

import numpy as np
import pytest

from robustkit.metrics import calibration as CM
from robustkit.metrics import selective as SEL
from robustkit.metrics.resampling import (
    bootstrap_indices,
    bootstrap_weights,
    percentile_interval,
    weighted_bootstrap_interval,
)
from robustkit.studies.calibration import CalibrationConfig
from robustkit.studies.calibration_scores import EvalSet as _EvalSet
from robustkit.studies.calibration_scores import Resampled as _Resampled
from robustkit.studies.calibration_scores import scores as _scores
from tests.test_resampling_weights import (
    _mc_tolerance,  # the order statistic's Monte Carlo tolerance
)

NAMES = ["a", "b", "c"]


def _toy(n: int, seed: int, *, multilabel: bool = False) -> _EvalSet:
    """Continuous logits (no exactly tied confidences) of a 3-output model, and its targets."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    if multilabel:
        t = rng.random((n, 3)) < 0.35
        t[np.arange(n), y] = True
        return _EvalSet(rng.standard_normal((n, 3)) + 1.5 * t, t, y, 1.3, "multilabel")
    return _EvalSet(rng.standard_normal((n, 3)) + 1.4 * np.eye(3)[y], np.eye(3, dtype=bool)[y], y, 1.7, "softmax")


def _rows(w: np.ndarray) -> list[np.ndarray]:
    return [np.repeat(np.arange(w.shape[1]), r.astype(np.int64)) for r in w]


CASES = [(False, 0, 0), (False, None, 1), (True, None, 2)]


@pytest.mark.parametrize(("multilabel", "positive", "seed"), CASES)
def test_every_metric_from_counts_equals_the_scores_of_the_drawn_rows(multilabel: bool, positive: int | None,
                                                                      seed: int) -> None:
    e = _toy(700, seed, multilabel=multilabel)  # several chunks of equal_mass_sums_counts
    cfg = CalibrationConfig(n_bins=7, target_risks=(0.02, 0.1, 0.3))
    w = np.concatenate(list(bootstrap_weights(700, 20, seed=seed, strata=e.y)))
    got = _Resampled(e, cfg, NAMES, positive, not multilabel)(w)
    want = [_scores(e, rows, cfg, NAMES, positive, not multilabel) for rows in _rows(w)]
    assert set(got) == set(want[0]) and len(got) >= (14 if multilabel else 38)
    for key in want[0]:
        np.testing.assert_allclose(got[key], [s[key] for s in want], rtol=1e-9, atol=1e-12, equal_nan=True,
                                   err_msg=key)
    if not multilabel:  # the targets reach the risks that matter: some met, some not
        cov = got["coverage_at_risk.0.1"]
        assert (cov > 0).any() and (cov < 1).all()


def test_equal_mass_sums_split_a_sample_whose_copies_straddle_a_cut() -> None:
    """Known answer: counts (3, 0, 2) over confidences (0.1, 0.5, 0.9) cut in 2 bins of sizes
    3 and 2 (``np.array_split(5, 2)``), and 3 bins of sizes 2, 2, 1 (sample 0's third copy in bin 1)."""
    order = np.array([0, 1, 2])
    values = np.array([1.0, 10.0, 100.0])
    count, sums = CM.equal_mass_sums_counts(order, values, np.array([[3.0, 0.0, 2.0], [1.0, 1.0, 3.0]]), n_bins=2)
    np.testing.assert_array_equal(count, [[3, 2], [3, 2]])
    np.testing.assert_allclose(sums[:, :, 0], [[3.0, 200.0], [111.0, 200.0]])
    count, sums = CM.equal_mass_sums_counts(order, values, np.array([[3.0, 0.0, 2.0]]), n_bins=3)
    np.testing.assert_array_equal(count, [[2, 2, 1]])
    np.testing.assert_allclose(sums[0, :, 0], [2.0, 101.0, 100.0])


def test_selective_counts_equal_the_drawn_rows_with_tied_confidences() -> None:
    """With tied confidences across samples: coverage (and sensitivity) at risk groups ties as
    the index version does; AURC matches too here because the drawn rows list the samples in
    their own order (the order the stable sort of the counts gives tied samples)."""
    rng = np.random.default_rng(5)
    n = 150
    conf = np.round(rng.uniform(0.4, 1.0, n), 1)
    y, pred = rng.integers(0, 3, n), rng.integers(0, 3, n)
    correct = pred == y
    w = np.concatenate(list(bootstrap_weights(n, 30, seed=3)))
    order = np.argsort(-conf, kind="mergesort")
    ranked = SEL.sort_counts(order, correct, w)
    cov, thr = SEL.coverage_at_risk_counts(ranked, conf, [0.3, 0.6])
    sens = SEL.selective_sensitivity_counts(conf, y, pred, 1, thr[1], w)
    aurc = SEL.aurc_counts(ranked)
    best = SEL.optimal_aurc_counts(correct, w)
    for r, rows in enumerate(_rows(w)):
        for j, target in enumerate((0.3, 0.6)):
            assert (cov[j, r], thr[j, r]) == SEL.coverage_at_risk(conf[rows], correct[rows], target)
        np.testing.assert_allclose(sens[r], SEL.selective_sensitivity(conf[rows], y[rows], pred[rows], 1, thr[1, r]),
                                   equal_nan=True)
        np.testing.assert_allclose(aurc[r], SEL.aurc(conf[rows], correct[rows]), rtol=1e-12)
        np.testing.assert_allclose(best[r], SEL.optimal_aurc(correct[rows]), rtol=1e-12)


def test_intervals_from_counts_lie_within_monte_carlo_error_of_the_index_bootstrap() -> None:
    """The index bootstrap before (``B`` rows of stratified indices, ``bootstrap_indices``) and
    the block counts now, at N = 1,000: every interval end agrees within the Monte Carlo tolerance
    (zero, so equal, for an end at a bound every resample nearly reaches, such as a sensitivity
    of 1). The index rows are scored through their counts, which the test above shows equal to
    ``_scores`` of the rows themselves; one row of them is checked here again."""
    n, b = 1000, 1000
    e = _toy(n, 7)
    cfg = CalibrationConfig(n_bins=15, target_risks=(0.05, 0.2))
    keys = list(_scores(e, np.arange(n), cfg, NAMES, 0, True))
    resampled = _Resampled(e, cfg, NAMES, 0, True)

    def stat(w: np.ndarray) -> np.ndarray:
        values = resampled(w)
        return np.stack([values[k] for k in keys], axis=1)

    idx = bootstrap_indices(n, b, seed=0, strata=e.y)
    counts = np.stack([np.bincount(row, minlength=n) for row in idx]).astype(np.float64)
    old = np.concatenate([stat(counts[i:i + 64]) for i in range(0, b, 64)])
    again = _scores(e, idx[0], cfg, NAMES, 0, True)
    np.testing.assert_allclose(old[0], [again[k] for k in keys], rtol=1e-9, atol=1e-12)
    old_lo, old_hi = percentile_interval(old)
    new_lo, new_hi = weighted_bootstrap_interval(stat, n, n_boot=b, seed=0, strata=e.y)
    tol = _mc_tolerance(old)
    width = np.maximum(old_hi - old_lo, 1e-12)  # a Monte Carlo error (a fraction of the width), not a free pass
    assert np.median(tol / width) < 0.3 and np.all(tol < 0.1) and np.mean(tol > 0) > 0.9
    assert np.all(np.abs(new_lo - old_lo) <= tol[0]), {k: v for k, v in zip(keys, np.abs(new_lo - old_lo) / tol[0])
                                                        if v > 1}
    assert np.all(np.abs(new_hi - old_hi) <= tol[1]), {k: v for k, v in zip(keys, np.abs(new_hi - old_hi) / tol[1])
                                                        if v > 1}
