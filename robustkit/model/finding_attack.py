"""Attacks on one finding's call of a multi-label model: turn a present finding off, an absent one on.

A multi-label model calls finding ``f`` present when ``sigmoid(z_f) >= t_f`` (its decision
threshold, :attr:`ModelAdapter.thresholds`). The attack on the pair (image, ``f``) flips that
call: if ``f`` is called present it pushes ``z_f`` below ``logit(t_f)`` ("turn off"), else
above it ("turn on"); the other findings are left free.

Loss: the signed logit margin ``s * (z_f - logit(t_f))`` with ``s = -1`` to turn off and
``+1`` to turn on, maximised; the call has flipped when it is positive (``>= 0`` to turn on,
as the call rule). Why the margin and not the binary cross-entropy of the flipped target on
output ``f``: both are increasing functions of ``s * z_f`` alone, so with the normalised steps
of PGD and APGD (sign for Linf, unit length for L2) they give the same direction at every
iterate; the margin never saturates (the BCE's gradient scales with ``1 - p`` of the target
and vanishes in float32 once the sigmoid saturates), it is 0 exactly at the threshold, so the
loss trace reads as the distance to the flip in logit units, and APGD's step-size rule, which
compares loss values, sees a loss that is linear in the logit (Carlini and Wagner 2017 argue
the same for margins over cross-entropy).

The loop, the per-sample epsilons and seeds, the restarts and the chunking are those of
:class:`~robustkit.model.attack_loop.GradientAttack` and :class:`~robustkit.model.apgd.APGD`:
the classes here only supply the objective (:meth:`GradientAttack._objective`). Each
sample's label is the code ``2 * f + on`` (``on``: 1 to turn the finding on, 0 to turn it off).
The sweep over radii is the one of every attack (:func:`~robustkit.model.attack_sweep.epsilon_sweep`),
with the criterion :class:`~robustkit.model.attack_sweep.CallFlip`.

Example:
    >>> attack = LinfFlipPGD(steps=10)                                           # doctest: +SKIP
    >>> sweep = flip_sweep(attack, adapter, images, called, [1 / 255, 2 / 255], seeds=ids_seeds)  # doctest: +SKIP
    >>> sweep.min_eps[:, 0]        # per image, the smallest radius that flipped finding 0  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from robustkit._tf import tf
from robustkit.errors import param_error
from robustkit.metrics.sweep import FLIP_LOSS, SweepResult
from robustkit.model.adapter import ModelAdapter
from robustkit.model.apgd import L2APGD, LinfAPGD
from robustkit.model.attack_loop import FGSM, L2PGD, LinfPGD
from robustkit.model.attack_sweep import CallFlip, SweepAttack, epsilon_sweep

__all__ = [
    "FLIP_LOSS",
    "FlipSweep",
    "L2FlipAPGD",
    "L2FlipPGD",
    "LinfFlipAPGD",
    "LinfFlipFGSM",
    "LinfFlipPGD",
    "flip_attack",
    "flip_codes",
    "flip_sweep",
    "model_thresholds",
]


def model_thresholds(model: ModelAdapter) -> np.ndarray:
    """The model's decision thresholds ``(K,)`` (0.5 for each finding when none were set)."""
    t = np.full(model.num_classes, 0.5) if model.thresholds is None else np.asarray(model.thresholds, np.float64)
    if t.shape != (model.num_classes,) or np.any((t <= 0) | (t >= 1)):
        raise param_error("thresholds", f"{model.num_classes} numbers in (0, 1)", t.tolist())
    return t


def flip_codes(finding: int, called: np.ndarray) -> np.ndarray:
    """Labels ``(N,)`` int32 of the attack on ``finding``: ``2 * finding + on`` (on: not called present)."""
    return (2 * int(finding) + (~np.asarray(called, dtype=bool)).astype(np.int32)).astype(np.int32)


class _FlipObjective:
    """Mix-in: the objective of flipping one finding's call (see the module docstring)."""

    loss: str

    def _objective(self, model: ModelAdapter) -> tuple[Callable[[Any, Any], Any], Callable[[Any, Any], Any]]:
        t = model_thresholds(model)
        cut = tf.constant(np.log(t / (1 - t)), tf.float32)
        thresholds = tf.constant(t, tf.float32)

        def parts(z: Any, labels: Any) -> tuple[Any, Any, Any]:
            code = labels if labels.shape.rank == 1 else labels[:, 0]  # APGD hands [label, target] rows
            f, on = code // 2, code % 2
            return tf.gather(z, f, axis=1, batch_dims=1), f, tf.equal(on, 1)

        def margin(z: Any, labels: Any) -> Any:
            z_f, f, on = parts(z, labels)
            return tf.where(on, 1.0, -1.0) * (z_f - tf.gather(cut, f))

        def flipped(z: Any, labels: Any) -> Any:
            z_f, f, on = parts(z, labels)
            present = tf.sigmoid(z_f) >= tf.gather(thresholds, f)  # the call rule, in probability
            return tf.equal(present, on)

        return margin, flipped

    def _cache_key(self, model: ModelAdapter) -> tuple[Any, ...]:
        key: tuple[Any, ...] = super()._cache_key(model)  # type: ignore[misc]
        return (*key, tuple(model_thresholds(model).tolist()))


class LinfFlipPGD(_FlipObjective, LinfPGD):
    """PGD in the Linf ball on the flip margin (options as :class:`~robustkit.model.attack_loop.LinfPGD`, no loss)."""

    def __init__(self, *, steps: int = 20, step_size_factor: float = 2.5, random_start: bool = True,
                 restarts: int = 1) -> None:
        super().__init__(steps=steps, step_size_factor=step_size_factor, random_start=random_start,
                         restarts=restarts)
        self.loss = "flip_margin"


