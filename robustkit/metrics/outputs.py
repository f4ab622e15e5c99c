"""Output kinds: the one home that turns a model's stored logits into its probabilities.

A classifier's head is one of four kinds, and every metric reads probabilities made here:

* ``softmax``: a final softmax; probabilities ``softmax(logits / T)`` (rows sum to 1).
* ``logits``: no final activation; the outputs are logits and scored as ``softmax`` is.
* ``sigmoid``: a final elementwise sigmoid, one class per image (one-vs-rest training with
  binary cross-entropy); probabilities ``sigmoid(logits / T)``, which need not sum to 1.
  Top-label metrics use the arg-max and its sigmoid value; per-class metrics read each
  column one-vs-rest.
* ``multilabel``: sigmoid outputs with several findings per image; the same link as
  ``sigmoid``.

Temperature scaling (Guo et al. 2017) keeps one scalar T for every kind: for the softmax
kinds it minimises the multiclass NLL, for the sigmoid kinds the one-vs-rest binary NLL
``mean_i sum_k BCE(t_ik, sigmoid(z_ik / T))``, where the targets ``t`` are the one-hot of
class indices ``(N,)`` or, for multi-label data, the findings ``(N, K)`` themselves. No
TensorFlow here.

Example:
    >>> import numpy as np
    >>> z = np.array([[0.0, 2.0, -2.0]])
    >>> probabilities(z, "sigmoid").round(3).tolist()
    [[0.5, 0.881, 0.119]]
    >>> round(float(probabilities(z, "softmax").sum()), 12)
    1.0
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from robustkit.errors import check_choice, check_range
from robustkit.metrics import calibration as CM

__all__ = [
    "OUTPUT_KINDS",
    "SIGMOID_KINDS",
    "fit_temperature",
    "is_sigmoid",
    "link_formula",
    "probabilities",
    "sample_nll",
]

OUTPUT_KINDS = ("softmax", "sigmoid", "multilabel", "logits")
SIGMOID_KINDS = ("sigmoid", "multilabel")
_LOG_T_BOUNDS = (float(np.log(1e-2)), float(np.log(1e2)))


def is_sigmoid(kind: str) -> bool:
    """Whether ``kind`` scores every output with its own sigmoid (``sigmoid``, ``multilabel``)."""
    check_choice("output", kind, OUTPUT_KINDS)
    return kind in SIGMOID_KINDS


def link_formula(kind: str) -> str:
    """How probabilities come from logits for ``kind``, as a sentence for results and exports."""
    if is_sigmoid(kind):
        return "probabilities = sigmoid(logits / temperature), elementwise (one-vs-rest)"
    return "probabilities = softmax(logits / temperature)"


def probabilities(logits: np.ndarray, kind: str, temperature: float = 1.0) -> np.ndarray:
    """The model's probabilities ``(N, K)`` (float64) from its logits ``(N, K)``.

    Args:
        logits: pre-activation outputs ``(N, K)`` (for sigmoid heads: the pre-sigmoid values).
        kind: one of :data:`OUTPUT_KINDS`.
        temperature: T > 0; the logits are divided by it first.

    Returns:
        Row-wise softmax for ``softmax``/``logits``, elementwise sigmoid for
        ``sigmoid``/``multilabel``.
    """
    check_range("temperature", temperature, low=0, low_open=True)
    if is_sigmoid(kind):
        return np.asarray(expit(np.asarray(logits, dtype=np.float64) / float(temperature)))
    return CM.softmax(logits, temperature)


def _targets(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """One-vs-rest targets ``(N, K)`` float64: multi-label findings ``(N, K)`` as given, else the
    one-hot of class indices ``(N,)``."""
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape == shape:
        return y.astype(np.float64)
    y = y.astype(np.int64).reshape(-1)
    onehot = np.zeros(shape, dtype=np.float64)
    onehot[np.arange(len(y)), y] = 1.0
    return onehot


def _binary_nll(z: np.ndarray, t: np.ndarray, temperature: float) -> np.ndarray:
    """Per-sample one-vs-rest binary NLL ``(N,)``: ``sum_k softplus(u) - t_k u``, u = z / T."""
    u = z / temperature
    return np.sum(np.logaddexp(0.0, u) - t * u, axis=1)


def sample_nll(logits: np.ndarray, labels: np.ndarray, kind: str, temperature: float = 1.0) -> np.ndarray:
    """Per-sample NLL ``(N,)`` of the labels under the kind's probabilities (exact, no clipping).

    Softmax kinds: ``-log softmax(z / T)[y]``. Sigmoid kinds: the one-vs-rest binary NLL
    summed over the K outputs, ``sum_k -log(p_k if t_k else 1 - p_k)``, with ``t`` the one-hot
    of class indices ``labels`` ``(N,)`` or the findings ``labels`` ``(N, K)`` (multi-label).
    """
    if not is_sigmoid(kind):
        return CM.sample_nll(logits, labels, temperature)
    z = np.asarray(logits, dtype=np.float64)
    return _binary_nll(z, _targets(labels, z.shape), float(temperature))


def _binary_nll_and_grad(z: np.ndarray, t: np.ndarray, log_t: float) -> tuple[float, float]:
    """Mean one-vs-rest binary NLL at ``T = exp(log_t)`` and its derivative in ``log T``:
    ``d/dlogT = -mean_i sum_k (sigmoid(z/T) - t_k) z / T``."""
    temp = float(np.exp(log_t))
    loss = float(np.mean(_binary_nll(z, t, temp)))
    grad = float(-np.mean(np.sum((expit(z / temp) - t) * z, axis=1)) / temp)
    return loss, grad


def fit_temperature(logits: np.ndarray, labels: np.ndarray, kind: str) -> CM.TemperatureFit:
    """Fit one temperature T for the kind (Guo et al. 2017, Section 4.2).

    Softmax kinds: :func:`robustkit.metrics.calibration.fit_temperature` (multiclass NLL).
    Sigmoid kinds: a bounded Brent search over ``log T`` in ``[log 0.01, log 100]`` of the
    mean one-vs-rest binary NLL (:func:`sample_nll`); it too is convex in ``1/T``.

    Args:
        logits: ``(N, K)`` logits of the calibration split.
        labels: ``(N,)`` class indices, or for sigmoid kinds the findings ``(N, K)`` (bool or
            0/1) of a multi-label split: T then minimises the binary NLL summed over findings.
        kind: one of :data:`OUTPUT_KINDS`.
    """
    if not is_sigmoid(kind):
        return CM.fit_temperature(logits, labels)
    z = np.asarray(logits, dtype=np.float64)
    t = _targets(labels, z.shape)
    return CM.fit_log_temperature(lambda s: _binary_nll_and_grad(z, t, s), len(t))
