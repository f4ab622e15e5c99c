"""The saliency study's options, their profiles' bounds and their validation."""

from __future__ import annotations

from dataclasses import dataclass

from robustkit.errors import ConfigError, check_choice, check_range
from robustkit.model.explainers import METHODS
from robustkit.studies.base import StudyConfig

__all__ = ["SaliencyConfig"]

_WHERE = "study 'saliency'"


@dataclass(frozen=True)
class SaliencyConfig(StudyConfig):
    """Options of the saliency study.

    Attributes:
        methods: attribution methods, from ``vanilla_gradient``, ``smoothgrad``,
            ``integrated_gradients``, ``gradcam``.
        layer: the Grad-CAM layer (``name`` or ``nested_model/name``); empty: the last
            4-D feature map before pooling (``mixed10`` for InceptionV3).
        layers: layers of the activation-map panel; empty: spread from stem to ``layer``.
        smoothgrad_n, smoothgrad_noise: SmoothGrad samples and noise sigma as a share of
            each image's value range.
        ig_steps: Integrated Gradients steps (midpoint rule, black baseline in pixel space).
        stability_samples: images used for stability (stratified spread; None: all).
        noise_sigma, n_noise: Gaussian noise copies for stability; brightness: added
            offset; shift: pixels of the diagonal shift (its map is shifted back).
        topk_fraction: share of pixels in the top-k intersection.
        randomization_samples: images of the randomisation check.
        randomization_steps: cascade steps (blocks merged into that many groups; None: every block).
        randomization_threshold: a method passes when its mean similarity with the original
            map after the full cascade is below this.
        randomization_metric: the similarity the pass rule reads: ``ssim`` (default) or
            ``spearman``. Both are always reported. Rank correlation of *absolute* maps stays
            high for any map that follows image edges, which the gradients of a random
            network also do (Adebayo et al. 2018 discuss it for their ABS maps); SSIM compares
            the maps' structure and drops when the model no longer shapes them.
        independent: also randomise each group alone (the independent variant).
        deletion_steps, deletion_fill: deletion-curve steps and what replaces removed
            pixels (``mean`` of the image per channel, or ``black``).
        n_gallery: report gallery images per class; n_activation_layers, n_channels: panel size.
    """

    max_samples: int | None = 45
    methods: tuple[str, ...] = METHODS
    layer: str = ""
    layers: tuple[str, ...] = ()
    smoothgrad_n: int = 25
    smoothgrad_noise: float = 0.15
    ig_steps: int = 64
    stability_samples: int | None = 24
    noise_sigma: float = 0.02
    n_noise: int = 2
    brightness: float = 0.05
    shift: int = 2
    topk_fraction: float = 0.1
    randomization_samples: int = 4
    randomization_steps: int | None = 6
    randomization_threshold: float = 0.5
    randomization_metric: str = "ssim"
    independent: bool = False
    deletion_steps: int = 20
    deletion_fill: str = "mean"
    n_gallery: int = 2
    n_activation_layers: int = 4
    n_channels: int = 4

    def validate(self) -> None:
        super().validate()
        if not self.methods or len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"The 'methods' parameter of {_WHERE} must be a non-empty list without repeats; "
                              f"got {list(self.methods)}.")
        for m in self.methods:
            check_choice("methods", m, METHODS, where=_WHERE)
        check_choice("deletion_fill", self.deletion_fill, ("mean", "black"), where=_WHERE)
        check_choice("randomization_metric", self.randomization_metric, ("ssim", "spearman"), where=_WHERE)
        for name, low in (("smoothgrad_n", 1), ("ig_steps", 2), ("n_noise", 0), ("shift", 0),
                          ("randomization_samples", 1), ("deletion_steps", 2), ("n_gallery", 0),
                          ("n_activation_layers", 0), ("n_channels", 1)):
            check_range(name, getattr(self, name), low=low, integer=True, where=_WHERE)
        for name in ("stability_samples", "randomization_steps"):
            if getattr(self, name) is not None:
                check_range(name, getattr(self, name), low=1, integer=True, where=_WHERE)
        check_range("smoothgrad_noise", self.smoothgrad_noise, low=0.0, high=1.0, where=_WHERE)
        check_range("noise_sigma", self.noise_sigma, low=0.0, high=0.5, where=_WHERE)
        check_range("brightness", self.brightness, low=-0.5, high=0.5, where=_WHERE)
        check_range("topk_fraction", self.topk_fraction, low=1e-6, high=1.0, where=_WHERE)
        check_range("randomization_threshold", self.randomization_threshold, low=-1.0, high=1.0, where=_WHERE)
