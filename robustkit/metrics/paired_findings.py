"""Paired statistics and tests of multi-label metrics, per finding (read by compare and gate).

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
numpy and scipy; imported (and registered) by :mod:`robustkit.metrics.paired`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

from robustkit.metrics.multilabel import average_precision, binary_auroc, delong_paired
from robustkit.metrics.paired import (
    PairedRecords,
    PairedTestResult,
    Statistic,
    _masked_mean,
    binary_column,
    nanmean_of,
    paired_statistic,
    paired_test,
)

__all__: list[str] = []  # registrations only

Score = Callable[[np.ndarray, np.ndarray], float]
_SCORES: dict[str, Score] = {"auroc": binary_auroc, "auprc": average_precision}


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
        return nanmean_of([_per_row(binary_auroc, targets[:, k], probs[:, k]) for k in range(targets.shape[1])])
    k = pr.finding_index(head)
    return None if k is None else _per_row(binary_auroc, targets[:, k], probs[:, k])


def _per_row(score: Score, y: np.ndarray, s: np.ndarray) -> Statistic:
    """The score of ``y`` against ``s`` (``(n,)`` or, pooled, ``(n, K)``) on each resample."""

    def stat(idx: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.array([score(y[row].ravel(), s[row].ravel()) for row in idx], dtype=np.float64)

    return stat


@paired_statistic("*.auroc.*")
@paired_statistic("*.auprc.*")
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


@paired_statistic("*.auroc_drop.*")
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


@paired_statistic("*.sensitivity.macro")
@paired_statistic("*.specificity.macro")
def _rate_macro(pr: PairedRecords, metric: str) -> Statistic | None:
    """Macro mean of the per-finding sensitivities (specificities) on the thresholded samples."""
    root = metric.partition(".")[0]
    cols = [binary_column(pr, f"{root}.{name}") for name in pr.class_names]
    if pr.targets is None or not cols or any(c is None for c in cols):
        return None
    return nanmean_of([_masked_mean(*c) for c in cols if c is not None])


@paired_test("*.auroc.*")
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
