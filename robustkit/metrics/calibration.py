"""Calibration estimators as pure numpy functions: the ECE family, Brier, NLL, reliability bins.

Every estimator states its binning, because calibration numbers are meaningless without
it (anchors disagree on 10, 15, 20 or 30 bins, equal-width or equal-mass):

* **equal-width** bins: edges ``np.linspace(0, 1, n_bins + 1)``; bin ``m`` holds the
  confidences in ``(e_m, e_{m+1}]`` and the first bin also holds exactly 0, so a
  confidence of exactly 1.0 falls in the last bin and one on an inner edge in the bin
  below it (Guo et al. 2017's convention). Empty bins carry no weight.
* **equal-mass** bins: the samples sorted by confidence (stable sort) and cut into
  ``n_bins`` groups whose sizes differ by at most one (``np.array_split``), so tied
  confidences may straddle a cut (Nixon et al. 2019's adaptive binning).

Directions: every ``*_error``-type metric here (ECE, MCE, Brier, NLL) is lower-is-better.
Temperature scaling lives in :mod:`robustkit.metrics.temperature`, selective prediction
(risk-coverage, referral) in :mod:`robustkit.metrics.selective`. No TensorFlow here.

Example:
    >>> import numpy as np
    >>> p = np.array([[0.9, 0.1], [0.6, 0.4]]); y = np.array([0, 1])
    >>> round(ece(p, y, n_bins=10), 3)
    0.35
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "brier",
    "classwise_ece",
    "classwise_ece_adaptive",
    "compact_counts",
    "debiased_l2_ce",
    "debiased_l2_of_sums",
    "ece",
    "ece_compute",
    "ece_equal_mass",
    "ece_update",
    "equal_mass_bins",
    "equal_mass_sums_counts",
    "equal_width_bins",
    "l1_of_sums",
    "log_softmax",
    "mce",
    "mce_of_sums",
    "nll",
    "reliability_bins",
    "sample_nll",
    "softmax",
    "wilson_interval",
]

BINNINGS = ("equal_width", "equal_mass")


# ---------------------------------------------------------------- inputs and bins


def _check(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if p.ndim != 2 or p.shape[0] != y.shape[0]:
        raise ValueError(f"expected probs (N, K) and labels (N,), got {p.shape} and {y.shape}.")
    return p, y


def _top_label(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Confidence (max probability) and correctness of the argmax, both ``(N,)``."""
    p, y = _check(probs, labels)
    return p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64)


