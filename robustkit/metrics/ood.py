"""Out-of-distribution detection: post hoc scores from logits and features, and their metrics.

Every score is *higher = more in-distribution* (ID). The detection metrics treat ID as the
positive class (the convention of Hendrycks & Gimpel 2017 and of ``FPR at 95% TPR`` in
Liang et al. 2018); OpenOOD (Yang et al. 2022) reports FPR@95 with OOD as the positive
class, given here too as ``fpr95_openood``.

Scores (``(N,)`` from logits ``(N, K)`` and features ``(N, D)``):

* :func:`msp_score`: maximum softmax probability (Hendrycks & Gimpel, ICLR 2017);
* :func:`max_logit_score`: maximum logit (Hendrycks et al., ICML 2022);
* :func:`energy_score`: ``logsumexp`` of the logits, the negative free energy (Liu et al.,
  NeurIPS 2020);
* :func:`mahalanobis_score`: minus the smallest Mahalanobis distance to a class mean under
  a shared covariance (Lee et al., NeurIPS 2018), fitted by :func:`fit_gaussian` (shrunk by
  ``shrinkage = 0.01`` by default: the OOD study's ``mahalanobis_shrinkage``);
* :func:`knn_score`: minus the cosine distance to the k-th nearest reference feature
  (Sun et al., ICML 2022), exact, comparing each feature only with the bank rows a bound
  leaves possible (the bank sorted along its principal axis);
* :func:`vim_score`: energy minus the scaled norm of the feature's residual outside the
  principal subspace (ViM, Wang et al., CVPR 2022), fitted by :func:`fit_vim`;
* :func:`react_score`: energy of the logits recomputed from features clipped at a
  percentile of the reference activations (ReAct, Sun et al., NeurIPS 2021).

Detection metrics (:func:`ood_metrics`, ID positive) and their percentile bootstrap
intervals (:func:`ood_intervals`, :func:`detection_intervals`) live in
:mod:`robustkit.metrics.ood_detection` and are re-exported here.

Example:
    >>> import numpy as np
    >>> ood_metrics(np.array([3.0, 2.0, 1.5]), np.array([0.1, 0.2]))["auroc"]
    1.0
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from robustkit.errors import check_range, param_error
from robustkit.metrics.ood_detection import (
    DETECTION_METRICS,
    detection_intervals,
    ood_intervals,
    ood_metrics,
    threshold_at_tpr,
)
from robustkit.metrics.outputs import probabilities

__all__ = [
    "DETECTION_METRICS",
    "ViMFit",
    "detection_intervals",
    "energy_score",
    "fit_gaussian",
    "fit_vim",
    "joint_energy",
    "knn_score",
    "mahalanobis_score",
    "max_logit_score",
    "msp_score",
    "ood_intervals",
    "ood_metrics",
    "react_clip",
    "react_score",
    "shrunk_covariance",
    "threshold_at_tpr",
    "vim_score",
]

# -- scores --------------------------------------------------------------------------------
def _logsumexp(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    m = z.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]


def msp_score(logits: np.ndarray, kind: str = "softmax") -> np.ndarray:
    """Maximum probability ``(N,)`` of logits ``(N, K)`` read as the model's ``kind``."""
    return probabilities(np.asarray(logits, dtype=np.float64), kind).max(axis=1)


def max_logit_score(logits: np.ndarray) -> np.ndarray:
    """Maximum logit ``(N,)``."""
    return np.asarray(logits, dtype=np.float64).max(axis=1)


def energy_score(logits: np.ndarray) -> np.ndarray:
    """Negative free energy ``logsumexp(z)`` ``(N,)`` at temperature 1."""
    return _logsumexp(logits)


def joint_energy(logits: np.ndarray) -> np.ndarray:
    """JointEnergy ``(N,)`` of a multi-label head's pre-sigmoid logits ``(N, K)``:
    ``sum_k log(1 + exp(z_k))`` (Wang et al. 2021, "Can multi-label classification networks
    know what they don't know?"); higher = more in-distribution."""
    return np.logaddexp(0.0, np.asarray(logits, dtype=np.float64)).sum(axis=1)


