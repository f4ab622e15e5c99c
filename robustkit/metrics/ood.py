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
  a shared covariance (Lee et al., NeurIPS 2018), fitted by :func:`fit_gaussian`;
* :func:`knn_score`: minus the cosine distance to the k-th nearest reference feature
  (Sun et al., ICML 2022);
* :func:`vim_score`: energy minus the scaled norm of the feature's residual outside the
  principal subspace (ViM, Wang et al., CVPR 2022), fitted by :func:`fit_vim`;
* :func:`react_score`: energy of the logits recomputed from features clipped at a
  percentile of the reference activations (ReAct, Sun et al., NeurIPS 2021).

Example:
    >>> import numpy as np
    >>> ood_metrics(np.array([3.0, 2.0, 1.5]), np.array([0.1, 0.2]))["auroc"]
    1.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from robustkit.errors import check_range, param_error
from robustkit.metrics import classification as M
from robustkit.metrics.outputs import probabilities

__all__ = [
    "DETECTION_METRICS",
    "ViMFit",
    "aupr",
    "energy_score",
    "fit_gaussian",
    "fit_vim",
    "fpr_at_tpr",
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

#: metric name -> (meaning, direction)
DETECTION_METRICS: dict[str, tuple[str, str]] = {
    "auroc": ("ROC AUC of telling ID (positive) from the OOD set by the score", "higher"),
    "aupr_in": ("average precision with ID as the positive class", "higher"),
    "aupr_out": ("average precision with the OOD set as the positive class (score negated)", "higher"),
    "fpr95": ("share of the OOD set accepted at the threshold that keeps 95% of ID images", "lower"),
    "fpr95_openood": ("share of ID images rejected when 95% of the OOD set is rejected (OpenOOD's FPR@95)",
                      "lower"),
}


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
    best = np.full(len(f), np.inf)
    for mu in means:
        d = f - mu
        best = np.minimum(best, np.einsum("nd,de,ne->n", d, precision, d))
    return -best


def _unit(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def knn_score(features: np.ndarray, bank: np.ndarray, k: int, *, chunk: int = 1024) -> np.ndarray:
    """Minus the cosine distance ``(N,)`` to the ``k``-th nearest of the reference ``bank``
    ``(M, D)`` (both L2-normalised)."""
    check_range("k", k, low=1, high=max(len(bank), 1), integer=True, where="knn_score")
    b = _unit(bank)
    f = _unit(features)
    out = np.empty(len(f))
    for s in range(0, len(f), chunk):
        dist = 1.0 - f[s:s + chunk] @ b.T
        out[s:s + chunk] = np.partition(dist, k - 1, axis=1)[:, k - 1]
    return -out


@dataclass(frozen=True)
class ViMFit:
    """ViM's fitted statistics: origin ``u`` ``(D,)``, residual basis ``(D, D - dim)``, ``alpha``."""

    origin: np.ndarray
    residual_basis: np.ndarray
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
    eigval, eigvec = np.linalg.eigh(c.T @ c / len(c))
    basis = eigvec[:, np.argsort(-eigval)[dim:]]
    residual = np.linalg.norm(c @ basis, axis=1)
    alpha = float(np.asarray(logits, dtype=np.float64).max(axis=1).mean() / max(residual.mean(), 1e-12))
    return ViMFit(origin=origin, residual_basis=basis, alpha=alpha, dim=dim)


def vim_score(features: np.ndarray, logits: np.ndarray, fit: ViMFit) -> np.ndarray:
    """ViM score ``(N,)``: ``logsumexp(z) - alpha * ||(f - u) @ residual_basis||``."""
    residual = np.linalg.norm((np.asarray(features, dtype=np.float64) - fit.origin) @ fit.residual_basis, axis=1)
    return _logsumexp(logits) - fit.alpha * residual


def react_clip(features: np.ndarray, percentile: float = 90.0) -> float:
    """ReAct's clipping level: the ``percentile`` of every reference activation ``(N, D)``."""
    check_range("percentile", percentile, low=0.0, high=100.0, where="react_clip")
    return float(np.percentile(np.asarray(features, dtype=np.float64), percentile))


def react_score(features: np.ndarray, clip: float, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Energy ``(N,)`` of ``min(f, clip) @ kernel + bias``."""
    f = np.minimum(np.asarray(features, dtype=np.float64), clip)
    return _logsumexp(f @ np.asarray(kernel, dtype=np.float64) + np.asarray(bias, dtype=np.float64))


# -- detection metrics -----------------------------------------------------------------------
def _labelled(id_scores: np.ndarray, ood_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.r_[np.asarray(id_scores, dtype=np.float64), np.asarray(ood_scores, dtype=np.float64)]
    y = np.r_[np.ones(len(id_scores), dtype=bool), np.zeros(len(ood_scores), dtype=bool)]
    return y, s


def aupr(y_pos: np.ndarray, score: np.ndarray) -> float:
    """Average precision ``sum_n (R_n - R_{n-1}) P_n`` over distinct thresholds (scikit-learn's)."""
    y_pos = np.asarray(y_pos, dtype=bool)
    if not y_pos.any():
        return float("nan")
    order = np.argsort(-np.asarray(score), kind="mergesort")
    s, y = np.asarray(score)[order], y_pos[order].astype(np.float64)
    distinct = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tps = np.cumsum(y)[distinct]
    precision = tps / (distinct + 1)
    recall = tps / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def fpr_at_tpr(y_pos: np.ndarray, score: np.ndarray, tpr_level: float = 0.95) -> float:
    """False positive rate at the first threshold whose true positive rate reaches ``tpr_level``."""
    fpr, tpr = M.roc_curve(y_pos, score)
    if not np.isfinite(tpr).all() or not np.isfinite(fpr).all():
        return float("nan")
    return float(fpr[np.searchsorted(tpr, tpr_level - 1e-12)])


def threshold_at_tpr(id_scores: np.ndarray, tpr_level: float = 0.95) -> float:
    """The largest threshold that keeps at least ``tpr_level`` of the ID scores (``score >= t``)."""
    s = np.sort(np.asarray(id_scores, dtype=np.float64))[::-1]
    if not len(s):
        return float("nan")
    return float(s[max(0, math.ceil(tpr_level * len(s) - 1e-9) - 1)])


def ood_metrics(id_scores: np.ndarray, ood_scores: np.ndarray) -> dict[str, float]:
    """AUROC, AUPR-in, AUPR-out, FPR@95 (ID positive) and OpenOOD's FPR@95 (OOD positive).

    Args:
        id_scores: ``(N_id,)`` scores of in-distribution images (higher = more ID).
        ood_scores: ``(N_ood,)`` scores of one OOD set.
    """
    y, s = _labelled(id_scores, ood_scores)
    return {
        "auroc": M._binary_auc(y, s),
        "aupr_in": aupr(y, s),
        "aupr_out": aupr(~y, -s),
        "fpr95": fpr_at_tpr(y, s),
        "fpr95_openood": fpr_at_tpr(~y, -s),
    }


def ood_intervals(id_scores: np.ndarray, ood_scores: np.ndarray, *, n_boot: int, seed: int,
                  level: float = 0.95) -> dict[str, list[float]]:
    """Percentile bootstrap intervals of :func:`ood_metrics`, resampling ID and OOD separately."""
    y, s = _labelled(id_scores, ood_scores)
    keys = list(DETECTION_METRICS)

    def stat(idx: np.ndarray) -> np.ndarray:
        m = ood_metrics(s[idx][y[idx]], s[idx][~y[idx]])
        return np.array([m[k] for k in keys])

    lo, hi = M.bootstrap_interval(stat, len(s), n_boot=n_boot, seed=seed, level=level, strata=y)
    return {k: [float(a), float(b)] for k, a, b in zip(keys, lo, hi)}
