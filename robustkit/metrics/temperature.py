"""Temperature scaling (Guo et al. 2017): one scalar T fitted by the NLL, for every output kind.

The one home of every temperature fit. Calibrated probabilities are the kind's link applied
to ``logits / T`` (:func:`robustkit.metrics.outputs.probabilities`). For the softmax kinds
(``softmax``, ``logits``) T minimises the multiclass NLL; for the sigmoid kinds
(``sigmoid``, ``multilabel``) the one-vs-rest binary NLL
``mean_i sum_k BCE(t_ik, sigmoid(z_ik / T))``, with the targets ``t`` the one-hot of class
indices or, for multi-label data, the findings ``(N, K)`` themselves. Either objective is
convex in ``1/T``; both go through one bounded Brent search over ``log T`` in
``[log 0.01, log 100]`` (:func:`fit_log_temperature`), which also reports the gradient at
the optimum and whether it hit a bound, for a convergence check. No TensorFlow here.

Example:
    >>> import numpy as np
    >>> z = np.array([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [2.0, 0.0]]); y = np.array([0, 1, 1, 0])
    >>> fit = fit_temperature(z, y)
    >>> 1.0 < fit.temperature < 100.0 and fit.nll_after < fit.nll_before
    True
    >>> fit_temperature(z, np.eye(2, dtype=bool)[y]) == fit  # (N, K) one-hot targets: the same fit
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar

from robustkit.metrics.calibration import log_softmax
from robustkit.metrics.outputs import (
    class_indices,
    is_sigmoid,
    one_vs_rest_targets,
    probabilities,
    sample_nll,
)

__all__ = ["TemperatureFit", "fit_log_temperature", "fit_temperature"]

_LOG_T_BOUNDS = (float(np.log(1e-2)), float(np.log(1e2)))


@dataclass(frozen=True)
class TemperatureFit:
    """A fitted temperature.

    Attributes:
        temperature: T > 0; calibrated probabilities are the link of ``logits / T``.
        nll_before: mean NLL at T = 1 on the fitting data.
        nll_after: mean NLL at the fitted T on the fitting data.
        grad_log_t: ``d NLL / d log T`` at the fitted T (about 0 at an interior optimum).
        at_bound: the optimum hit the search bounds (T in [0.01, 100]).
        n: samples it was fitted on.
    """

    temperature: float
    nll_before: float
    nll_after: float
    grad_log_t: float
    at_bound: bool
    n: int


def _softmax_nll_and_grad(logits: np.ndarray, y: np.ndarray, log_t: float) -> tuple[float, float]:
    """Mean NLL of ``softmax(z / T)`` and its derivative in ``log T``:
    ``d/dlogT = mean(z_y - E_p[z]) / T``."""
    t = float(np.exp(log_t))
    lp = log_softmax(logits, t)
    rows = np.arange(len(y))
    loss = float(-np.mean(lp[rows, y]))
    expected = np.sum(np.exp(lp) * logits, axis=1)
    grad = float(np.mean(logits[rows, y] - expected) / t)
    return loss, grad


def _binary_nll_and_grad(z: np.ndarray, t: np.ndarray, log_t: float) -> tuple[float, float]:
    """Mean one-vs-rest binary NLL at ``T = exp(log_t)`` and its derivative in ``log T``:
    ``d/dlogT = -mean_i sum_k (sigmoid(z/T) - t_k) z / T``."""
    temp = float(np.exp(log_t))
    loss = float(np.mean(sample_nll(z, t, "multilabel", temp)))
    grad = float(-np.mean(np.sum((probabilities(z, "multilabel", temp) - t) * z, axis=1)) / temp)
    return loss, grad


def fit_temperature(logits: np.ndarray, labels: np.ndarray, kind: str = "softmax") -> TemperatureFit:
    """Fit one temperature T for the output kind (Guo et al. 2017, Section 4.2).

    Args:
        logits: ``(N, K)`` logits of the calibration split (pre-softmax or pre-sigmoid).
        labels: ``(N,)`` class indices, or the targets ``(N, K)`` (bool or 0/1): one-hot for
            single-label data, the findings of a multi-label split.
        kind: one of :data:`robustkit.metrics.outputs.OUTPUT_KINDS`; the softmax kinds
            minimise the multiclass NLL, the sigmoid kinds the binary NLL summed over outputs.

    Returns:
        A :class:`TemperatureFit` with the gradient at the optimum for a convergence check.
    """
    z = np.asarray(logits, dtype=np.float64)
    if is_sigmoid(kind):
        t = one_vs_rest_targets(labels, z.shape)
        return fit_log_temperature(lambda s: _binary_nll_and_grad(z, t, s), len(t))
    y = class_indices(labels)
    return fit_log_temperature(lambda s: _softmax_nll_and_grad(z, y, s), len(y))


def fit_log_temperature(objective: Callable[[float], tuple[float, float]], n: int) -> TemperatureFit:
    """Minimise a mean NLL over ``s = log T`` in ``[log 0.01, log 100]`` (bounded Brent).

    The one search every temperature fit uses.

    Args:
        objective: ``s -> (mean NLL at T = exp(s), its derivative in s)``.
        n: the number of samples the NLL is over (>= 1).
    """
    if n == 0:
        raise ValueError("fit_temperature: expected at least one sample, got none.")
    res = minimize_scalar(lambda s: objective(s)[0], bounds=_LOG_T_BOUNDS, method="bounded",
                          options={"xatol": 1e-9})
    log_t = float(res.x)
    loss, grad = objective(log_t)
    at_bound = min(abs(log_t - b) for b in _LOG_T_BOUNDS) < 1e-4
    return TemperatureFit(float(np.exp(log_t)), objective(0.0)[0], loss, grad, at_bound, n)
