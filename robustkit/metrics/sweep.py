"""The outcome of an attack's epsilon sweep, and the names of attacks and losses: pure numpy.

The one result type the attacks write (:func:`robustkit.model.attack_sweep.epsilon_sweep`, on
the model side) and the ``adversarial`` study's reduce reads back from its records, so that
the reduce imports nothing from the model side (DESIGN: a study's reduce is pure numpy).
The names here (losses, foolbox attacks, the ensemble's attacks in order and which of them
run for a model) are what both sides agree on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from robustkit.errors import check_choice
from robustkit.metrics.outputs import is_sigmoid

__all__ = [
    "DECISION_ATTACKS",
    "ENSEMBLE_ATTACKS",
    "ENSEMBLE_LABELS",
    "FLIP_LOSS",
    "FOOLBOX_ATTACKS",
    "LOSSES",
    "SweepResult",
    "ensemble_plan",
    "loss_description",
]

#: the attack losses of the gradient attacks
LOSSES = ("ce", "margin")

#: foolbox's minimum-norm attacks the study can run, and those among them that are decision-based
FOOLBOX_ATTACKS = ("deepfool", "carlini_wagner", "hop_skip_jump", "boundary")
DECISION_ATTACKS = ("hop_skip_jump", "boundary")

#: the ensemble's attacks in the order they run (``broken_by`` codes 1, 2, 3, 4)
ENSEMBLE_ATTACKS = ("apgd_ce", "apgd_dlr", "fab_t", "square")
ENSEMBLE_LABELS = {"apgd_ce": "APGD-CE", "apgd_dlr": "APGD-DLR", "fab_t": "FAB-T", "square": "Square"}

#: the loss the call-flipping attack maximises (multi-label)
FLIP_LOSS = ("signed logit margin of the attacked finding, s * (z_f - logit(t_f)) with s = -1 to turn a "
             "present finding off and +1 to turn an absent one on (0 at the threshold)")


def ensemble_plan(num_classes: int, *, fab_steps: int, square_queries: int) -> list[str]:
    """The ensemble's attacks (:data:`ENSEMBLE_ATTACKS`) that run for a model with ``num_classes`` classes.

    APGD-DLR needs three classes, FAB-T two and a budget (``fab_steps``), Square a budget.

    >>> ensemble_plan(3, fab_steps=10, square_queries=0)
    ['apgd_ce', 'apgd_dlr', 'fab_t']
    """
    plan = ["apgd_ce"]
    if num_classes >= 3:
        plan.append("apgd_dlr")
    if fab_steps and num_classes >= 2:
        plan.append("fab_t")
    if square_queries:
        plan.append("square")
    return plan


def loss_description(loss: str, kind: str) -> str:
    """The attack loss ``loss`` on a head of output kind ``kind``, as a sentence for results."""
    check_choice("loss", loss, LOSSES)
    if loss == "margin":
        return "Carlini-Wagner margin on the logits (max over other classes minus the label's)"
    if is_sigmoid(kind):
        return "binary cross-entropy of the one-hot label on the sigmoid outputs, summed over outputs"
    return "softmax cross-entropy of the label"


@dataclass
class SweepResult:
    """An epsilon sweep over increasing radii (each run on the previous run's survivors).

    Attributes:
        epsilons: the radii ``(E,)`` in increasing order, pixel units.
        correct: ``(N, E)`` bool: still correctly classified within each radius
            (non-increasing along the row by construction).
        min_eps: ``(N,)`` smallest radius of the grid that broke the sample: 0 for a sample
            misclassified on its clean image, inf if none did.
        adv_pred: ``(N, E)`` predicted class of the adversarial (or clean) image per radius.
        adv_conf: ``(N, E)`` confidence of that prediction (its probability per the model's
            output kind: softmax, or the sigmoid value for sigmoid heads).
        loss_traces: one ``(steps + 1,)`` mean loss trace per radius over the images the attack
            failed to break there (NaN if it broke every image or nothing was run): a loss that
            is still rising on those is a sign the optimisation stopped too early.
        kept: position -> adversarial image at ``min_eps``, for the positions asked to keep.
        gradient_evals: per-sample gradient evaluations spent.
        traces: ``(N, E, steps + 1)`` each sample's loss trace per radius where the attack
            ran on it and failed to break it (NaN elsewhere); ``loss_traces`` is its mean.
        evals: ``(N,)`` gradient evaluations spent on each sample.
        broken_by: ``(N,)`` int8: for an ensemble, the code of the attack that broke the sample
            at ``min_eps`` (:data:`ENSEMBLE_ATTACKS`); 1 for a single attack; 0 where
            clean-wrong or not broken.
    """

    epsilons: np.ndarray
    correct: np.ndarray
    min_eps: np.ndarray
    adv_pred: np.ndarray
    adv_conf: np.ndarray
    loss_traces: np.ndarray
    kept: dict[int, np.ndarray]
    gradient_evals: int
    traces: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), np.float32))
    evals: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    broken_by: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))
