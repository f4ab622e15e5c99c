"""The built-in paired statistics and tests, one explicit list, and their look-up (compare, gate).

:data:`BUILTIN_STATISTICS` says how to recompute each kind of stored metric from a study's
per-sample records (:class:`~robustkit.metrics.paired.PairedRecords`), so that compare can
bootstrap its difference; :data:`BUILTIN_TESTS` which test gives a metric's p-value when one
fits better than the bootstrap. Later entries are tried first, a plug-in's
(:func:`~robustkit.metrics.paired.paired_statistic`) before them all.

* the mean of a 0/1 column (accuracies, recalls; :func:`~robustkit.metrics.paired.binary_column`):
  exact McNemar; per-class precision and balanced accuracy from the predictions; the
  equal-width ECE with the calibration metric's own binning stages.

Two multi-label audits of the same images are compared finding by finding:

* ``auroc.<finding>``: DeLong's test of two correlated ROC AUCs (DeLong, DeLong and
  Clarke-Pearson 1988; :func:`robustkit.metrics.multilabel.delong_paired`) on both models'
  probabilities of the finding against its presence; the interval of the difference is
  the paired bootstrap's.
* ``auroc.macro`` / ``auroc.micro`` and every ``auprc.*``: a paired bootstrap over images
  (an image keeps all its findings, both models' outputs kept together).
* ``sensitivity.<finding>`` / ``specificity.<finding>``: exact McNemar on the thresholded
  calls (each audit's own thresholds) of the images with / without the finding
  (:func:`robustkit.metrics.paired.binary_column`); their macro means by paired bootstrap.
* the conditions studies (perturbation, noise): ``auroc.<finding>.<condition>`` by DeLong on
  the probabilities under that condition, ``auroc.macro.<condition>`` and
  ``auroc_drop.<finding|macro>.<condition>`` (clean AUROC minus the condition's) by the paired
  bootstrap.

The statistics recompute each stored metric with its own function in
:mod:`robustkit.metrics.multilabel`, so compare's reproduction check holds exactly. Pure
numpy and scipy.
"""

from __future__ import annotations

import fnmatch
import math
import warnings

import numpy as np

from robustkit.metrics.calibration import ece_compute, ece_update
from robustkit.metrics.multilabel import delong_paired
from robustkit.metrics.paired import (
    PAIRED_STATISTICS,
    PAIRED_TESTS,
    PairedRecords,
    PairedTestResult,
    Statistic,
    StatisticFactory,
    TestFactory,
    _masked_mean,
    binary_column,
    mcnemar_exact,
    nanmean_of,
)
from robustkit.metrics.ranking import ranking_rows

__all__ = ["BUILTIN_STATISTICS", "BUILTIN_TESTS", "find_statistic", "find_test"]


def _column_mean(pr: PairedRecords, metric: str) -> Statistic | None:
    """A 0/1 column (accuracies, recalls), or ``records[metric]`` (n,): its mean."""
    found = binary_column(pr, metric)
    if found is not None:
        return _masked_mean(*found)
    for key in (metric, metric[len("mean_"):] if metric.startswith("mean_") else None):
        arr = pr.records.get(key) if key else None
        if arr is not None and arr.ndim == 1 and np.issubdtype(arr.dtype, np.number):
            return _masked_mean(np.nan_to_num(arr.astype(np.float64)), np.isfinite(arr))
    return None


def _mcnemar(first: PairedRecords, second: PairedRecords, metric: str) -> PairedTestResult | None:
    """Exact McNemar on the 0/1 column whose mean is ``metric``, where both audits average
    it over the same samples."""
    col_a, col_b = binary_column(first, metric), binary_column(second, metric)
    if col_a is None or col_b is None or not np.array_equal(col_a[1], col_b[1]):
        return None
    m = col_a[1]
    res = mcnemar_exact(col_a[0][m], col_b[0][m])
    return PairedTestResult("mcnemar-exact", res.p_value, (res.b, res.c))


def _precision(pr: PairedRecords, metric: str) -> Statistic | None:
    """Per-class precision from ``records['pred']`` (indices into ``class_names``) and labels."""
    cls = metric.partition(".")[2]
    pred = pr.records.get("pred")
    if pred is None or pred.ndim != 1 or cls not in list(pr.class_names):
        return None
    predicted = pred.astype(np.int64) == list(pr.class_names).index(cls)
    return _masked_mean(pr.labels == cls, predicted)


def _balanced_accuracy(pr: PairedRecords, metric: str) -> Statistic | None:
    """Mean of the per-class recalls (classes present in the labels)."""
    found = binary_column(pr, "accuracy")
    if found is None:
        return None
    return nanmean_of([_masked_mean(found[0], pr.labels == c) for c in np.unique(pr.labels)])