def equal_width_bins(conf: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin index ``(N,)`` of each confidence: bins ``(e_m, e_{m+1}]``, 0 in the first bin."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.searchsorted(edges, np.asarray(conf, dtype=np.float64), side="left") - 1
    return np.clip(idx, 0, n_bins - 1)


def equal_mass_bins(conf: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin index ``(N,)``: sorted by confidence (stable) and cut in ``n_bins`` near-equal groups."""
    conf = np.asarray(conf, dtype=np.float64)
    order = np.argsort(conf, kind="mergesort")
    idx = np.empty(len(conf), dtype=np.int64)
    for b, part in enumerate(np.array_split(order, n_bins)):
        idx[part] = b
    return idx


def _bin(conf: np.ndarray, n_bins: int, binning: str) -> np.ndarray:
    if binning not in BINNINGS:
        raise ValueError(f"expected binning in {BINNINGS}, got {binning!r}.")
    return equal_width_bins(conf, n_bins) if binning == "equal_width" else equal_mass_bins(conf, n_bins)


def _bin_stats(conf: np.ndarray, hit: np.ndarray, idx: np.ndarray, n_bins: int) -> tuple[np.ndarray, ...]:
    """Per bin: count, mean confidence, mean outcome (NaN in empty bins)."""
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
        mean_hit = np.bincount(idx, weights=hit, minlength=n_bins) / count
    return count, mean_conf, mean_hit


def _binned_l1(conf: np.ndarray, hit: np.ndarray, n_bins: int, binning: str) -> float:
    if len(conf) == 0:
        return float("nan")
    bins, gap = ece_update(conf, hit, n_bins=n_bins, binning=binning)
    return float(ece_compute(bins, gap, np.arange(len(conf))[None, :], n_bins=n_bins)[0])


# ---------------------------------------------------------------- ECE stages (shared with compare)


def ece_update(conf: np.ndarray, hit: np.ndarray, *, n_bins: int,
               binning: str = "equal_width") -> tuple[np.ndarray, np.ndarray]:
    """First stage of the binned L1 calibration error: per-sample bin and signed gap.

    The point metric (:func:`ece`) and a paired bootstrap of it (compare) both go through
    this stage and :func:`ece_compute`, so they share one binning convention (see the module
    docstring). A bootstrap keeps the bins of the full sample, as torchmetrics' stages do.

    Args:
        conf: ``(N,)`` confidences in [0, 1].
        hit: ``(N,)`` outcomes (1 correct, 0 wrong).
        n_bins: number of bins.
        binning: ``equal_width`` or ``equal_mass``.

    Returns:
        ``(bins, gap)``: bin index ``(N,)`` int64 and ``hit - conf`` ``(N,)`` float64.
    """
    conf = np.asarray(conf, dtype=np.float64).reshape(-1)
    hit = np.asarray(hit, dtype=np.float64).reshape(-1)
    return _bin(conf, n_bins, binning), hit - conf


def ece_compute(bins: np.ndarray, gap: np.ndarray, rows: np.ndarray, *, n_bins: int,
                keep: np.ndarray | None = None) -> np.ndarray:
    """Second stage: ``sum_b |sum_{i in b} gap_i| / n`` for each row of sample indices.

    Equal to ``sum_b n_b / n * |acc_b - conf_b|`` over populated bins (Guo et al. 2017).

    Args:
        bins, gap: the output of :func:`ece_update`, ``(N,)`` each.
        rows: ``(B, n)`` indices into the samples (``np.arange(N)[None]`` for the point
            metric; bootstrap resamples otherwise).
        n_bins: number of bins.
        keep: optional ``(N,)`` mask of the samples that count (others are ignored).

    Returns:
        ``(B,)`` errors; NaN for a row with no kept sample.
    """
    rows = np.asarray(rows, dtype=np.int64)
    weight = np.ones(len(gap)) if keep is None else np.asarray(keep, dtype=np.float64)
    offset = np.arange(rows.shape[0])[:, None] * n_bins
    sums = np.bincount((offset + bins[rows]).ravel(), weights=(gap * weight)[rows].ravel(),
                       minlength=rows.shape[0] * n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        n = weight[rows].sum(axis=1)
        return np.where(n > 0, np.abs(sums.reshape(rows.shape[0], n_bins)).sum(axis=1) / n, np.nan)


def compact_counts(weights: np.ndarray) -> np.ndarray:
    """Integer counts ``(b, N)`` in the smallest unsigned type that holds them (uint8 for any
    ordinary bootstrap): gathering them in a sorted order moves an eighth of the float64 bytes."""
    w = np.asarray(weights)
    return w.astype(np.min_scalar_type(int(w.max()) if w.size else 0))


def equal_mass_sums_counts(order: np.ndarray, values: np.ndarray, weights: np.ndarray,
                           *, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Equal-mass bins of each resample given as counts: per-bin count and sums of ``values``.

    A resample with counts ``w`` (``w_i`` copies of sample i, ``n = sum_i w_i``) sorted by
    confidence is the samples in the order ``order`` (``np.argsort(conf, kind="mergesort")``,
    computed once by the caller), each repeated ``w_i`` times; :func:`equal_mass_bins` cuts it at
    the bounds of ``np.array_split(n, n_bins)``. The cumulative counts give every sample's
    positions: the sorted samples are read in chunks (about ``sqrt(N / n_bins)`` samples), the
    chunk holding each cut is found from the chunks' cumulative counts and only it is summed
    sample by sample, so a
    cut's prefix sum (the samples wholly before it, plus the copies before it of the sample that
    straddles it) costs a few reductions over the block. Equal to the sums over
    :func:`equal_mass_bins` of the drawn rows up to float rounding, up to the order of distinct
    samples with exactly tied confidences (sorted here by sample position, in the drawn rows by
    draw position).

    Args:
        order: ``(N,)`` the samples by increasing confidence (stable).
        values: ``(N, V)`` or ``(N,)`` per-sample values (in the samples' own order).
        weights: ``(b, N)`` integer counts (any numeric dtype; :func:`compact_counts` is fastest).
        n_bins: number of bins.

    Returns:
        ``(count, sums)``: ``(b, n_bins)`` samples per bin and ``(b, n_bins, V)`` sums.
    """
    v = np.asarray(values, dtype=np.float64).reshape(len(order), -1)[order]
    w = np.asarray(weights)[:, order]
    b, n = w.shape
    size = max(8, int(np.sqrt(n / (n_bins + 1))))  # balances the chunk sums and the cuts' chunks
    chunks = -(-n // size)
    w = np.pad(w, ((0, 0), (0, chunks * size - n))).reshape(b, chunks, size)  # zero counts pad the last chunk
    v = np.pad(v, ((0, chunks * size - n), (0, 0))).reshape(chunks, size, -1)
    ends = np.cumsum(w.sum(axis=2, dtype=np.int64), axis=1)  # (b, chunks): copies up to each chunk's end
    total = ends[:, -1]
    q, r = np.divmod(total, n_bins)
    m = np.arange(n_bins + 1)
    cuts = m * q[:, None] + np.minimum(m, r[:, None])  # (b, n_bins + 1): np.array_split's bounds
    rows = np.arange(b)[:, None]
    step = int(total.max()) + 1  # rows laid end to end stay sorted
    g = np.searchsorted((ends + step * rows).ravel(), (cuts + step * rows).ravel(), side="right").reshape(cuts.shape)
    g = np.minimum(g - chunks * rows, chunks - 1)  # the chunk holding each cut (the last one for a cut at n)
    start = np.where(g > 0, ends[rows, np.maximum(g - 1, 0)], 0)  # copies before that chunk
    held = w[rows, g]  # (b, n_bins + 1, size) the counts of each cut's chunk
    inner = np.cumsum(held, axis=2, dtype=np.int64) + start[..., None]
    before = inner <= cuts[..., None]  # the chunk's samples wholly before the cut
    k = before.sum(axis=2)
    partial = cuts - np.where(k > 0, np.take_along_axis(inner, np.maximum(k - 1, 0)[..., None], 2)[..., 0], start)
    straddler = np.minimum(k, size - 1)  # the sample with copies on both sides (none when k == size)
    sums = np.empty((b, n_bins, v.shape[2]))
    for j in range(v.shape[2]):
        chunk_sums = np.cumsum(np.einsum("rcs,cs->rc", w, v[:, :, j]), axis=1)
        prefix = np.where(g > 0, chunk_sums[rows, np.maximum(g - 1, 0)], 0.0)
        vj = v[g, :, j]  # (b, n_bins + 1, size)
        prefix = prefix + (held * vj * before).sum(axis=2)
        prefix += partial * np.take_along_axis(vj, straddler[..., None], 2)[..., 0]
        sums[:, :, j] = np.diff(prefix, axis=1)
    return np.diff(cuts, axis=1), sums


def l1_of_sums(gap_sums: np.ndarray, n: np.ndarray) -> np.ndarray:
    """The binned L1 error of per-bin sums of ``hit - conf`` ``(b, n_bins)`` over ``n`` ``(b,)``
    samples: ``sum_b |gap sum of bin b| / n`` (NaN where ``n == 0``). With the sums of
    :func:`equal_mass_sums_counts` it is :func:`ece_equal_mass` (or one class's term of
    :func:`classwise_ece_adaptive`) of each resample; with equal-width ones, :func:`ece`."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.abs(gap_sums).sum(axis=1) / n, np.nan)


def mce_of_sums(count: np.ndarray, gap_sums: np.ndarray) -> np.ndarray:
    """:func:`mce` of per-bin counts and sums of ``hit - conf`` ``(b, n_bins)``: the largest
    ``|gap sum| / count`` over populated bins, ``(b,)`` (NaN for a row without samples)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(count > 0, np.abs(gap_sums) / count, -np.inf).max(axis=1)
    return np.where(np.isfinite(out), out, np.nan)


def debiased_l2_of_sums(count: np.ndarray, conf_sums: np.ndarray, hit_sums: np.ndarray) -> np.ndarray:
    """:func:`debiased_l2_ce` of per-bin counts and sums ``(b, n_bins)`` (those of
    :func:`equal_mass_sums_counts` for each resample): ``(b,)``."""
    keep = count >= 2
    with np.errstate(invalid="ignore", divide="ignore"):
        mc, mh = conf_sums / count, hit_sums / count
        err = (mc - mh) ** 2 - mh * (1.0 - mh) / (count - 1.0)
        total = np.where(keep, count * err, 0.0).sum(axis=1) / count.sum(axis=1)
    return np.sqrt(np.maximum(total, 0.0))


# ---------------------------------------------------------------- top-label calibration


def ece(probs: np.ndarray, labels: np.ndarray, *, n_bins: int = 15, binning: str = "equal_width") -> float:
    """Top-label expected calibration error (lower is better, in [0, 1]).

    ``sum_b n_b / N * |acc_b - conf_b|`` over populated bins of the max probability
    (Guo et al. 2017, "On calibration of modern neural networks"; Naeini et al. 2015).

    Args:
        probs: ``(N, K)`` probabilities.
        labels: ``(N,)`` class indices.
        n_bins: number of bins.
        binning: ``equal_width`` (default) or ``equal_mass``.
    """
    conf, hit = _top_label(probs, labels)
    return _binned_l1(conf, hit, n_bins, binning)


def ece_equal_mass(probs: np.ndarray, labels: np.ndarray, *, n_bins: int = 15) -> float:
    """Top-label ECE with equal-mass bins (lower is better; Nixon et al. 2019, adaptive binning)."""
    return ece(probs, labels, n_bins=n_bins, binning="equal_mass")


def mce(probs: np.ndarray, labels: np.ndarray, *, n_bins: int = 15, binning: str = "equal_width") -> float:
    """Maximum calibration error: the largest ``|acc_b - conf_b|`` over populated bins.

    Lower is better (Naeini et al. 2015; Guo et al. 2017). Very sensitive to sparsely
    populated bins: read it with the bin counts.
    """
    conf, hit = _top_label(probs, labels)
    if len(conf) == 0:
        return float("nan")
    count, mc, mh = _bin_stats(conf, hit, _bin(conf, n_bins, binning), n_bins)
    return float(np.max(np.abs(mh - mc)[count > 0]))


def debiased_l2_ce(probs: np.ndarray, labels: np.ndarray, *, n_bins: int = 15) -> float:
    """Debiased top-label L2 calibration error (lower is better).

    Kumar, Liang & Ma 2019, "Verified uncertainty calibration": in each of ``n_bins``
    equal-mass bins the plug-in ``(conf_b - acc_b)^2`` is biased upward by the variance of
    ``acc_b``; subtract ``acc_b (1 - acc_b) / (n_b - 1)`` (bins of one sample count 0),
    weight by ``n_b / N``, clip the sum at 0 and take the square root.
    """
    conf, hit = _top_label(probs, labels)
    if len(conf) == 0:
        return float("nan")
    count, mc, mh = _bin_stats(conf, hit, equal_mass_bins(conf, n_bins), n_bins)
    keep = count >= 2
    err = (mc[keep] - mh[keep]) ** 2 - mh[keep] * (1.0 - mh[keep]) / (count[keep] - 1.0)
    return float(np.sqrt(max(float(np.sum(count[keep] / len(conf) * err)), 0.0)))


# ---------------------------------------------------------------- classwise calibration


def _classwise(probs: np.ndarray, labels: np.ndarray, n_bins: int, binning: str) -> float:
    p, y = _check(probs, labels)
    if len(y) == 0:
        return float("nan")
    errs = [_binned_l1(p[:, k], (y == k).astype(np.float64), n_bins, binning) for k in range(p.shape[1])]
    return float(np.mean(errs))


def classwise_ece(probs: np.ndarray, labels: np.ndarray, *, n_bins: int = 15) -> float:
    """Static calibration error (SCE; Nixon et al. 2019, "Measuring calibration in deep learning").

    For every class k, ``p[:, k]`` is binned (equal width) against the outcome ``y == k``;
    the binned L1 errors are averaged over classes. Lower is better.
    """
    return _classwise(probs, labels, n_bins, "equal_width")


def classwise_ece_adaptive(probs: np.ndarray, labels: np.ndarray, *, n_bins: int = 15) -> float:
    """Adaptive calibration error (ACE; Nixon et al. 2019): classwise ECE with equal-mass bins.

    Lower is better.
    """
    return _classwise(probs, labels, n_bins, "equal_mass")


# ---------------------------------------------------------------- proper scores


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    """Multi-class Brier score ``mean_i sum_k (p_ik - [y_i = k])^2`` in [0, 2] (lower is better).

    Brier 1950, "Verification of forecasts expressed in terms of probability".
    """
    p, y = _check(probs, labels)
    if len(y) == 0:
        return float("nan")
    onehot = np.eye(p.shape[1])[y]
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def nll(probs: np.ndarray, labels: np.ndarray, *, eps: float = 1e-15) -> float:
    """Negative log-likelihood ``-mean log p_{i, y_i}`` (lower is better; probabilities
    clipped at ``eps``). Prefer :func:`sample_nll` on logits, which never clips."""
    p, y = _check(probs, labels)
    if len(y) == 0:
        return float("nan")
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], eps, 1.0))))


