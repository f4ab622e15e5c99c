"""Study ``perturbation``: acquisition and geometry shifts a chest X-ray model meets in practice.

Exposure, gamma and window (contrast), blur, motion, resolution loss, JPEG, rotation,
translation, zoom, a laterality flip, inversion, a burned-in laterality marker and
collimation, five severities each (parameters and their sources in
:mod:`robustkit.data.transforms`). The loop, metrics and checks live in
:class:`robustkit.studies.conditions.ConditionStudy`; this module declares the transforms,
the profiles and the marker probe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from robustkit.data.regions import MASK_CONDITIONS
from robustkit.data.transforms import family_transforms
from robustkit.errors import check_range
from robustkit.metrics.outputs import probabilities
from robustkit.results import Check, StudyResult
from robustkit.studies import register
from robustkit.studies.condition_reduce import decision, flips, output_scores
from robustkit.studies.conditions import ConditionConfig, ConditionStudy

if TYPE_CHECKING:
    from robustkit.data.dataset import Dataset
    from robustkit.model.adapter import ModelAdapter
    from robustkit.studies.base import AuditContext

__all__ = ["PerturbationConfig", "PerturbationStudy"]


@dataclass(frozen=True)
class PerturbationConfig(ConditionConfig):
    """Options of the perturbation study (see :class:`ConditionConfig`).

    Attributes:
        flip_warn: warn when the burned-in marker alone changes more than this share of
            predictions (a model that reads text instead of lungs).
    """

    family: ClassVar[str] = "perturbation"

    transforms: tuple[str, ...] = family_transforms("perturbation")
    flip_warn: float = 0.1

    def validate(self) -> None:
        super().validate()
        check_range("flip_warn", self.flip_warn, low=0.0, high=1.0, where="study 'perturbation'")


@register
class PerturbationStudy(ConditionStudy):
    name = "perturbation"
    description = (
        "How the model's decisions hold up when the radiograph changes the way images change "
        "between sites, machines and patients: exposure, gamma and window, blur, patient motion, "
        "resolution loss, JPEG compression, rotation, translation, zoom, a left-right flip, "
        "inversion, a burned-in laterality marker and collimation, each at severities 1 (mild) "
        "to 5 (severe). Each cell is the accuracy on transformed copies of the same images; the "
        "flip rate is the share of images whose prediction changed from the clean one."
    )
    Config = PerturbationConfig
    probes = ("marker",)
    profiles = {
        "quick": {
            "transforms": ("gaussian_blur", "jpeg", "rotation", "exposure_up", "marker"),
            "severities": (1, 3, 5),
            "max_samples": 60,
            "n_bootstrap": 300,
        },
        "standard": {"max_samples": 500},
        "full": {"n_bootstrap": 2000},
    }
    metric_docs = {**ConditionStudy.metric_docs, **{
        "lung_accuracy": ("accuracy with the lungs blanked or the outside blanked (lung masks; a model "
                          "that reads the lungs falls with the lungs blanked)", "none"),
        "lung_flip_rate": ("share of predictions changed by blanking the lungs or the outside", "none"),
        "lung_n_samples": ("images with a lung mask under the lung-mask conditions", "none"),
        "lung_auroc": ("AUROC per output and macro with the lungs blanked or the outside blanked "
                       "(lung_auroc.F.lungs_blanked, lung_auroc.macro.*); a model that reads the lungs falls with the lungs "
                       "blanked", "none"),
    }}

    def map(self, model: ModelAdapter, batch: Dataset, ctx: AuditContext) -> dict[str, np.ndarray]:
        """The conditions' records, plus ``lung_probs`` ``(B, 2, K)``: the probabilities with the
        lungs blanked and with the outside blanked (NaN for an image without a lung mask)."""
        records = super().map(model, batch, ctx)
        records["lung_probs"] = _lung_probabilities(model, batch)
        return records

    def reduce(self, records: dict[str, np.ndarray], data: Dataset, ctx: AuditContext) -> StudyResult:
        lung_probs = records.pop("lung_probs")
        result = super().reduce(records, data, ctx)
        _lung_conditions(lung_probs, records["clean_probs"], data, ctx, result)
        return result


# ------------------------------------------------------------------ lung-field masks (issue #11)

#: "Holds up": accuracy at least this share of clean accuracy; "falls": at most chance + this.
HOLDS_UP, NEAR_CHANCE = 0.8, 0.15


def _under_lung_conditions(model: ModelAdapter, batch: Dataset) -> tuple[np.ndarray, list[np.ndarray]]:
    """The rows of ``batch`` with a lung mask, and the model's probabilities ``(rows, K)`` under
    each lung-mask condition (in MASK_CONDITIONS order)."""
    rows = np.flatnonzero([s.lung_mask_path is not None for s in batch.samples])
    if len(rows) == 0:
        return rows, []
    h, w, c = model.input_shape
    x = batch.load_images(rows, size=(h, w), channels=c)
    lungs = batch.load_masks(rows, size=(h, w), kind="lung")
    return rows, [probabilities(model.logits(fn(x, lungs)), model.output_kind) for fn in MASK_CONDITIONS.values()]


def _lung_probabilities(model: ModelAdapter, batch: Dataset) -> np.ndarray:
    """The probabilities ``(B, n_conditions, K)`` under each lung-mask condition (NaN for an
    image without a lung mask)."""
    out = np.full((len(batch), len(MASK_CONDITIONS), len(model.class_names)), np.nan, np.float32)
    rows, probs = _under_lung_conditions(model, batch)
    for j, p in enumerate(probs):
        out[rows, j] = p
    return out


def _lung_conditions(lung_probs: np.ndarray, clean_probs: np.ndarray, data: Dataset, ctx: AuditContext,
                     result: StudyResult) -> None:
    """Per output and macro AUROC and the flip rate of the calls with the lungs blanked and with the
    outside blanked, for every task; an exclusive task adds the accuracy. The check of
    :func:`_lung_check` reads the accuracy (chance 1 / K), or the macro AUROC (chance 0.5)."""
    rows = np.flatnonzero(np.all(np.isfinite(lung_probs), axis=(1, 2))) if len(lung_probs) else np.zeros(0, np.int64)
    if len(rows) == 0:
        return
    task, thresholded = decision(ctx, data)
    probs, clean = lung_probs[rows], clean_probs[rows]
    sc = output_scores(probs, clean, np.asarray(data.targets, bool)[rows], flips(task, probs, clean),
                       thresholded[rows], np.arange(len(rows)), exclusive=task.exclusive)
    result.metrics["lung_n_samples"] = float(len(rows))
    for j, name in enumerate(MASK_CONDITIONS):
        result.metrics[f"lung_auroc.macro.{name}"] = float(sc["auroc.macro"][j])
        for k, f in enumerate(data.class_names):
            result.metrics[f"lung_auroc.{f}.{name}"] = float(sc["auroc"][j, k])
        result.metrics[f"lung_flip_rate.{name}"] = float(sc["flip_rate.all"][j])
    result.records["lung_probs"] = lung_probs
    result.data["lung_conditions"] = {"conditions": list(MASK_CONDITIONS), "n_images": int(len(rows))}
    if not task.exclusive:
        result.checks.append(_lung_check(result.metrics, float(sc["clean.macro"]), 2, key="lung_auroc.macro",
                                         what="macro AUROC"))
        return
    y, pred = data.labels[rows], probs.argmax(axis=2)
    for j, name in enumerate(MASK_CONDITIONS):
        result.metrics[f"lung_accuracy.{name}"] = float(np.mean(pred[:, j] == y))
    lung_pred = np.full(lung_probs.shape[:2], -1, np.int16)
    lung_pred[rows] = pred
    result.records["lung_pred"] = lung_pred
    result.checks.append(_lung_check(result.metrics, float(np.mean(clean.argmax(axis=1) == y)),
                                     len(data.class_names)))


def _lung_check(metrics: dict[str, float], clean_acc: float, n_classes: int, *, key: str = "lung_accuracy",
                what: str = "accuracy") -> Check:
    """Warn when ``what`` holds up with the lungs blanked and falls to near chance (``1 / n_classes``;
    0.5 for AUROC) with the outside blanked."""
    lungs, outside = metrics[f"{key}.lungs_blanked"], metrics[f"{key}.outside_blanked"]
    chance = 1.0 / n_classes
    reads_outside = lungs >= HOLDS_UP * clean_acc and outside <= chance + NEAR_CHANCE
    detail = (f"{what} {lungs:.3f} with the lungs blanked, {outside:.3f} with the outside blanked "
              f"(clean {clean_acc:.3f}, chance {chance:.3f})")
    if reads_outside:
        return Check("model reads the lungs", "warn", detail + ": it holds up without the lungs and "
                     "falls without the rest: a shortcut outside the lung fields.")
    return Check("model reads the lungs", "pass", detail + ".")