def _ece(pr: PairedRecords, metric: str) -> Statistic | None:
    """Equal-width top-label ECE, recomputed with the calibration metric's own stages.

    :func:`robustkit.metrics.calibration.ece_update` / ``ece_compute`` bin the samples
    exactly as the study's point metric does (one binning convention); the bootstrap keeps
    the bins of the full sample. Columns and subset come from ``pr.ece`` / ``pr.subset``;
    ``n_bins`` from the study's config (15 when absent).
    """
    columns = pr.ece.get(metric) or (("confidence", "correct") if metric == "ece" and not pr.ece else None)
    if columns is None:
        return None
    conf, corr = pr.records.get(columns[0]), pr.records.get(columns[1])
    if conf is None or corr is None or conf.ndim != 1:
        return None
    corr = corr[:, 0] if corr.ndim == 2 else corr
    keep = _subset(pr)
    n_bins = int(pr.config.get("n_bins", 15) or 15)
    bins, gap = ece_update(conf, corr, n_bins=n_bins)
    return lambda idx: ece_compute(bins, gap, idx, n_bins=n_bins, keep=keep)


def _subset(pr: PairedRecords) -> np.ndarray:
    """Mask ``(n,)`` of the samples an ECE counts (see :attr:`PairedRecords.subset`)."""
    column, value = pr.subset if pr.subset is not None else ("split", 1)
    col = pr.records.get(column)
    if col is None:
        return np.ones(pr.n, dtype=bool) if pr.subset is None else np.zeros(pr.n, dtype=bool)
    return np.asarray(col) == value


#: metric root -> the key of :func:`robustkit.metrics.ranking.ranking_rows`
_SCORES: dict[str, str] = {"auroc": "auroc", "auprc": "ap"}


def _columns(pr: PairedRecords) -> tuple[np.ndarray, np.ndarray] | None:
    """``(targets, probabilities)``, both ``(n, K)``, or None when the records are not multi-label."""
    if pr.targets is None or pr.findings is None:
        return None
    probs = pr.records.get(pr.findings[0])
    if probs is None or probs.ndim != 2 or probs.shape != pr.targets.shape:
        return None
    return pr.targets, np.asarray(probs, dtype=np.float64)


def _condition(pr: PairedRecords, which: str) -> tuple[str, np.ndarray, np.ndarray, np.ndarray] | None:
    """``(finding or "macro", targets, probabilities under the condition, clean probabilities)``
    of a conditions study's ``<finding|macro>.<condition>``, each ``(n, K)``; None otherwise."""
    if pr.targets is None or pr.findings is None:
        return None
    probs, clean = pr.records.get(pr.findings[0]), pr.records.get("clean_probs")
    conditions = [str(c) for c in pr.data.get("conditions") or []]
    if probs is None or clean is None or probs.ndim != 3 or probs.shape[1] != len(conditions):
        return None
    for c, name in enumerate(conditions):
        if which.endswith("." + name):
            return (which[: -len(name) - 1], pr.targets, np.asarray(probs[:, c, :], dtype=np.float64),
                    np.asarray(clean, dtype=np.float64))
    return None


def _per_finding(pr: PairedRecords, head: str, targets: np.ndarray, probs: np.ndarray) -> Statistic | None:
    """AUROC of one finding (or the macro mean over findings) of ``probs`` on each resample."""
    if head == "macro":
        return nanmean_of([_per_row("auroc", targets[:, k], probs[:, k]) for k in range(targets.shape[1])])
    k = pr.finding_index(head)
    return None if k is None else _per_row("auroc", targets[:, k], probs[:, k])


def _per_row(score: str, y: np.ndarray, s: np.ndarray) -> Statistic:
    """The ranking score ``score`` of ``y`` against ``s`` (``(n,)`` or, pooled, ``(n, K)``) on
    each resample: one row of the ranking kernel per resample."""

    def stat(idx: np.ndarray) -> np.ndarray:
        rows = np.atleast_2d(idx)
        return ranking_rows(s[rows].reshape(len(rows), -1), y[rows].reshape(len(rows), -1))[score]

    return stat


def _ranking(pr: PairedRecords, metric: str) -> Statistic | None:
    """AUROC / AUPRC of one finding, their macro mean over findings, or the micro (pooled) form."""
    root, _, which = metric.partition(".")
    cols = _columns(pr) if root in _SCORES else None
    if cols is None:
        found = _condition(pr, which) if root == "auroc" else None
        return None if found is None else _per_finding(pr, found[0], found[1], found[2])
    targets, probs = cols
    score = _SCORES[root]
    if which == "micro":
        return _per_row(score, targets, probs)
    if which == "macro":
        return nanmean_of([_per_row(score, targets[:, k], probs[:, k]) for k in range(targets.shape[1])])
    k = pr.finding_index(which)
    return None if k is None else _per_row(score, targets[:, k], probs[:, k])


