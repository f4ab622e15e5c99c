"""The model side: everything that runs TensorFlow.

* :mod:`~robustkit.model.adapter`: :class:`ModelAdapter`, a checkpoint in pixel space with
  compiled batched passes (logits, probabilities, features, input gradients);
* :mod:`~robustkit.model.attacks`: the public names of the attack rooms:
  :mod:`~robustkit.model.attack_loop` (the compiled loop: FGSM, PGD; Linf and L2),
  :mod:`~robustkit.model.attack_sweep` (one epsilon sweep with a pluggable criterion:
  misclassification, or a flipped call of one output, :mod:`~robustkit.model.finding_attack`)
  and :mod:`~robustkit.model.foolbox_bridge` (foolbox's minimum-norm attacks);
* :mod:`~robustkit.model.apgd`, :mod:`~robustkit.model.fab`, :mod:`~robustkit.model.square`,
  :mod:`~robustkit.model.ensemble`: APGD (CE, DLR), FAB-T, the Square attack (Linf, L2), and the
  AutoAttack-style ensemble of them;
* :mod:`~robustkit.model.explainers`: gradient, SmoothGrad, Integrated Gradients, Grad-CAM;
* :mod:`~robustkit.model.training`: architectures and the training recipe.
"""

from __future__ import annotations

from robustkit.model.adapter import ModelAdapter, load_model

__all__ = ["ModelAdapter", "load_model"]
