"""Single-label classification metrics as pure numpy functions.

Every metric here has one home and a direction: ``*_score`` and accuracies are
higher-is-better; ``*_error``/``*_loss`` are lower-is-better. Studies call these; compare and
gate read the stored numbers. No TensorFlow here. The rates come from
:mod:`robustkit.metrics.decisions`, the AUROC from :mod:`robustkit.metrics.ranking`;
``bootstrap_indices`` and ``bootstrap_interval`` are re-exported from their home,
:mod:`robustkit.metrics.resampling`.
"""

from __future__ import annotations

import numpy as np

from robustkit.metrics.ranking import auroc, one_hot
from robustkit.metrics.resampling import bootstrap_indices, bootstrap_interval

__all__ = [
    "accuracy",
    "bootstrap_interval",
    "bootstrap_indices",
    "confusion_matrix",
    "roc_auc_ovr",
]


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Share of samples whose predicted class equals the label; NaN for no samples."""
    y_true = np.asarray(y_true)
    if y_true.size == 0:
        return float("nan")
    return float(np.mean(y_true == np.asarray(y_pred)))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``(K, K)``: rows are true classes, columns predicted classes."""
    idx = np.asarray(y_true, dtype=np.int64) * num_classes + np.asarray(y_pred, dtype=np.int64)
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def roc_auc_ovr(y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """One-vs-rest ROC AUC per class ``(K,)`` of class indices ``(N,)``; NaN for a class absent
    or alone in ``y_true`` (:func:`robustkit.metrics.ranking.auroc` of the one-hot targets)."""
    probs = np.asarray(probs)
    return np.asarray(auroc(one_hot(y_true, probs.shape[1]), probs))