def _auroc_drop(pr: PairedRecords, metric: str) -> Statistic | None:
    """A conditions study's drop: clean AUROC minus the AUROC under the condition, per finding or macro."""
    found = _condition(pr, metric.partition(".")[2])
    if found is None:
        return None
    head, targets, probs, clean = found
    under, before = _per_finding(pr, head, targets, probs), _per_finding(pr, head, targets, clean)
    if under is None or before is None:
        return None
    return lambda idx: before(idx) - under(idx)


def _rate_macro(pr: PairedRecords, metric: str) -> Statistic | None:
    """Macro mean of the per-finding sensitivities (specificities) on the thresholded samples."""
    root = metric.partition(".")[0]
    cols = [binary_column(pr, f"{root}.{name}") for name in pr.class_names]
    if pr.targets is None or not cols or any(c is None for c in cols):
        return None
    return nanmean_of([_masked_mean(*c) for c in cols if c is not None])


def _delong(first: PairedRecords, second: PairedRecords, metric: str) -> PairedTestResult | None:
    """DeLong's paired test of one finding's AUROC (not of the macro or micro means)."""
    finding = metric.partition(".")[2]
    cols_a, cols_b = _columns(first), _columns(second)
    if cols_a is None or cols_b is None:  # a conditions study: one finding under one condition
        cond_a, cond_b = _condition(first, finding), _condition(second, finding)
        if cond_a is None or cond_b is None or cond_a[0] != cond_b[0]:
            return None
        finding, cols_a, cols_b = cond_a[0], cond_a[1:3], cond_b[1:3]
    ka, kb = first.finding_index(finding), second.finding_index(finding)
    if ka is None or kb is None:
        return None
    y = cols_a[0][:, ka]
    if not np.array_equal(y, cols_b[0][:, kb]):
        return None
    res = delong_paired(y, cols_a[1][:, ka], cols_b[1][:, kb])
    return PairedTestResult("delong", res.p_value)

#: pattern over the full dotted metric name -> factory; later entries are tried first
BUILTIN_STATISTICS: tuple[tuple[str, StatisticFactory], ...] = (
    ("*", _column_mean),
    ("*.precision.*", _precision),
    ("*.balanced_accuracy", _balanced_accuracy),
    ("*.ece*", _ece),
    ("*.auprc.*", _ranking),
    ("*.auroc.*", _ranking),
    ("*.auroc_drop.*", _auroc_drop),
    ("*.specificity.macro", _rate_macro),
    ("*.sensitivity.macro", _rate_macro),
)

#: pattern over the full dotted metric name -> test; later entries are tried first
BUILTIN_TESTS: tuple[tuple[str, TestFactory], ...] = (
    ("*", _mcnemar),
    ("*.auroc.*", _delong),
)


def find_statistic(full_name: str, pr: PairedRecords, *, check: float | None = None) -> Statistic | None:
    """The first statistic that applies to ``full_name``: a plug-in's (latest first), then the
    built-ins of :data:`BUILTIN_STATISTICS` (last first).

    Args:
        full_name: ``<study>.<metric>``.
        pr: the study's paired records.
        check: the stored metric value; a statistic that does not reproduce it (to 1e-6)
            on the unresampled samples is skipped.
    """
    metric = full_name.partition(".")[2]
    for pattern, factory in reversed([*BUILTIN_STATISTICS, *PAIRED_STATISTICS.items()]):
        if not fnmatch.fnmatchcase(full_name, pattern):
            continue
        stat = factory(pr, metric)
        if stat is not None and (check is None or _reproduces(stat, pr.n, check)):
            return stat
    return None


def _reproduces(stat: Statistic, n: int, value: float) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        got = float(np.asarray(stat(np.arange(n)[None, :]))[0])
    return math.isfinite(got) and math.isfinite(value) and abs(got - value) <= 1e-6 * max(1.0, abs(value))


def find_test(full_name: str, first: PairedRecords, second: PairedRecords) -> PairedTestResult | None:
    """The first test (a plug-in's, latest first, then :data:`BUILTIN_TESTS`, last first) that
    applies to ``full_name`` and gives a finite p-value, or None: then the bootstrap's p-value stands."""
    metric = full_name.partition(".")[2]
    for pattern, test in reversed([*BUILTIN_TESTS, *PAIRED_TESTS.items()]):
        if fnmatch.fnmatchcase(full_name, pattern):
            res = test(first, second, metric)
            if res is not None and math.isfinite(res.p_value):
                return res
    return None
