"""The one metrics layer (issue #23, item 3): the ranking kernel, the decision-statistics
kernel and the nan-aware mean, each against an independent computation (scikit-learn's
``roc_auc_score``, ``average_precision_score``, ``roc_curve``,
``precision_recall_fscore_support``, or a slow loop), on random inputs with many ties."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    average_precision_score,
    precision_recall_fscore_support,
    roc_auc_score,
)
from sklearn.metrics import roc_curve as sk_roc_curve

from robustkit.errors import ConfigError
from robustkit.metrics import classification as M
from robustkit.metrics import ranking as R
from robustkit.metrics.average import nan_mean, weighted_nan_mean
from robustkit.metrics.decisions import counts_from_confusion, decision_counts, decision_scores

SEEDS = range(12)


def _tied(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Scores with many ties: a few distinct levels, shifted where the target is present."""
    return np.round(rng.random(shape) * rng.integers(2, 9), int(rng.integers(0, 2)))


def _binary(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 120))
    y = rng.random(n) < rng.uniform(0.1, 0.9)
    y[:2] = [True, False]  # both classes present
    return y, _tied(rng, (n,)) + 0.5 * y * rng.random()


@pytest.mark.parametrize("seed", SEEDS)
def test_binary_scores_equal_scikit_learn_with_ties(seed: int) -> None:
    y, s = _binary(seed)
    assert R.binary_auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert R.average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    fpr, tpr = R.roc_curve(y, s)
    sk_fpr, sk_tpr, _ = sk_roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr, atol=1e-12)
    np.testing.assert_allclose(tpr, sk_tpr, atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_rows_equal_scikit_learn_and_fpr95_equals_the_first_threshold_reaching_95(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    rows = [_binary(int(rng.integers(1 << 30))) for _ in range(3)]
    n = min(len(y) for y, _ in rows)
    y = np.stack([r[0][:n] for r in rows])
    y[:, :2] = [True, False]
    s = np.stack([r[1][:n] for r in rows])
    got = R.ranking_rows(s, y)
    for b in range(3):
        assert got["auroc"][b] == pytest.approx(roc_auc_score(y[b], s[b]), abs=1e-12)
        assert got["ap"][b] == pytest.approx(average_precision_score(y[b], s[b]), abs=1e-12)
        fpr, tpr, _ = sk_roc_curve(y[b], s[b], drop_intermediate=False)
        assert got["fpr95"][b] == pytest.approx(fpr[np.argmax(tpr >= 0.95 - 1e-12)], abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("average", [None, "macro", "micro", "weighted"])
def test_per_output_averages_equal_scikit_learn(seed: int, average: str | None) -> None:
    rng = np.random.default_rng(200 + seed)
    n, k = int(rng.integers(20, 150)), int(rng.integers(1, 6))
    targets = rng.random((n, k)) < rng.uniform(0.1, 0.9, k)
    targets[0], targets[1] = True, False  # every output has both classes
    scores = _tied(rng, (n, k)) + 0.3 * targets * rng.random(k)
    np.testing.assert_allclose(R.auroc(targets, scores, average=average),
                               roc_auc_score(targets, scores, average=average), atol=1e-12)
    np.testing.assert_allclose(R.auprc(targets, scores, average=average),
                               average_precision_score(targets, scores, average=average), atol=1e-12)


def test_undefined_outputs_are_nan_and_left_out_of_the_macro_mean() -> None:
    rng = np.random.default_rng(3)
    targets = rng.random((80, 3)) < [0.4, 0.0, 1.0]  # the second never present, the third always
    scores = _tied(rng, (80, 3))
    per = R.auroc(targets, scores)
    assert np.isnan(per[1]) and np.isnan(per[2])
    assert R.auroc(targets, scores, average="macro") == pytest.approx(roc_auc_score(targets[:, 0], scores[:, 0]))
    ap = R.auprc(targets, scores)
    assert np.isnan(ap[1]) and ap[2] == pytest.approx(1.0)  # AP needs positives only
    assert np.isnan(R.binary_auroc(np.ones(4, bool), np.arange(4.0)))


def test_single_label_one_vs_rest_equals_scikit_learn_ovr() -> None:
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 150)
    probs = rng.dirichlet(np.ones(3), 150).round(2)
    np.testing.assert_allclose(M.roc_auc_ovr(y, probs), roc_auc_score(R.one_hot(y, 3), probs, average=None),
                               atol=1e-12)


def test_average_must_be_one_of_the_choices() -> None:
    with pytest.raises(ConfigError, match="'average' parameter"):
        R.auroc(np.ones((3, 2), bool), np.ones((3, 2)), average="mean")


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("average", [None, "macro", "micro", "weighted"])
def test_decision_scores_equal_scikit_learn(seed: int, average: str | None) -> None:
    rng = np.random.default_rng(300 + seed)
    n, k = int(rng.integers(10, 200)), int(rng.integers(2, 6))  # one column would be read as binary
    targets = rng.random((n, k)) < rng.uniform(0.05, 0.9, k)
    called = rng.random((n, k)) < rng.uniform(0.0, 0.9, k)  # some outputs never called: precision undefined
    got = decision_scores(decision_counts(targets, called), average=average)
    p, r, f, _ = precision_recall_fscore_support(targets, called, average=average, zero_division=np.nan)
    np.testing.assert_allclose(got["precision"], p, atol=1e-12)
    np.testing.assert_allclose(got["sensitivity"], r, atol=1e-12)
    if average is None:  # F1 with an undefined precision: NaN here; 0 when both rates are 0
        np.testing.assert_allclose(got["f1"], np.where(np.isnan(p), np.nan, f), atol=1e-12)
        spec = [np.mean(~called[~targets[:, j], j]) if (~targets[:, j]).any() else np.nan for j in range(k)]
        acc = [np.mean(called[:, j] == targets[:, j]) for j in range(k)]
        np.testing.assert_allclose(got["specificity"], spec, atol=1e-12)
        np.testing.assert_allclose(got["accuracy"], acc, atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_confusion_counts_equal_scikit_learn_one_vs_rest(seed: int) -> None:
    rng = np.random.default_rng(400 + seed)
    k = int(rng.integers(2, 6))
    y = rng.integers(0, k, 120)
    pred = np.where(rng.random(120) < 0.5, y, rng.integers(0, k, 120))
    got = decision_scores(counts_from_confusion(M.confusion_matrix(y, pred, k)))
    p, r, f, _ = precision_recall_fscore_support(y, pred, labels=list(range(k)), zero_division=np.nan)
    np.testing.assert_allclose(np.c_[got["precision"], got["sensitivity"]], np.c_[p, r], atol=1e-12)
    spec = [np.mean(pred[y != j] != j) for j in range(k)]
    np.testing.assert_allclose(got["specificity"], spec, atol=1e-12)


def test_nan_mean_equals_a_slow_loop() -> None:
    rng = np.random.default_rng(6)
    v = rng.random((7, 5))
    v[rng.random(v.shape) < 0.4] = np.nan
    v[:, 2] = np.nan
    slow = [np.mean([x for x in col if x == x]) if any(x == x for x in col) else np.nan for col in v.T]
    np.testing.assert_allclose(nan_mean(v, axis=0), slow, atol=1e-15)
    flat = [x for x in v.ravel() if x == x]
    assert nan_mean(v) == pytest.approx(sum(flat) / len(flat), abs=1e-15)
    assert np.isnan(nan_mean(np.array([np.nan, np.inf])))
    assert weighted_nan_mean(np.array([1.0, np.nan, 3.0]), np.array([1, 5, 3])) == pytest.approx((1 + 9) / 4)


def test_scores_under_several_conditions_are_scored_against_the_same_targets() -> None:
    rng = np.random.default_rng(7)
    targets = rng.random((90, 3)) < [0.2, 0.5, 0.0]  # the third finding is absent: NaN
    scores = _tied(rng, (90, 4, 3)) + 0.4 * targets[:, None, :]
    got = R.auroc(targets, scores)
    assert got.shape == (4, 3)
    for c in range(4):
        for k in range(2):
            assert got[c, k] == pytest.approx(roc_auc_score(targets[:, k], scores[:, c, k]), abs=1e-12)
    assert np.isnan(got[:, 2]).all()
    with pytest.raises(ConfigError, match="'scores' parameter"):
        R.auroc(targets, scores, average="macro")
