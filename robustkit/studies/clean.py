"""Study ``clean``: the baseline evaluation on unmodified images.

The predicted class is the argmax of the model's output (the original notebook rounded the
probabilities first, which sent every uncertain case to class 0, COVID-19). Every metric
has a stratified bootstrap 95% interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from robustkit.data.images import png_base64
from robustkit.errors import ModelError, check_range
from robustkit.metrics import classification as M
from robustkit.metrics.outputs import probabilities
from robustkit.results import Check, StudyResult
from robustkit.studies import register
from robustkit.studies.base import AuditContext, Study, StudyConfig

if TYPE_CHECKING:
    from robustkit.data.dataset import Dataset
    from robustkit.model.adapter import ModelAdapter

__all__ = ["CleanConfig", "CleanStudy"]


@dataclass(frozen=True)
class CleanConfig(StudyConfig):
    """Options of the clean study.

    Attributes:
        n_bootstrap: bootstrap resamples for the 95% intervals.
        n_examples: images shown in the report's gallery (misclassified ones first).
        min_support: per-class sample count under which a warning says intervals are wide.
    """

    n_bootstrap: int = 1000
    n_examples: int = 6
    min_support: int = 30

    def validate(self) -> None:
        super().validate()
        check_range("n_bootstrap", self.n_bootstrap, low=10, integer=True, where="study 'clean'")
        check_range("n_examples", self.n_examples, low=0, integer=True, where="study 'clean'")
        check_range("min_support", self.min_support, low=1, integer=True, where="study 'clean'")


@register
class CleanStudy(Study[CleanConfig]):
    name = "clean"
    description = (
        "How well the model classifies the unmodified images: accuracy, per-class precision, "
        "recall and F1, the confusion matrix and one-vs-rest ROC AUC, each with a 95% bootstrap "
        "interval. Every other study is read against these numbers."
    )
    Config = CleanConfig
    profiles = {"quick": {"n_bootstrap": 300}, "standard": {}, "full": {"n_bootstrap": 2000}}
    metric_docs = {
        "accuracy": ("share of images whose predicted class (argmax) equals the label", "higher"),
        "balanced_accuracy": ("mean of the per-class recalls (insensitive to class balance)", "higher"),
        "macro_f1": ("mean of the per-class F1 scores", "higher"),
        "precision": ("per class: share of images predicted as the class that truly are it", "higher"),
        "recall": ("per class: share of images of the class predicted as it (sensitivity)", "higher"),
        "f1": ("per class: harmonic mean of precision and recall", "higher"),
        "auc": ("one-vs-rest ROC AUC per class and its macro mean, from the probabilities", "higher"),
        "n_samples": ("number of images evaluated", "none"),
    }
    headline = ("accuracy", "recall.COVID-19", "auc.macro")

    def map(self, model: ModelAdapter, batch: Dataset, ctx: AuditContext) -> dict[str, np.ndarray]:
        """Logits and probabilities ``(B, K)`` of the unmodified images."""
        logits = ctx.clean_logits(model, batch)
        if not np.all(np.isfinite(logits)):
            bad = [str(s) for s in batch.ids[~np.all(np.isfinite(logits), axis=1)][:3]]
            raise ModelError(f"{model.name}: expected finite outputs on the clean data, got NaN or inf for {bad}.")
        probs = probabilities(logits, model.output_kind).astype(np.float32)  # the model's own outputs
        return {"logits": logits, "probs": probs}

    def reduce(self, records: dict[str, np.ndarray], data: Dataset, ctx: AuditContext) -> StudyResult:
        logits, probs = records["logits"], records["probs"]
        y, pred = np.asarray(data.labels), probs.argmax(axis=1)
        names = list(data.class_names)
        metrics, table = _point_metrics(y, pred, probs, names)
        intervals = _intervals(y, pred, probs, names, self.config, ctx)
        result = StudyResult(name=self.name, metrics=metrics, intervals=intervals)
        result.tables["per_class"] = table
        result.data.update(
            class_names=names,
            confusion=M.confusion_matrix(y, pred, len(names)).tolist(),
            roc=_roc_curves(y, probs, names),
            examples=_examples(ctx, data, y, pred, probs, self.config.n_examples),
        )
        result.checks = _checks(y, names, self.config.min_support)
        result.records.update(
            logits=logits, probs=probs, pred=pred.astype(np.int16), correct=(pred == y)[:, None]
        )
        result.data["correct_metrics"] = ["accuracy"]
        return result


def _scores(y: np.ndarray, pred: np.ndarray, probs: np.ndarray, k: int) -> dict[str, Any]:
    cm = M.confusion_matrix(y, pred, k)
    precision, recall, f1 = M.precision_recall_f1(cm)
    auc = M.roc_auc_ovr(y, probs)
    return {
        "accuracy": M.accuracy(y, pred),
        "balanced_accuracy": float(np.nanmean(recall)) if np.any(np.isfinite(recall)) else float("nan"),
        "macro_f1": float(np.nanmean(f1)) if np.any(np.isfinite(f1)) else float("nan"),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "auc": auc,
    }


def _flatten(s: dict[str, Any], names: list[str]) -> dict[str, float]:
    out = {k: float(s[k]) for k in ("accuracy", "balanced_accuracy", "macro_f1")}
    for key in ("precision", "recall", "f1", "auc"):
        for name, v in zip(names, s[key]):
            out[f"{key}.{name}"] = float(v)
    finite_auc = s["auc"][np.isfinite(s["auc"])]
    out["auc.macro"] = float(finite_auc.mean()) if finite_auc.size else float("nan")
    return out


def _point_metrics(y, pred, probs, names) -> tuple[dict[str, float], list[dict[str, Any]]]:
    flat = _flatten(_scores(y, pred, probs, len(names)), names)
    flat["n_samples"] = float(len(y))
    support = np.bincount(y, minlength=len(names))
    table = [
        {
            "class": name,
            "precision": flat[f"precision.{name}"],
            "recall": flat[f"recall.{name}"],
            "f1": flat[f"f1.{name}"],
            "auc": flat[f"auc.{name}"],
            "support": int(support[k]),
        }
        for k, name in enumerate(names)
    ]
    return flat, table


def _intervals(y, pred, probs, names, config: CleanConfig, ctx: AuditContext) -> dict[str, list[float]]:
    if len(y) < 2:
        return {}
    keys = list(_flatten(_scores(y, pred, probs, len(names)), names))

    def stat(idx: np.ndarray) -> np.ndarray:
        flat = _flatten(_scores(y[idx], pred[idx], probs[idx], len(names)), names)
        return np.array([flat[k] for k in keys])

    lo, hi = M.bootstrap_interval(
        stat, len(y), n_boot=config.n_bootstrap, seed=ctx.seed_for("clean", "bootstrap"), strata=y
    )
    return {k: [float(a), float(b)] for k, a, b in zip(keys, lo, hi)}


def _roc_curves(y: np.ndarray, probs: np.ndarray, names: list[str]) -> dict[str, dict[str, list[float]]]:
    out = {}
    for k, name in enumerate(names):
        fpr, tpr = M.roc_curve(y == k, probs[:, k])
        if len(fpr) > 200:  # keep the JSON small; the curve is monotone so subsampling is safe
            keep = np.unique(np.r_[np.linspace(0, len(fpr) - 1, 200).astype(int), len(fpr) - 1])
            fpr, tpr = fpr[keep], tpr[keep]
        out[name] = {"fpr": np.round(fpr, 5).tolist(), "tpr": np.round(tpr, 5).tolist()}
    return out


def _checks(y: np.ndarray, names: list[str], min_support: int) -> list[Check]:
    support = np.bincount(y, minlength=len(names))
    small = [f"{n} ({c})" for n, c in zip(names, support) if c < min_support]
    if small:
        return [Check("per-class support", "warn",
                      f"fewer than {min_support} images for {', '.join(small)}: per-class intervals are wide.")]
    return [Check("per-class support", "pass", f"every class has at least {min_support} images.")]


def _examples(ctx: AuditContext, data, y, pred, probs, n: int) -> list[dict[str, Any]]:
    if n <= 0 or len(y) == 0 or ctx.input_shape is None:
        return []
    wrong = np.flatnonzero(pred != y)
    right = np.flatnonzero(pred == y)
    chosen = np.r_[wrong[: (n + 1) // 2], right[: n - min(len(wrong), (n + 1) // 2)]][:n]
    h, w, c = ctx.input_shape
    images = data.load_images(chosen, size=(h, w), channels=c)
    names = list(data.class_names)
    return [
        {
            "id": str(data.ids[i]),
            "label": names[int(y[i])],
            "pred": names[int(pred[i])],
            "confidence": float(probs[i].max()),
            "image_png": png_base64(img),
        }
        for i, img in zip(chosen, images)
    ]