def log_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise ``log softmax(logits / temperature)`` in float64, ``(N, K)``."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.sum(np.exp(z), axis=1, keepdims=True))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise ``softmax(logits / temperature)`` in float64, ``(N, K)``."""
    return np.exp(log_softmax(logits, temperature))


def sample_nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Per-sample negative log-likelihood ``(N,)`` of ``softmax(logits / T)``, exact (no clipping)."""
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    return -log_softmax(logits, temperature)[np.arange(len(y)), y]


# ---------------------------------------------------------------- reliability diagrams


def wilson_interval(successes: np.ndarray, n: np.ndarray, *, z: float = 1.959964) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval (95% by default) of a binomial proportion; NaN where ``n == 0``.

    Wilson 1927, "Probable inference, the law of succession, and statistical inference".
    """
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        denom = 1.0 + z**2 / n
        centre = (p + z**2 / (2 * n)) / denom
        half = z / denom * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)


def reliability_bins(conf: np.ndarray, hit: np.ndarray, *, n_bins: int = 15,
                     binning: str = "equal_width") -> dict[str, list[Any]]:
    """The numbers of a reliability diagram, one entry per bin.

    Args:
        conf: ``(N,)`` confidences (top-label, or ``p[:, k]`` for a classwise diagram).
        hit: ``(N,)`` outcomes (correct, or ``y == k``).
        n_bins: number of bins.
        binning: ``equal_width`` or ``equal_mass``.

    Returns:
        Lists over bins: ``lower``/``upper`` (bin range; for equal-mass the min/max
        confidence in it), ``count``, ``confidence`` (mean), ``accuracy`` (mean outcome),
        ``low``/``high`` (Wilson 95% interval on the accuracy); None where a bin is empty.
    """
    conf = np.asarray(conf, dtype=np.float64)
    hit = np.asarray(hit, dtype=np.float64)
    idx = _bin(conf, n_bins, binning)
    count, mc, mh = _bin_stats(conf, hit, idx, n_bins)
    lo, hi = wilson_interval(np.bincount(idx, weights=hit, minlength=n_bins), count)
    if binning == "equal_width":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        lower, upper = edges[:-1], edges[1:]
    else:
        lower = np.array([conf[idx == b].min() if c else np.nan for b, c in enumerate(count)])
        upper = np.array([conf[idx == b].max() if c else np.nan for b, c in enumerate(count)])

    def plain(a: np.ndarray) -> list[Any]:
        return [None if not np.isfinite(v) else round(float(v), 6) for v in a]

    return {"lower": plain(lower), "upper": plain(upper), "count": [int(c) for c in count],
            "confidence": plain(mc), "accuracy": plain(mh), "low": plain(lo), "high": plain(hi)}
