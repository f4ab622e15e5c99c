"""The AutoAttack-style ensemble: APGD-CE, APGD-DLR, FAB-T, Square, each on the survivors of the earlier ones.

Croce and Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks": a sample counts as robust only if every attack fails on it
(the per-sample worst case). The attacks run in AutoAttack's order, each only on the samples
the earlier ones did not break, so the ensemble costs about one APGD run on the samples that
fall early; FAB-T (:mod:`robustkit.model.fab`) counts a sample as broken when the smallest
perturbation it finds lies within the radius, as AutoAttack counts it.

Where this differs from AutoAttack (and why): the DLR attack is targeted (APGD-T, the
``n_target_classes`` most likely other classes) only for models with four or more classes,
as its loss needs four logits, and untargeted otherwise (a three-class model like the chest
X-ray one); FAB-T runs with its own iteration budget (``fab_steps``; AutoAttack: 100), so a
fast profile can give it a few iterations on the few survivors, and it targets the
``min(n_target_classes, K - 1)`` most likely other classes (it needs two classes, not four).

``broken_by`` codes are fixed by :data:`ENSEMBLE_ATTACKS` (1 APGD-CE, 2 APGD-DLR, 3 FAB-T,
4 Square), whichever of them run, so a stored code means the same attack for every model.

Example:
    >>> out = Ensemble(norm="linf", steps=100, fab_steps=100, square_queries=5000)(
    ...     adapter, x, y, epsilons=4 / 255, seed=ids)  # doctest: +SKIP
    >>> out.broken_by  # 0: not broken; 1 APGD-CE, 2 APGD-DLR, 3 FAB-T, 4 Square  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import numpy as np

from robustkit.errors import check_choice, check_range, param_error
from robustkit.metrics.sweep import ENSEMBLE_ATTACKS, ENSEMBLE_LABELS, ensemble_plan
from robustkit.model.adapter import ModelAdapter
from robustkit.model.apgd import L2APGD, LinfAPGD
from robustkit.model.attack_loop import (
    _SEED_MOD,
    AttackResult,
    _check_images,
    _empty_result,
    sample_seeds,
)
from robustkit.model.fab import L2FAB, LinfFAB
from robustkit.model.square import L2Square, LinfSquare, SquareAttack

__all__ = ["ENSEMBLE_ATTACKS", "ENSEMBLE_LABELS", "Ensemble"]


class Ensemble:
    """APGD-CE -> APGD-DLR (targeted with >= 4 classes) -> FAB-T -> Square, per-sample worst case.

    Args:
        norm: ``"linf"`` or ``"l2"``.
        steps: APGD iterations per run (the paper: 100).
        restarts: runs per sample of the untargeted APGDs (APGD-T runs once per target class).
        n_target_classes: target classes of APGD-T and FAB-T (the paper: 9).
        fab_steps: FAB-T's iterations per target class (AutoAttack: 100); 0 leaves FAB-T out.
        square_queries: Square's queries per sample (AutoAttack: 5000); 0 leaves Square out.
    """

    def __init__(self, *, norm: str = "linf", steps: int = 100, restarts: int = 1, n_target_classes: int = 9,
                 fab_steps: int = 100, square_queries: int = 5000) -> None:
        check_choice("norm", norm, ("linf", "l2"))
        check_range("fab_steps", fab_steps, low=0, integer=True)
        check_range("square_queries", square_queries, low=0, integer=True)
        self.norm, self.steps, self.restarts = norm, steps, restarts
        self.n_target_classes, self.fab_steps, self.square_queries = n_target_classes, fab_steps, square_queries
        self._apgd = LinfAPGD if norm == "linf" else L2APGD
        self._apgd(steps=steps, restarts=restarts, n_target_classes=n_target_classes)  # validates the options

    def __repr__(self) -> str:
        return (f"Ensemble(norm={self.norm!r}, steps={self.steps!r}, restarts={self.restarts!r}, "
                f"n_target_classes={self.n_target_classes!r}, fab_steps={self.fab_steps!r}, "
                f"square_queries={self.square_queries!r})")

    def attacks(self, num_classes: int) -> list[tuple[str, Any]]:
        """The ``(name, attack)`` pairs run for a model with ``num_classes`` classes, in order."""
        targeted = num_classes >= 4  # APGD-T: one run per target class, as AutoAttack's standard version
        build = {  # FAB-T runs once per target class, from the image (AutoAttack)
            "apgd_ce": lambda: self._apgd(steps=self.steps, restarts=self.restarts),
            "apgd_dlr": lambda: self._apgd(steps=self.steps, restarts=1 if targeted else self.restarts, loss="dlr",
                                           targeted=targeted, n_target_classes=self.n_target_classes),
            "fab_t": lambda: (LinfFAB if self.norm == "linf" else L2FAB)(steps=self.fab_steps,
                                                                         n_target_classes=self.n_target_classes),
            "square": lambda: (LinfSquare if self.norm == "linf" else L2Square)(queries=self.square_queries),
        }
        plan = ensemble_plan(num_classes, fab_steps=self.fab_steps, square_queries=self.square_queries)
        return [(name, build[name]()) for name in plan]

    def __call__(self, model: ModelAdapter, x: np.ndarray, labels: np.ndarray, *, epsilons: float | np.ndarray,
                 target: np.ndarray | None = None, seed: int | np.ndarray = 0) -> AttackResult:
        """Run the ensemble on ``x`` ``(N, H, W, C)``, labels ``(N,)``, radius ``epsilons`` (scalar or ``(N,)``).

        Returns the per-sample worst case: ``success`` if any attack broke the sample,
        ``broken_by`` ``(N,)`` the code of the attack that did (:data:`ENSEMBLE_ATTACKS`; 0: none),
        ``loss_trace`` APGD-CE's best-loss trace, ``evals`` the gradient evaluations (Square's
        queries are forward passes).
        """
        if target is not None:
            raise param_error("target", "None (the ensemble is untargeted; APGD-T picks its own targets)",
                              "target classes")
        x = _check_images(model, x)
        n, y = len(x), np.asarray(labels, dtype=np.int64).reshape(-1)
        eps = np.broadcast_to(np.asarray(epsilons, dtype=np.float32), (n,)).copy()
        seeds = sample_seeds(seed, n)
        out = _empty_result(x, model.num_classes, self.steps)
        out.broken_by = np.zeros(n, np.int8)
        todo = np.arange(n)
        for name, attack in self.attacks(model.num_classes):
            if todo.size == 0:
                break
            code = ENSEMBLE_ATTACKS.index(name) + 1
            res = attack(model, x[todo], y[todo], epsilons=eps[todo], seed=(seeds[todo] * 7919 + code) % _SEED_MOD)
            out.gradient_evals += res.gradient_evals
            if code == 1:  # the unbroken keep APGD-CE's best point and its trace
                out.adv[todo], out.logits[todo], out.loss_trace[todo] = res.adv, res.logits, res.loss_trace
                out.evals[todo] += res.evals
            elif not isinstance(attack, SquareAttack):
                out.evals[todo] += res.evals
            hit = todo[res.success]
            out.adv[hit], out.logits[hit] = res.adv[res.success], res.logits[res.success]
            out.success[hit], out.broken_by[hit] = True, code
            todo = todo[~res.success]
        return out
