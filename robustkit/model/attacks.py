"""Gradient attacks in pixel space: the public names of the compiled loop, the sweep and the foolbox bridge.

The rooms: :mod:`robustkit.model.attack_loop` (the compiled loop: FGSM and PGD for Linf and
L2, the input gradient), :mod:`robustkit.model.attack_sweep` (one epsilon sweep with a
pluggable criterion: misclassification or a flipped call) and
:mod:`robustkit.model.foolbox_bridge` (foolbox's minimum-norm attacks); this module gathers
their public names.

One small base, :class:`GradientAttack`, holds the whole projected-gradient loop once, as a
``tf.function`` over a batch (a ``tf.while_loop`` over the steps, so the graph does not grow
with them); the Linf and L2 variants supply only ``_normalize`` (the step direction) and
``_project`` (back into the epsilon ball), the design of foolbox's ``gradient_descent_base``.
Epsilon and step size are per-sample tensors, so one trace serves every epsilon of a sweep:
the graph is compiled once per (model, norm, steps, loss, targeted), and the batch
dimension is left open.

The loop (Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial
Attacks"): start at ``x0`` or at a uniform random point of the ball (drawn for each sample
from its own seed, so that a sample's attack does not depend on its batch), then ``steps`` times
``x <- clip01(x0 + project(x + step * normalize(grad loss) - x0))``. Every iterate is
checked with the logits of the forward pass that also gives its gradient (no extra cost),
and the first adversarial iterate of a sample is what is returned; a last forward pass
checks the final iterate. Losses are always *maximised*: ``ce`` is the cross-entropy of the
label (untargeted) or minus that of the target (targeted) -- for a sigmoid head (output kind
``sigmoid``/``multilabel``) the binary cross-entropy of the one-hot label summed over the
outputs, the loss such heads are trained with; ``margin`` is the Carlini-Wagner
margin on the logits, ``max_{j != y} z_j - z_y`` (untargeted) or ``z_t - max_{j != t} z_j``
(targeted) (Carlini and Wagner 2017, "Towards Evaluating the Robustness of Neural Networks"),
which fits softmax and sigmoid heads alike (the sigmoid is monotonic).

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