def fit_gaussian(features: np.ndarray, labels: np.ndarray, num_classes: int,
                 *, shrinkage: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Class means ``(K, D)`` and the inverse of the shared (pooled within-class) covariance
    ``(D, D)`` of reference features ``(N, D)`` with labels ``(N,)``.

    The covariance is shrunk towards its mean variance, ``(1 - s) S + s tr(S)/D I``, so that
    fewer reference images than feature dimensions still give a stable inverse (``s = 0``:
    the pseudo-inverse of ``S``, Lee et al.'s estimator).

    Raises:
        ConfigError: when a class has no reference sample.
    """
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    counts = np.bincount(y, minlength=num_classes)
    if np.any(counts == 0):
        raise param_error("reference labels", f"at least one reference sample of each of {num_classes} classes",
                          f"none of class(es) {np.flatnonzero(counts == 0).tolist()}")
    means = np.stack([f[y == k].mean(axis=0) for k in range(num_classes)])
    centred = f - means[y]
    cov = shrunk_covariance(centred.T @ centred / len(f), shrinkage)
    return means, (np.linalg.pinv(cov, hermitian=True) if shrinkage == 0 else np.linalg.inv(cov))


def shrunk_covariance(cov: np.ndarray, shrinkage: float) -> np.ndarray:
    """``(1 - s) S + s tr(S)/D I`` of a covariance ``(D, D)``."""
    check_range("shrinkage", shrinkage, low=0.0, high=1.0, where="fit_gaussian")
    scale = max(float(np.trace(cov)) / cov.shape[0], 1e-12)
    return (1 - shrinkage) * cov + shrinkage * scale * np.eye(cov.shape[0])


def mahalanobis_score(features: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Minus the smallest squared Mahalanobis distance ``(N,)`` to a class mean."""
    f = np.asarray(features, dtype=np.float64)
    fp = f @ precision  # (f - mu) P (f - mu) = f P f - 2 f P mu + mu P mu, one product for every class
    mp = np.asarray(means, dtype=np.float64) @ precision
    d2 = (fp * f).sum(axis=1)[:, None] - 2 * f @ mp.T + (mp * means).sum(axis=1)[None, :]
    return -d2.min(axis=1)


def _unit(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def knn_score(features: np.ndarray, bank: np.ndarray, k: int, *, chunk: int = 128) -> np.ndarray:
    """Minus the cosine distance ``(N,)`` to the ``k``-th nearest of the reference ``bank``
    ``(M, D)`` (both L2-normalised).

    Exact (the float64 brute force to float rounding), without comparing every feature with
    every bank row where a bound rules rows out: bank and features are sorted by their
    projection on the bank's first principal axis ``u``, and since unit vectors ``q``, ``b``
    have ``q . b <= 1 - ((q - b) . u)^2 / 2``, a bank row whose projection is farther than
    ``sqrt(2 (1 - t))`` from a feature's cannot reach a similarity ``t``. Each block of
    ``chunk`` features (consecutive in that order) takes ``t`` from a probe (the
    :data:`_KNN_PROBE` bank rows nearest in projection: their ``k``-th largest similarity is
    a lower bound of the ``k``-th over the bank), and compares itself with the bank rows of
    its window only (:func:`_kth_similarity`). The cost depends on the data: near neighbours
    (a large bank, tight clusters) give narrow windows; spread features fall back to every
    pair, as before.
    """
    check_range("k", k, low=1, high=max(len(bank), 1), integer=True, where="knn_score")
    b, f = _unit(bank), _unit(features)
    axis = _principal_axis(b)
    by = np.argsort(b @ axis, kind="stable")
    b = b[by]
    pb, pf = b @ axis, f @ axis
    out = np.empty(len(f))
    order = np.argsort(pf, kind="stable")
    # one BLAS thread: a block's (chunk, D) @ (D, window) products are too small to share out, and
    # the hand-off between threads cost more than they brought (bench_reduce at N = 100,000 on a
    # busy 2-core machine: 7 s against 22 to 48 s). threadpoolctl comes with scikit-learn.
    with threadpool_limits(limits=1, user_api="blas"):
        for s in range(0, len(f), chunk):
            rows = order[s:s + chunk]
            out[rows] = _kth_similarity(f[rows], pf[rows], b, pb, k)
    return -(1.0 - out)


#: bank rows (nearest in projection) whose ``k``-th largest similarity bounds a block's window,
#: and the columns of the window (spread) that bound each row's candidates
_KNN_PROBE = 512


def _principal_axis(b: np.ndarray, steps: int = 12) -> np.ndarray:
    """A unit vector ``(D,)`` along which the rows of ``b`` spread most (power iteration on
    their covariance; any unit vector keeps :func:`knn_score` exact, this one makes it fast)."""
    c = b - b.mean(axis=0)
    v = c[np.argmax((c * c).sum(axis=1))] if len(c) else np.zeros(b.shape[1])
    for _ in range(steps):
        v = c.T @ (c @ v)
        v = v / max(float(np.linalg.norm(v)), 1e-300)
    return v if np.linalg.norm(v) > 0.5 else np.eye(b.shape[1])[0]


def _kth_similarity(f: np.ndarray, pf: np.ndarray, b: np.ndarray, pb: np.ndarray, k: int) -> np.ndarray:
    """The ``k``-th largest similarity ``(c,)`` of unit rows ``f`` ``(c, D)`` (projections ``pf``)
    to the unit bank ``b`` ``(M, D)`` sorted by projection ``pb`` (see :func:`knn_score`).
    NaN for a row with fewer than ``k`` finite similarities."""
    m = min(len(b), max(k, _KNN_PROBE))
    lo = int(np.clip(np.searchsorted(pb, np.median(pf)) - m // 2, 0, len(b) - m))
    probe = f @ b[lo:lo + m].T
    bound = np.partition(probe, m - k, axis=1)[:, m - k] - 1e-12  # below float rounding of the same products
    reach = np.sqrt(2 * np.maximum(1.0 - bound, 0.0)) + 1e-7
    ok = np.isfinite(reach) & np.isfinite(pf)
    if not ok.any():
        return np.full(len(f), np.nan)
    start = np.searchsorted(pb, np.min((pf - reach)[ok]), side="left")
    stop = np.searchsorted(pb, np.max((pf + reach)[ok]), side="right")
    sims = f @ b[start:stop].T
    every = sims[:, ::max(1, sims.shape[1] // _KNN_PROBE)]  # a tighter bound per row: a spread subset of the window
    if every.shape[1] >= k:
        bound = np.maximum(bound, np.partition(every, every.shape[1] - k, axis=1)[:, every.shape[1] - k])
    idx = np.flatnonzero(sims >= bound[:, None])
    return _kth_by_row(idx // max(sims.shape[1], 1), sims.ravel()[idx], k, len(f))


def _kth_by_row(rows: np.ndarray, values: np.ndarray, k: int, n_rows: int) -> np.ndarray:
    """The ``k``-th largest of ``values`` in each row ``(n_rows,)`` (``rows`` ascending, as
    ``flatnonzero`` gives them): one partition of the rows padded to the longest; NaN for a row
    with fewer than ``k`` values."""
    counts = np.bincount(rows, minlength=n_rows)
    width = max(int(counts.max(initial=0)), k)
    padded = np.full((n_rows, width), -np.inf)
    padded[rows, np.arange(len(rows)) - np.r_[0, np.cumsum(counts)[:-1]][rows]] = values
    kth = np.partition(padded, width - k, axis=1)[:, width - k]
    return np.where(counts >= k, kth, np.nan)


@dataclass(frozen=True)
class ViMFit:
    """ViM's fitted statistics: origin ``u`` ``(D,)``, principal basis ``(D, dim)``, ``alpha``."""

    origin: np.ndarray
    principal_basis: np.ndarray
    alpha: float
    dim: int


def vim_dim(d: int) -> int:
    """The principal subspace's dimension for features of width ``d`` (ViM's choices)."""
    return 1000 if d >= 2048 else 512 if d >= 768 else max(1, d // 2)


def fit_vim(features: np.ndarray, logits: np.ndarray, kernel: np.ndarray, bias: np.ndarray,
            *, dim: int | None = None) -> ViMFit:
    """Fit ViM on reference features ``(N, D)`` and logits ``(N, K)`` of the final layer
    ``z = f @ kernel + bias`` (``kernel`` ``(D, K)``, ``bias`` ``(K,)``). The default
    principal dimension (:func:`vim_dim`) is capped at ``N - 1`` so that the principal
    subspace never takes arbitrary directions of the covariance's null space."""
    f = np.asarray(features, dtype=np.float64)
    d = f.shape[1]
    dim = min(vim_dim(d), max(1, len(f) - 1), d - 1) if dim is None else dim
    check_range("dim", dim, low=1, high=d - 1, integer=True, where="fit_vim")
    origin = -np.linalg.pinv(np.asarray(kernel, dtype=np.float64).T) @ np.asarray(bias, dtype=np.float64)
    c = f - origin
    _, _, vt = np.linalg.svd(c, full_matrices=False)  # rows: eigenvectors of c.T @ c, largest first
    basis = vt[:dim].T
    residual = _residual_norm(c, basis)
    alpha = float(np.asarray(logits, dtype=np.float64).max(axis=1).mean() / max(residual.mean(), 1e-12))
    return ViMFit(origin=origin, principal_basis=basis, alpha=alpha, dim=dim)


def _residual_norm(c: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """``||c - c B B^T||`` per row, for an orthonormal ``B`` ``(D, dim)``."""
    proj = c @ basis
    return np.sqrt(np.maximum((c * c).sum(axis=1) - (proj * proj).sum(axis=1), 0.0))


def vim_score(features: np.ndarray, logits: np.ndarray, fit: ViMFit,
              energy: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """ViM score ``(N,)``: ``logsumexp(z) - alpha * ||(f - u)`` outside the principal subspace``||``
    (``energy`` replaces ``logsumexp``: :func:`joint_energy` for a multi-label head)."""
    residual = _residual_norm(np.asarray(features, dtype=np.float64) - fit.origin, fit.principal_basis)
    return (energy or _logsumexp)(logits) - fit.alpha * residual


def react_clip(features: np.ndarray, percentile: float = 90.0) -> float:
    """ReAct's clipping level: the ``percentile`` of every reference activation ``(N, D)``."""
    check_range("percentile", percentile, low=0.0, high=100.0, where="react_clip")
    return float(np.percentile(np.asarray(features, dtype=np.float64), percentile))


def react_score(features: np.ndarray, clip: float, kernel: np.ndarray, bias: np.ndarray,
                energy: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Energy ``(N,)`` of ``min(f, clip) @ kernel + bias`` (``energy``: as in :func:`vim_score`)."""
    f = np.minimum(np.asarray(features, dtype=np.float64), clip)
    return (energy or _logsumexp)(f @ np.asarray(kernel, dtype=np.float64) + np.asarray(bias, dtype=np.float64))
