"""The bridge to foolbox's minimum-norm attacks (DeepFool, Carlini-Wagner, HopSkipJump, Boundary).

foolbox runs on the adapter's compiled pixel -> logits function, one sample at a time in the
study (so a sample's outcome does not depend on its batch); its results are perturbation
sizes per sample (:class:`MinimalPerturbation`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from robustkit._tf import tf
from robustkit.errors import param_error
from robustkit.metrics.sweep import DECISION_ATTACKS, FOOLBOX_ATTACKS
from robustkit.model.adapter import ModelAdapter
from robustkit.model.attack_loop import _check_images

__all__ = ["MinimalPerturbation", "foolbox_model", "run_foolbox"]

@dataclass
class MinimalPerturbation:
    """Per-sample result of a minimum-norm attack.

    Attributes:
        adv: adversarial images ``(N, H, W, C)`` (the clean image where none was found).
        success: ``(N,)`` bool: the returned image is misclassified by the model.
        l2: ``(N,)`` L2 norm of the perturbation (inf where not found).
        linf: ``(N,)`` Linf norm of the perturbation (inf where not found).
    """

    adv: np.ndarray
    success: np.ndarray
    l2: np.ndarray
    linf: np.ndarray


def _import_foolbox() -> Any:
    import warnings

    with warnings.catch_warnings():  # foolbox's imports use deprecated scipy paths
        warnings.simplefilter("ignore")
        import foolbox

    return foolbox


def foolbox_model(model: ModelAdapter) -> Any:
    """foolbox's ``TensorFlowModel`` around the adapter's compiled pixel -> logits function."""
    fb = _import_foolbox()
    spec = tf.TensorSpec((None, *model.input_shape), tf.float32)
    fn = tf.function(model.logits_graph, input_signature=[spec])
    device = "/GPU:0" if tf.config.list_physical_devices("GPU") else "/CPU:0"
    return fb.TensorFlowModel(fn, bounds=(0.0, 1.0), device=device)


def _foolbox_attack(fb: Any, name: str, num_classes: int) -> Any:
    """The foolbox attack ``name`` with the budgets the study documents."""
    if name == "deepfool":
        return fb.attacks.L2DeepFoolAttack(steps=50, candidates=min(10, num_classes), overshoot=0.02)
    if name == "carlini_wagner":
        return fb.attacks.L2CarliniWagnerAttack(binary_search_steps=5, steps=100, stepsize=1e-2, initial_const=1e-2)
    if name == "hop_skip_jump":
        return fb.attacks.HopSkipJumpAttack(steps=16, initial_gradient_eval_steps=32, max_gradient_eval_steps=256)
    if name == "boundary":
        return fb.attacks.BoundaryAttack(steps=2000)
    raise param_error("foolbox_attacks", "names from " + ", ".join(map(repr, FOOLBOX_ATTACKS)), name)


def _decision_starts(fb: Any, fmodel: Any, model: ModelAdapter, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Misclassified starting points: blended uniform noise, else the nearest other-class image.

    Returns the starting images ``(N, H, W, C)`` and ``(N,)`` whether each is misclassified.
    """
    import warnings

    init = fb.attacks.LinearSearchBlendedUniformNoiseAttack(steps=50)
    with warnings.catch_warnings():  # it warns when noise cannot flip some samples; handled below
        warnings.simplefilter("ignore", UserWarning)
        start = np.array(init.run(fmodel, tf.constant(x), fb.criteria.Misclassification(tf.constant(y))))
    ok = model.logits(start).argmax(axis=1) != y
    pred = model.logits(x).argmax(axis=1)
    flat = x.reshape(len(x), -1)
    for i in np.flatnonzero(~ok):
        others = np.flatnonzero(pred != y[i])
        if others.size:
            j = others[np.argmin(np.linalg.norm(flat[others] - flat[i], axis=1))]
            start[i], ok[i] = x[j], True
    return start, ok


def run_foolbox(name: str, model: ModelAdapter, x: np.ndarray, labels: np.ndarray, *, seed: int = 0) -> MinimalPerturbation:
    """Run foolbox's minimum-norm attack ``name`` (untargeted) and measure its perturbations.

    Decision-based attacks start from foolbox's blended-noise search, or, where noise
    cannot flip a sample, from the nearest image of the batch that the model puts in another
    class (as foolbox's dataset attack); samples with neither count as not broken. Seeds TensorFlow's global generator (foolbox draws from it).

    Args:
        name: one of :data:`FOOLBOX_ATTACKS`.
        model: the adapter; x: images ``(N, H, W, C)``; labels: classes ``(N,)``.
        seed: seed of foolbox's random draws.
    """
    fb = _import_foolbox()
    x = _check_images(model, x)
    attack = _foolbox_attack(fb, name, model.num_classes)
    fmodel = foolbox_model(model)
    tf.random.set_seed(seed)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)  # foolbox compares with int64 argmax
    adv = x.copy()
    todo = np.arange(len(x))
    kwargs: dict[str, Any] = {}
    if name in DECISION_ATTACKS and len(x):
        start, ok = _decision_starts(fb, fmodel, model, x, y)
        todo = todo[ok]
        kwargs["starting_points"] = tf.constant(start[ok])
    if todo.size:
        criterion = fb.criteria.Misclassification(tf.constant(y[todo]))
        raw, _, _ = attack(fmodel, tf.constant(x[todo]), criterion, epsilons=None, **kwargs)
        adv[todo] = np.clip(np.asarray(raw), 0.0, 1.0)
    success = model.logits(adv).argmax(axis=1) != y
    delta = (adv - x).reshape(len(x), -1).astype(np.float64)
    l2 = np.where(success, np.linalg.norm(delta, axis=1), np.inf)
    linf = np.where(success, np.abs(delta).max(axis=1, initial=0.0), np.inf)
    return MinimalPerturbation(adv=adv, success=success, l2=l2, linf=linf)
