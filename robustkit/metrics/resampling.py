"""The one resampling home: seeded bootstrap indices (plain, stratified), percentile
intervals, and the paired bootstrap of a difference.

* :func:`bootstrap_indices`: indices ``(B, n)`` with replacement, within strata if given
  (every class keeps its count);
* :func:`bootstrap_interval`: the percentile interval of any statistic of the indices
  (:func:`percentile_interval` of values resampled elsewhere);
* :func:`bootstrap_weights` and :func:`weighted_bootstrap_interval`: the same resampling as
  counts ``(b, n)`` (how many times each sample is drawn: multinomial within each stratum),
  in blocks of :data:`BOOTSTRAP_BLOCK` resamples, so that memory is bounded by the block and
  every metric of a study is a weighted sum over one shared set of resamples (a matrix
  product per block instead of one ``(B, n)`` gather per metric);
* :func:`resample_indices` and :func:`paired_bootstrap`: the same resamples for two models'
  paired samples, the interval and a p-value of ``second - first`` (Efron and Tibshirani
  1993, ch. 16).

Undefined values (NaN) are left out of an interval's quantiles; the macro means inside the
statistics use :func:`robustkit.metrics.average.nan_mean`. Pure numpy/scipy.

Example:
    >>> bootstrap_indices(4, 2, seed=0, strata=np.array([0, 0, 1, 1])).shape
    (2, 4)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from robustkit.errors import check_range

__all__ = ["BOOTSTRAP_BLOCK", "BootstrapResult", "bootstrap_indices", "bootstrap_interval", "bootstrap_weights",
           "paired_bootstrap", "percentile_interval", "resample_indices", "weighted_bootstrap_interval"]

#: resamples per block of :func:`bootstrap_weights`: each block has its own seeded stream, so
#: the draws depend on the seed and this constant only (not on N, the workers or the caller)
BOOTSTRAP_BLOCK = 64


def bootstrap_indices(n: int, n_boot: int, *, seed: int, strata: np.ndarray | None = None) -> np.ndarray:
    """Resampling indices ``(n_boot, n)``, drawn with replacement (within strata if given)."""
    rng = np.random.default_rng(seed)
    if strata is None:
        return rng.integers(0, n, size=(n_boot, n))
    strata = np.asarray(strata)
    out = np.empty((n_boot, n), dtype=np.int64)
    for s in np.unique(strata):
        pos = np.flatnonzero(strata == s)
        out[:, pos] = pos[rng.integers(0, len(pos), size=(n_boot, len(pos)))]
    return out


def bootstrap_interval(
    stat: Callable[[np.ndarray], float | np.ndarray],
    n: int,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    strata: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of ``stat(indices)``.

    Args:
        stat: maps an index array ``(n,)`` to a number or an array of numbers.
        n: number of samples.
        n_boot: resamples.
        seed: seed of the resampling.
        level: coverage of the interval.
        strata: optional labels; resampling is done within each stratum so that every
            class keeps its count (the usual choice for per-class metrics).

    Returns:
        ``(low, high)``, each shaped like ``stat``'s output; NaN where the statistic was
        undefined in more than half of the resamples.
    """
    idx = bootstrap_indices(n, n_boot, seed=seed, strata=strata)
    return percentile_interval(np.asarray([np.asarray(stat(row), dtype=np.float64) for row in idx]), level=level)


def bootstrap_weights(n: int, n_boot: int, *, seed: int, strata: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """Resampling counts in blocks: ``(b, n)`` float64 arrays, ``b <= BOOTSTRAP_BLOCK``, ``n_boot`` rows in all.

    Row ``r`` holds how many times each sample is drawn in resample ``r``: ``n`` draws with
    replacement (within each stratum if ``strata`` is given, so every stratum keeps its count),
    i.e. multinomial counts. A statistic of the counts (a weighted sum) equals the same
    statistic of the resampled indices; block ``j`` draws from
    ``numpy.random.default_rng([seed, j])``, so the resamples do not depend on how they are
    consumed. Memory: one block, ``BOOTSTRAP_BLOCK * n`` values.

    Example:
        >>> w = next(bootstrap_weights(5, 3, seed=0, strata=np.array([0, 0, 1, 1, 1])))
        >>> w.shape, w[:, :2].sum(axis=1).tolist(), w[:, 2:].sum(axis=1).tolist()
        ((3, 5), [2.0, 2.0, 2.0], [3.0, 3.0, 3.0])
    """
    groups = [np.arange(n)] if strata is None else [np.flatnonzero(strata == s) for s in np.unique(strata)]
    for j, start in enumerate(range(0, n_boot, BOOTSTRAP_BLOCK)):
        b = min(BOOTSTRAP_BLOCK, n_boot - start)
        rng = np.random.default_rng([seed, j])
        counts = np.zeros((b, n), dtype=np.float64)
        for pos in groups:
            m = len(pos)
            drawn = rng.integers(0, m, size=(b, m)) + (np.arange(b) * m)[:, None]
            counts[:, pos] = np.bincount(drawn.ravel(), minlength=b * m).reshape(b, m)
        yield counts


def weighted_bootstrap_interval(
    stat: Callable[[np.ndarray], np.ndarray],
    n: int,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    strata: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of ``stat(weights)`` over :func:`bootstrap_weights`.

    Args:
        stat: maps resampling counts ``(b, n)`` to values ``(b, ...)`` (one row per resample;
            NaN where undefined), e.g. ``lambda w: w @ x / w.sum(axis=1, keepdims=True)``.
        n, n_boot, seed, level, strata: as :func:`bootstrap_interval`.

    Returns:
        ``(low, high)``, each ``stat``'s shape without the first axis; NaN where the statistic
        was undefined in more than half of the resamples.
    """
    values = np.concatenate([np.asarray(stat(w), dtype=np.float64)
                             for w in bootstrap_weights(n, n_boot, seed=seed, strata=strata)])
    return percentile_interval(values, level=level)


def percentile_interval(values: np.ndarray, *, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """The percentile interval of resampled values ``(B, ...)`` over the first axis.

    Undefined values (NaN, inf) are left out; where more than half of the resamples are
    undefined, the interval is NaN. Returns ``(low, high)``, each ``values.shape[1:]``.
    """
    alpha = (1.0 - level) / 2.0
    finite = np.where(np.isfinite(values), values, np.nan)
    valid = np.mean(np.isfinite(values), axis=0) >= 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns give NaN, as wanted
        lo = np.nanquantile(finite, alpha, axis=0)
        hi = np.nanquantile(finite, 1 - alpha, axis=0)
    return np.where(valid, lo, np.nan), np.where(valid, hi, np.nan)


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
