"""Paired statistics for comparing two models on the same samples.

Both models of a comparison saw the same samples under the same seeded conditions, so
their per-sample outcomes are paired:

* :func:`mcnemar_exact` tests a difference of two accuracies (any mean of a 0/1 column)
  with the exact McNemar test: a two-sided binomial test on the discordant pairs
  (McNemar 1947; Edwards 1948 for the exact form).
* :func:`paired_bootstrap` gives a percentile interval and a p-value for the difference of
  any statistic recomputed from per-sample arrays, resampling the *pairs* (Efron and
  Tibshirani 1993, ch. 16).
* :func:`holm` adjusts a family of p-values for multiple testing (Holm 1979); it controls
  the family-wise error rate without assuming independence.
* :class:`PairedRecords` holds a study's per-sample records for that; the built-in statistics
  (how to recompute a stored metric from them) and tests (McNemar for the mean of a 0/1
  column, DeLong for a finding's AUROC) are one explicit list in
  :mod:`robustkit.metrics.paired_statistics`, which also looks them up. A plug-in adds its own
  with :func:`paired_statistic` and :func:`paired_test` (:data:`PAIRED_STATISTICS`,
  :data:`PAIRED_TESTS`), tried before the built-ins.

Pure numpy and scipy; no TensorFlow.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from robustkit.errors import check_range, param_error

__all__ = [
    "bh_qvalues",
    "PAIRED_STATISTICS",
    "BootstrapResult",
    "McNemarResult",
    "PAIRED_TESTS",
    "PairedRecords",
    "PairedTestResult",
    "Statistic",
    "StatisticFactory",
    "TestFactory",
    "binary_column",
    "holm",
    "nanmean_of",
    "mcnemar_exact",
    "paired_bootstrap",
    "paired_statistic",
    "paired_test",
    "resample_indices",
]


@dataclass(frozen=True)
class McNemarResult:
    """The exact McNemar test of two paired 0/1 columns.

    Attributes:
        b: pairs where the first column is 1 and the second 0.
        c: pairs where the first column is 0 and the second 1.
        p_value: two-sided exact p-value, ``min(1, 2 P(X <= min(b, c)))`` with
            ``X ~ Binomial(b + c, 1/2)``; 1 when there is no discordant pair.
    """

    b: int
    c: int
    p_value: float


@dataclass(frozen=True)
class BootstrapResult:
    """A paired bootstrap of ``statistic(second) - statistic(first)``.

    Attributes:
        delta: the difference on the samples themselves.
        low, high: percentile interval of the difference over the resamples.
        p_value: two-sided p-value from the bootstrap standard error
            (``2 Phi(-|delta| / se)``); 1 when ``delta`` is 0, 0 when ``se`` is 0 and
            ``delta`` is not.
        n_valid: resamples where the statistic was defined on both sides.
        diffs: ``(n_valid,)`` the resampled differences themselves (a one-sided bound or a
            non-inferiority p-value reads them).
    """

    delta: float
    low: float
    high: float
    p_value: float
    n_valid: int
    diffs: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False, compare=False)


def mcnemar_exact(first: np.ndarray, second: np.ndarray) -> McNemarResult:
    """Exact two-sided McNemar test of two paired 0/1 columns.

    Args:
        first, second: ``(N,)`` booleans (or 0/1), the same samples in the same order.

    Example:
        >>> mcnemar_exact(np.array([1, 1, 1, 0]), np.array([0, 0, 1, 0])).b
        2
    """
    a = np.asarray(first, dtype=bool)
    b_ = np.asarray(second, dtype=bool)
    if a.shape != b_.shape or a.ndim != 1:
        raise param_error("second", f"a 1-D array shaped like the first {a.shape}", b_.shape, where="mcnemar_exact")
    b = int(np.sum(a & ~b_))
    c = int(np.sum(~a & b_))
    n = b + c
    if n == 0:
        return McNemarResult(b, c, 1.0)
    from scipy.stats import binom  # imported here: keeps `robustkit --help` fast

    p = float(min(1.0, 2.0 * binom.cdf(min(b, c), n, 0.5)))
    return McNemarResult(b, c, p)


def resample_indices(n: int, n_boot: int, *, seed: int) -> np.ndarray:
    """Bootstrap indices ``(n_boot, n)`` drawn with replacement, seeded."""
    check_range("n_boot", n_boot, low=1, integer=True, where="resample_indices")
    dtype = np.int32 if n < 2**31 else np.int64
    return np.random.default_rng(seed).integers(0, max(n, 1), size=(n_boot, n), dtype=dtype)


def paired_bootstrap(
    first: Callable[[np.ndarray], np.ndarray],
    second: Callable[[np.ndarray], np.ndarray],
    n: int,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    indices: np.ndarray | None = None,
    chunk: int = 250,
) -> BootstrapResult:
    """Paired bootstrap of ``second - first``, each a statistic of resampled row indices.

    Args:
        first, second: map an index array ``(B, n)`` to ``(B,)`` values of the statistic
            (NaN where undefined); the same row index means the same sample on both sides.
        n: number of paired samples.
        n_boot: resamples (ignored when ``indices`` is given).
        seed: seed of the resampling.
        level: coverage of the interval.
        indices: precomputed ``(B, n)`` indices, to share resamples between statistics.
        chunk: resamples evaluated at once (bounds memory to ``chunk * n`` values).

    Returns:
        A :class:`BootstrapResult`; NaN interval and p-value when fewer than half of the
        resamples gave a defined difference.
    """
    check_range("level", level, low=0.0, high=1.0, low_open=True, where="paired_bootstrap")
    ident = np.arange(n)[None, :]
    delta = float(np.asarray(second(ident))[0] - np.asarray(first(ident))[0])
    idx = indices if indices is not None else resample_indices(n, n_boot, seed=seed)
    diffs = np.concatenate([
        np.asarray(second(idx[i:i + chunk]), dtype=np.float64) - np.asarray(first(idx[i:i + chunk]), dtype=np.float64)
        for i in range(0, len(idx), chunk)
    ]) if len(idx) else np.empty(0)
    ok = diffs[np.isfinite(diffs)]
    if not math.isfinite(delta) or len(ok) < max(1, len(diffs) / 2):
        return BootstrapResult(delta, math.nan, math.nan, math.nan, len(ok), ok)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(ok, [alpha, 1.0 - alpha])
    return BootstrapResult(delta, float(low), float(high), _normal_p(delta, ok), len(ok), ok)


def _normal_p(delta: float, diffs: np.ndarray) -> float:
    if delta == 0.0:
        return 1.0
    se = float(np.std(diffs, ddof=1)) if len(diffs) > 1 else 0.0
    if se == 0.0:
        return 0.0
    from scipy.stats import norm

    return float(min(1.0, 2.0 * norm.sf(abs(delta) / se)))


def _ranked(p_values: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(p, NaN-filled output, positions of the finite p-values in increasing order)``: the
    shared first stage of the step-down and step-up adjustments (NaN entries are not counted)."""
    p = np.asarray(p_values, dtype=np.float64)
    finite = np.flatnonzero(np.isfinite(p))
    return p, np.full(p.shape, np.nan), finite[np.argsort(p[finite], kind="mergesort")]