class L2FlipPGD(_FlipObjective, L2PGD):
    """PGD in the L2 ball on the flip margin."""

    def __init__(self, *, steps: int = 20, step_size_factor: float = 2.5, random_start: bool = True,
                 restarts: int = 1) -> None:
        super().__init__(steps=steps, step_size_factor=step_size_factor, random_start=random_start,
                         restarts=restarts)
        self.loss = "flip_margin"


class LinfFlipFGSM(_FlipObjective, FGSM):
    """One Linf step of size ``eps`` on the flip margin (the sanity baseline)."""

    def __init__(self) -> None:
        super().__init__()
        self.loss = "flip_margin"


class LinfFlipAPGD(_FlipObjective, LinfAPGD):
    """APGD (Croce and Hein 2020) in the Linf ball on the flip margin."""

    def __init__(self, *, steps: int = 100, restarts: int = 1) -> None:
        super().__init__(steps=steps, restarts=restarts)
        self.loss = "flip_margin"


class L2FlipAPGD(_FlipObjective, L2APGD):
    """APGD in the L2 ball on the flip margin."""

    def __init__(self, *, steps: int = 100, restarts: int = 1) -> None:
        super().__init__(steps=steps, restarts=restarts)
        self.loss = "flip_margin"


def flip_attack(norm: str, kind: str, **options: Any) -> SweepAttack:
    """The flip attack for ``norm`` (``linf``/``l2``) and ``kind`` (``pgd``/``apgd``) with ``options``."""
    table: dict[tuple[str, str], Any] = {("linf", "pgd"): LinfFlipPGD, ("l2", "pgd"): L2FlipPGD,
                                         ("linf", "apgd"): LinfFlipAPGD, ("l2", "apgd"): L2FlipAPGD}
    if (norm, kind) not in table:
        raise param_error("norm/kind", "('linf' or 'l2', 'pgd' or 'apgd')", (norm, kind))
    attack: SweepAttack = table[norm, kind](**options)
    return attack


@dataclass
class FlipSweep:
    """Per image and finding, the flip attack at increasing radii (each on the pairs not yet flipped):
    the per-finding :class:`~robustkit.metrics.sweep.SweepResult` of :func:`epsilon_sweep` with a
    :class:`CallFlip` criterion, stacked over the findings.

    Attributes:
        epsilons: radii ``(E,)`` in increasing order, pixel units.
        flipped: ``(N, K, E)`` bool: the finding's call flipped within each radius
            (non-decreasing along the radii by construction).
        min_eps: ``(N, K)`` smallest radius that flipped the call (inf if none did).
        adv_prob: ``(N, K)`` the finding's probability at the flipping example (NaN if none).
        traces: ``(N, K, E, steps + 1)`` the margin at every iterate where the attack ran on
            the pair and failed to flip it (NaN elsewhere).
        evals: ``(N, K)`` gradient evaluations spent on each pair.
    """

    epsilons: np.ndarray
    flipped: np.ndarray
    min_eps: np.ndarray
    adv_prob: np.ndarray
    traces: np.ndarray
    evals: np.ndarray

    @classmethod
    def stack(cls, sweeps: Sequence[SweepResult]) -> FlipSweep:
        """The per-finding sweeps (one per finding, in order) side by side."""
        return cls(epsilons=sweeps[0].epsilons, flipped=np.stack([~s.correct for s in sweeps], axis=1),
                   min_eps=np.stack([s.min_eps for s in sweeps], axis=1),
                   adv_prob=np.stack([s.adv_conf[:, -1] for s in sweeps], axis=1).astype(np.float32),
                   traces=np.stack([s.traces for s in sweeps], axis=1), evals=np.stack([s.evals for s in sweeps], axis=1))


def flip_sweep(attack: SweepAttack, model: ModelAdapter, x: np.ndarray, called: np.ndarray,
               epsilons: Sequence[float], *, seeds: np.ndarray) -> FlipSweep:
    """Attack every finding's call of every image at increasing radii, survivors only.

    One :func:`~robustkit.model.attack_sweep.epsilon_sweep` per finding with the criterion
    :class:`CallFlip`: a flip inside a small ball is inside every larger one, so a pair flipped
    at ``eps_k`` counts as flipped at every larger radius and is not attacked again.

    Args:
        attack: a flip attack (:func:`flip_attack`, :class:`LinfFlipFGSM`).
        model: the adapter (its ``thresholds`` give the calls).
        x: images ``(N, H, W, C)`` in [0, 1].
        called: ``(N, K)`` bool: the clean calls (``prob >= threshold``).
        epsilons: radii in pixel units (sorted here).
        seeds: ``(N, K)`` int: one seed per pair (keyed by sample id and finding, so a pair's
            result does not depend on its batch).
    """
    called = np.asarray(called, dtype=bool)
    n, k = called.shape
    seeds = np.asarray(seeds, dtype=np.int64)
    if seeds.shape != (n, k):
        raise param_error("seeds", f"one seed per image and finding ({n}, {k})", seeds.shape)
    t = model_thresholds(model)
    return FlipSweep.stack([
        epsilon_sweep(attack, model, x, flip_codes(f, called[:, f]), epsilons,
                      criterion=CallFlip(f, called[:, f], float(t[f])), seed=seeds[:, f])
        for f in range(k)])
