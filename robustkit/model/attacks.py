"""Gradient attacks in pixel space: the public names of the compiled loop, the sweep and the foolbox bridge.

The rooms: :mod:`robustkit.model.attack_loop` (the compiled loop: FGSM and PGD for Linf and
L2, the input gradient), :mod:`robustkit.model.attack_sweep` (one epsilon sweep with a
pluggable criterion: misclassification or a flipped call) and
:mod:`robustkit.model.foolbox_bridge` (foolbox's minimum-norm attacks); this module gathers
their public names.

The compiled loop (one base, Linf and L2 variants, Madry et al.'s PGD with the ``ce`` and
``margin`` losses) is described in :mod:`robustkit.model.attack_loop`.

Example:
    >>> attack = LinfPGD(steps=20, restarts=1)                          # doctest: +SKIP
    >>> out = attack(adapter, images, labels, epsilons=2 / 255)         # doctest: +SKIP
    >>> out.success.mean(), out.loss_trace.mean(axis=0)                 # doctest: +SKIP
    >>> sweep = epsilon_sweep(attack, adapter, images, labels, [1 / 255, 2 / 255, 4 / 255])  # doctest: +SKIP
"""

from __future__ import annotations

from robustkit.metrics.sweep import (
    DECISION_ATTACKS,
    FOOLBOX_ATTACKS,
    LOSSES,
    SweepResult,
    loss_description,
)
from robustkit.model.attack_loop import (
    _COMPILED as _COMPILED,  # the compiled-loop cache (tests inspect it)
)
from robustkit.model.attack_loop import (
    FGM,
    FGSM,
    L2PGD,
    AttackResult,
    GradientAttack,
    LinfPGD,
    loss_gradient,
    sample_seeds,
)
from robustkit.model.attack_sweep import (
    CallFlip,
    Criterion,
    Misclassification,
    SweepAttack,
    epsilon_sweep,
)
from robustkit.model.foolbox_bridge import MinimalPerturbation, foolbox_model, run_foolbox

__all__ = [
    "DECISION_ATTACKS",
    "FGM",
    "FGSM",
    "FOOLBOX_ATTACKS",
    "LOSSES",
    "AttackResult",
    "CallFlip",
    "Criterion",
    "GradientAttack",
    "L2PGD",
    "LinfPGD",
    "MinimalPerturbation",
    "Misclassification",
    "SweepAttack",
    "SweepResult",
    "epsilon_sweep",
    "foolbox_model",
    "loss_description",
    "loss_gradient",
    "run_foolbox",
    "sample_seeds",
]
