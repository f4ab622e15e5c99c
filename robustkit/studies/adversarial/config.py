"""The ``adversarial`` study's options, and the plain facts both its map and its reduce read
from them (radii per norm, the checks' norm and large radius, targets of a targeted attack)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from robustkit.errors import check_choice, check_range, param_error
from robustkit.metrics.sweep import FOOLBOX_ATTACKS, LOSSES
from robustkit.studies.base import AuditContext, StudyConfig

__all__ = [
    "ATTACKS", "NORMS", "AdversarialConfig", "attack_steps", "check_norm", "exclusive", "grid", "large_epsilon", "targets",
]

NORMS = ("linf", "l2")
ATTACKS = ("pgd", "ensemble")
_WHERE = "study 'adversarial'"


def _as_sorted(values: Any) -> tuple[float, ...]:
    items = values if isinstance(values, (list, tuple)) else [values]
    return tuple(sorted({float(v) for v in items}))


@dataclass(frozen=True)
class AdversarialConfig(StudyConfig):
    """Options of the adversarial study.

    Attributes:
        norms: threat models to sweep, ``linf`` and/or ``l2``.
        attack: ``ensemble`` (APGD-CE -> APGD-DLR -> FAB-T -> Square, per-sample worst case) or ``pgd``.
        apgd_steps: APGD iterations per run in the ensemble (the paper: 100).
        apgd_restarts: APGD runs per sample (the untargeted ones; APGD-T runs once per target).
        n_target_classes: target classes of APGD-T (models with >= 4 classes) and FAB-T (the paper: 9).
        fab_steps: FAB-T's iterations per target class in the ensemble (the paper: 100; 0: no FAB-T).
        square_queries: Square's queries per sample in the ensemble (0: no Square).
        epsilons_linf: Linf radii in pixel units (``0.5 / 255`` ... ``8 / 255``); a scalar
            or a list; sorted and de-duplicated.
        epsilons_l2: L2 radii (norm over all pixels and channels of the [0, 1] image).
        steps: PGD steps per run (``attack: pgd``).
        step_size_factor: PGD step = ``step_size_factor * epsilon / steps``.
        restarts: PGD runs per sample and radius (later runs start at random points and
            attack only the samples still unbroken).
        random_start: start the first run at a random point of the ball.
        loss: ``ce`` (cross-entropy) or ``margin`` (Carlini-Wagner margin on the logits).
        targeted: push each sample to a target class (``target_class``, else its least
            likely class) instead of away from its label.
        target_class: the target class name of a targeted attack.
        fgsm: also run FGSM at the Linf radii (the check "FGSM vs PGD" needs it).
        large_epsilon_linf: the large radius (pixel units) of the check "near zero at a
            large epsilon".
        check_samples: samples used by the step/restart and determinism checks.
        tolerance: allowed change in robust accuracy for the sensitivity checks.
        foolbox_attacks: foolbox minimum-norm attacks to run (``deepfool``,
            ``carlini_wagner``, ``hop_skip_jump``, ``boundary``).
        foolbox_samples: clean-correct samples the foolbox attacks run on.
        n_bootstrap: bootstrap resamples of the 95% intervals.
        n_examples: adversarial examples in the report's gallery.
    """

    max_samples: int | None = 128
    norms: tuple[str, ...] = ("linf", "l2")
    attack: str = "ensemble"
    apgd_steps: int = 20
    apgd_restarts: int = 1
    n_target_classes: int = 9
    fab_steps: int = 10
    square_queries: int = 100
    epsilons_linf: tuple[float, ...] = (0.5 / 255, 1 / 255, 2 / 255, 4 / 255, 8 / 255)
    epsilons_l2: tuple[float, ...] = (0.25, 0.5, 1.0)
    steps: int = 20
    step_size_factor: float = 2.5
    restarts: int = 1
    random_start: bool = True
    loss: str = "ce"
    targeted: bool = False
    target_class: str | None = None
    fgsm: bool = True
    large_epsilon_linf: float = 32 / 255
    check_samples: int = 32
    tolerance: float = 0.02
    foolbox_attacks: tuple[str, ...] = ()
    foolbox_samples: int = 16
    n_bootstrap: int = 1000
    n_examples: int = 6

    def __post_init__(self) -> None:
        for key in ("epsilons_linf", "epsilons_l2"):
            value = getattr(self, key)
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in np.atleast_1d(value)):
                object.__setattr__(self, key, _as_sorted(value))
        for key in ("norms", "foolbox_attacks"):
            value = getattr(self, key)
            object.__setattr__(self, key, (value,) if isinstance(value, str) else tuple(value))

    def validate(self) -> None:
        super().validate()
        if not self.norms:
            raise param_error("norms", "a non-empty list from 'linf', 'l2'", list(self.norms), where=_WHERE)
        for norm in self.norms:
            check_choice("norms", norm, NORMS, where=_WHERE)
        self._check_epsilons("epsilons_linf", self.epsilons_linf, high=1.0, needed="linf" in self.norms)
        self._check_epsilons("epsilons_l2", self.epsilons_l2, high=None, needed="l2" in self.norms)
        check_range("steps", self.steps, low=1, integer=True, where=_WHERE)
        check_choice("attack", self.attack, ATTACKS, where=_WHERE)
        check_range("apgd_steps", self.apgd_steps, low=1, integer=True, where=_WHERE)
        check_range("apgd_restarts", self.apgd_restarts, low=1, integer=True, where=_WHERE)
        check_range("n_target_classes", self.n_target_classes, low=1, integer=True, where=_WHERE)
        check_range("fab_steps", self.fab_steps, low=0, integer=True, where=_WHERE)
        check_range("square_queries", self.square_queries, low=0, integer=True, where=_WHERE)
        if self.targeted and self.attack == "ensemble":
            raise param_error("targeted", "false with attack 'ensemble' (set attack: pgd for a targeted attack)",
                              self.targeted, where=_WHERE)
        check_range("step_size_factor", self.step_size_factor, low=0, low_open=True, where=_WHERE)
        check_range("restarts", self.restarts, low=1, integer=True, where=_WHERE)
        check_choice("loss", self.loss, LOSSES, where=_WHERE)
        check_range("large_epsilon_linf", self.large_epsilon_linf, low=0, high=1, low_open=True, where=_WHERE)
        check_range("check_samples", self.check_samples, low=1, integer=True, where=_WHERE)
        check_range("tolerance", self.tolerance, low=0, high=1, where=_WHERE)
        for name in self.foolbox_attacks:
            check_choice("foolbox_attacks", name, FOOLBOX_ATTACKS, where=_WHERE)
        check_range("foolbox_samples", self.foolbox_samples, low=1, integer=True, where=_WHERE)
        check_range("n_bootstrap", self.n_bootstrap, low=10, integer=True, where=_WHERE)
        check_range("n_examples", self.n_examples, low=0, integer=True, where=_WHERE)
        if self.target_class is not None and not self.targeted:
            raise param_error("target_class", "None unless 'targeted' is true", self.target_class, where=_WHERE)

    @staticmethod
    def _check_epsilons(key: str, values: tuple[float, ...], *, high: float | None, needed: bool) -> None:
        expected = f"a positive number{' <= 1 (pixel units)' if high else ''} or a list of them"
        if needed and not values:
            raise param_error(key, expected, list(values), where=_WHERE)
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0 or (
                high is not None and v > high
            ):
                raise param_error(key, expected, v, where=_WHERE)



def grid(cfg: AdversarialConfig, norm: str) -> tuple[float, ...]:
    """The radii of ``norm`` (sorted, pixel units for Linf)."""
    return cfg.epsilons_linf if norm == "linf" else cfg.epsilons_l2


def attack_steps(cfg: AdversarialConfig) -> int:
    """Iterations per run of the sweep's attack (its loss traces have one more entry)."""
    return cfg.apgd_steps if cfg.attack == "ensemble" else cfg.steps