def bh_qvalues(p_values: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg (1995) q-values: ``q_(i) = min_{j >= i} m p_(j) / j``, capped at 1.

    NaN entries stay NaN and are not counted in ``m``.

    Example:
        >>> [round(q, 3) for q in bh_qvalues([0.01, 0.04, 0.03, 0.5])]
        [0.04, 0.053, 0.053, 0.5]
    """
    p, out, order = _ranked(p_values)
    m = len(order)
    if m == 0:
        return out.tolist()
    scaled = p[order] * m / np.arange(1, m + 1)
    out[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    return out.tolist()


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN entries stay NaN and are not counted).

    Example:
        >>> [round(p, 3) for p in holm([0.01, 0.04, 0.03])]
        [0.03, 0.06, 0.06]
    """
    p, out, order = _ranked(p_values)
    m = len(order)
    if m == 0:
        return out.tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(stepped, 1.0)
    return out.tolist()


# ---------------------------------------------------------------- statistics from records

Statistic = Callable[[np.ndarray], np.ndarray]
"""Maps resampled row indices ``(B, n)`` to the statistic's values ``(B,)``."""


@dataclass(frozen=True)
class PairedRecords:
    """One study's per-sample arrays of one audit, rows in the paired sample order.

    Attributes:
        records: every per-sample array of the study (first axis ``n``), reordered so that
            row ``i`` is the same sample id in both audits of a comparison.
        data: the study's stored ``data`` (``correct_metrics`` and the like).
        config: the study's config (``n_bins`` ...).
        labels: ``(n,)`` class names of the samples (names, not indices, so that two
            models with different class orders still pair).
        class_names: the audit's class order (what ``records['pred']`` indexes).
        binary: record keys whose ``(n, M)`` 0/1 columns back the metrics named in
            ``data[key + "_metrics"]``; None: every such key in ``data``.
        ece: metric -> ``(confidence column, correct column)`` of an equal-width ECE;
            empty: ``ece`` from ``confidence`` and ``correct`` where the records hold them.
        subset: ``(column, value)``: only those samples count for the ECE metrics; None:
            ``split == 1`` where the records hold a ``split`` (a calibration study's
            evaluation half), else all.
        targets: multi-label audits: bool ``(n, K)``, the findings of each sample, columns
            in ``class_names`` order; None for single-label audits.
        findings: multi-label audits: ``(scores column, correct column)``, the record keys
            of the ``(n, K)`` per-finding probabilities and of the ``(n, K)`` 0/1 "the
            thresholded call equals the target"; None where the study has no such columns.
        thresholded: bool ``(n,)``: the samples the thresholded metrics (sensitivity,
            specificity) are read on; None: all.
    """

    records: Mapping[str, np.ndarray]
    data: Mapping[str, Any] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    labels: np.ndarray = field(default_factory=lambda: np.asarray([], dtype=str))
    class_names: Sequence[str] = ()
    binary: Sequence[str] | None = None
    ece: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    subset: tuple[str, int] | None = None
    targets: np.ndarray | None = None
    findings: tuple[str, str] | None = None
    thresholded: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(len(self.labels))

    def finding_index(self, finding: str) -> int | None:
        """The column of ``finding`` in ``targets`` and the finding records, or None when the
        records are not multi-label or have no such finding."""
        if self.targets is None or self.findings is None or finding not in list(self.class_names):
            return None
        return list(self.class_names).index(finding)


StatisticFactory = Callable[[PairedRecords, str], "Statistic | None"]
"""``(records, metric name within its study) -> Statistic``, or None where it does not apply."""

PAIRED_STATISTICS: dict[str, StatisticFactory] = {}
"""A plug-in's statistics: fnmatch pattern over the full dotted metric name -> factory. Later
entries are tried first, all before the built-ins of :mod:`robustkit.metrics.paired_statistics`;
compare keeps a statistic only if it reproduces the stored metric on both audits."""


def paired_statistic(pattern: str) -> Callable[[StatisticFactory], StatisticFactory]:
    """Register the decorated factory for metrics whose full name matches ``pattern``.

    Example:
        >>> @paired_statistic("mystudy.mean_margin")
        ... def _margin(pr, metric):
        ...     col = pr.records.get("margin")
        ...     return None if col is None else (lambda idx: col[idx].mean(axis=1))
    """

    def register(fn: StatisticFactory) -> StatisticFactory:
        PAIRED_STATISTICS[pattern] = fn
        return fn

    return register


@dataclass(frozen=True)
class PairedTestResult:
    """The p-value of a paired test of one metric.

    Attributes:
        test: its name as compare shows it (``mcnemar-exact``, ``delong``).
        p_value: two-sided p-value.
        discordant: McNemar's ``(b, c)``, or None.
    """

    test: str
    p_value: float
    discordant: tuple[int, int] | None = None


TestFactory = Callable[[PairedRecords, PairedRecords, str], "PairedTestResult | None"]
"""``(baseline records, candidate records, metric name within its study) -> result``, or None
where the test does not apply."""

PAIRED_TESTS: dict[str, TestFactory] = {}
"""A plug-in's tests: fnmatch pattern over the full dotted metric name -> test. Later entries
are tried first, all before the built-ins; a metric no test takes gets the paired bootstrap's
p-value."""


def paired_test(pattern: str) -> Callable[[TestFactory], TestFactory]:
    """Register the decorated test for metrics whose full name matches ``pattern``."""

    def register(fn: TestFactory) -> TestFactory:
        PAIRED_TESTS[pattern] = fn
        return fn

    return register


def binary_column(pr: PairedRecords, metric: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The 0/1 per-sample column whose mean is ``metric``, and the mask of samples it averages.

    A study declares such columns as ``records[key]`` ``(n, M)`` with ``data[key + "_metrics"]``
    the ``M`` metric names (``correct`` / ``correct_metrics`` for accuracies). A per-class
    ``sensitivity.<class>`` (or ``sensitivity.<class>.<condition>``) of a single-label audit is
    the accuracy column (of that condition) over the samples of that class. A multi-label finding's
    ``sensitivity.<finding>`` (``specificity.<finding>``) is its "call equals target" column
    over the thresholded samples with (without) the finding.
    """
    found = _finding_column(pr, metric)
    if found is not None:
        return found
    for key, names in pr.data.items():
        if not key.endswith("_metrics") or not isinstance(names, (list, tuple)) or metric not in names:
            continue
        if pr.binary is not None and key[: -len("_metrics")] not in pr.binary:
            continue
        arr = pr.records.get(key[: -len("_metrics")])
        if arr is not None and arr.ndim == 2 and arr.shape[1] == len(names):
            return np.asarray(arr[:, list(names).index(metric)], dtype=bool), np.ones(pr.n, dtype=bool)
    root, _, rest = metric.partition(".")
    if root != "sensitivity":
        return None
    for cls in sorted(set(map(str, pr.labels)), key=len, reverse=True):  # longest name first
        if rest == cls or rest.startswith(cls + "."):
            condition = rest[len(cls) + 1 :]
            found = binary_column(pr, f"accuracy.{condition}" if condition else "accuracy")
            if found is not None:
                return found[0], pr.labels == cls
    return None


def _finding_column(pr: PairedRecords, metric: str) -> tuple[np.ndarray, np.ndarray] | None:
    root, _, finding = metric.partition(".")
    k = pr.finding_index(finding) if root in ("sensitivity", "specificity") else None
    if k is None or pr.targets is None or pr.findings is None:
        return None
    correct = pr.records.get(pr.findings[1])
    if correct is None or correct.ndim != 2 or correct.shape[1] != pr.targets.shape[1]:
        return None
    present = pr.targets[:, k] if root == "sensitivity" else ~pr.targets[:, k]
    keep = present if pr.thresholded is None else present & pr.thresholded
    return np.asarray(correct[:, k], dtype=bool), keep


def _masked_mean(col: np.ndarray, mask: np.ndarray) -> Statistic:
    col = col.astype(np.float64)

    def stat(idx: np.ndarray) -> np.ndarray:
        m = mask[idx]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(m, col[idx], 0.0).sum(axis=1) / m.sum(axis=1)

    return stat


def nanmean_of(stats: list[Statistic]) -> Statistic:
    """The mean of the defined values of several statistics on each resample (a macro mean)."""

    def stat(idx: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(np.stack([s(idx) for s in stats]), axis=0)

    return stat
