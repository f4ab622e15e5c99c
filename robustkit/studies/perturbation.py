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
from typing import ClassVar

from robustkit.data.transforms import family_transforms
from robustkit.errors import check_range
from robustkit.studies import register
from robustkit.studies.conditions import ConditionConfig, ConditionStudy

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