def check_norm(norms: tuple[str, ...]) -> str:
    """The norm of the gallery and of the checks: Linf if swept, else the first."""
    return "linf" if "linf" in norms else norms[0]


def large_epsilon(cfg: AdversarialConfig, norm: str, shape: tuple[int, ...] | None) -> float:
    """The large radius of the check "near zero at a large epsilon" in ``norm``'s units
    (L2: the Linf radius times the square root of the image size)."""
    if norm == "linf":
        return float(cfg.large_epsilon_linf)
    return float(cfg.large_epsilon_linf * math.sqrt(math.prod(shape))) if shape else float("nan")


def targets(cfg: AdversarialConfig, logits: np.ndarray, y: np.ndarray, names: list[str]) -> np.ndarray | None:
    """Target classes ``(N,)`` of a targeted attack: the configured class, else the least likely."""
    if not cfg.targeted:
        return None
    least = logits.argmin(axis=1)
    if cfg.target_class is None:
        return least
    if cfg.target_class not in names:
        raise param_error("target_class", "one of " + ", ".join(map(repr, names)), cfg.target_class, where=_WHERE)
    k = names.index(cfg.target_class)
    return np.where(y == k, least, k)


def exclusive(ctx: AuditContext) -> bool:
    """One label per image (the misclassification block runs), else per-output calls (the flip block):
    the audit's task says which; a caller without a task falls back on the model's output kind."""
    return ctx.exclusive
