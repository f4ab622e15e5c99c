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

Labels come as class indices ``(N,)`` or as targets ``(N, K)`` (one-hot for single-label
data, the findings of multi-label data): :func:`sample_nll` reads both. Temperature scaling
(one scalar T for every kind) is fitted in :mod:`robustkit.metrics.temperature`. No
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
    "class_indices",
    "is_sigmoid",
    "link_formula",
    "one_vs_rest_targets",
    "probabilities",
    "sample_nll",
]

OUTPUT_KINDS = ("softmax", "sigmoid", "multilabel", "logits")
SIGMOID_KINDS = ("sigmoid", "multilabel")


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


def one_vs_rest_targets(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """One-vs-rest targets ``(N, K)`` float64: targets ``(N, K)`` (one-hot or multi-label
    findings) as given, else the one-hot of class indices ``(N,)``."""
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape == shape:
        return y.astype(np.float64)
    y = y.astype(np.int64).reshape(-1)
    onehot = np.zeros(shape, dtype=np.float64)
    onehot[np.arange(len(y)), y] = 1.0
    return onehot


def class_indices(labels: np.ndarray) -> np.ndarray:
    """Class indices ``(N,)`` int64 of an exclusive task: ``labels`` ``(N,)`` as given, or the
    arg-max of one-hot targets ``(N, K)``."""
    y = np.asarray(labels)
    return (y.argmax(axis=1) if y.ndim == 2 else y).astype(np.int64).reshape(-1)


def _binary_nll(z: np.ndarray, t: np.ndarray, temperature: float) -> np.ndarray:
    """Per-sample one-vs-rest binary NLL ``(N,)``: ``sum_k softplus(u) - t_k u``, u = z / T."""
    u = z / temperature
    return np.sum(np.logaddexp(0.0, u) - t * u, axis=1)


def sample_nll(logits: np.ndarray, labels: np.ndarray, kind: str, temperature: float = 1.0) -> np.ndarray:
    """Per-sample NLL ``(N,)`` of the labels under the kind's probabilities (exact, no clipping).

    Softmax kinds: ``-log softmax(z / T)[y]`` (``y`` the class indices, or the arg-max of
    one-hot targets ``(N, K)``). Sigmoid kinds: the one-vs-rest binary NLL summed over the K
    outputs, ``sum_k -log(p_k if t_k else 1 - p_k)``, with ``t`` the one-hot of class indices
    ``labels`` ``(N,)`` or the targets ``labels`` ``(N, K)`` (multi-label findings).
    """
    if not is_sigmoid(kind):
        return CM.sample_nll(logits, class_indices(labels), temperature)
    z = np.asarray(logits, dtype=np.float64)
    return _binary_nll(z, one_vs_rest_targets(labels, z.shape), float(temperature))
