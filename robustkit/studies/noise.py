"""Study ``noise``: detector and quantum noise (Gaussian, Poisson, speckle, salt-and-pepper).

Five severities each, from MedMNIST-C's ChestMNIST settings (see
:mod:`robustkit.data.transforms`). Noise is drawn from the audit seed, per block of samples, so a
re-run gives the same images and the same numbers. The loop, metrics and checks live in
:class:`robustkit.studies.conditions.ConditionStudy`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from robustkit.data.transforms import family_transforms
from robustkit.studies import register
from robustkit.studies.conditions import ConditionConfig, ConditionStudy

__all__ = ["NoiseConfig", "NoiseStudy"]


@dataclass(frozen=True)
class NoiseConfig(ConditionConfig):
    """Options of the noise study (see :class:`ConditionConfig`)."""

    family: ClassVar[str] = "noise"

    transforms: tuple[str, ...] = family_transforms("noise")


@register
class NoiseStudy(ConditionStudy):
    name = "noise"
    description = (
        "How the model's decisions hold up under image noise: electronic (Gaussian), quantum "
        "(Poisson, as the dose falls), multiplicative (speckle) and dead or hot pixels "
        "(salt-and-pepper), each at severities 1 (mild) to 5 (severe). Each cell is the accuracy "
        "on noisy copies of the same images; the flip rate is the share of images whose "
        "prediction changed from the clean one."
    )
    Config = NoiseConfig
    profiles = {
        "quick": {
            "transforms": ("gaussian", "poisson"),
            "severities": (1, 3, 5),
            "max_samples": 60,
            "n_bootstrap": 300,
        },
        "standard": {"max_samples": 500},
        "full": {"n_bootstrap": 2000},
    }
