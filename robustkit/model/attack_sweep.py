"""One epsilon sweep for every attack goal: a criterion says what counts as broken.

The sweep attacks at increasing radii, each time only the samples that survived the smaller
ones, with any attack of the compiled loop family (PGD, APGD, the ensemble, the flip attacks).
What counts as broken is the sweep's **criterion** (foolbox's ``get_is_adversarial`` pattern):
:class:`Misclassification` (the label's arg-max is lost; the default) or :class:`CallFlip`
(one output's call at its threshold flipped, for a multi-label model). Either way the outcome
is one :class:`~robustkit.metrics.sweep.SweepResult`.

Example:
    >>> sweep = epsilon_sweep(attack, adapter, images, labels, [1 / 255, 2 / 255, 4 / 255])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np

from robustkit.metrics.outputs import probabilities
from robustkit.metrics.sweep import SweepResult
from robustkit.model.adapter import ModelAdapter
from robustkit.model.attack_loop import _SEED_MOD, AttackResult, sample_seeds

__all__ = ["CallFlip", "Criterion", "Misclassification", "SweepAttack", "epsilon_sweep"]


class SweepAttack(Protocol):
    """What :func:`epsilon_sweep` runs: a gradient attack, an APGD, the ensemble or a flip attack."""

    steps: int

    def __call__(self, model: ModelAdapter, x: np.ndarray, labels: np.ndarray, *, epsilons: float | np.ndarray,
                 target: np.ndarray | None = None, seed: int | np.ndarray = 0) -> AttackResult: ...


class Criterion(Protocol):
    """What counts as broken in a sweep, read from logits in numpy (foolbox's ``get_is_adversarial``).

    ``start`` gives the clean state of every sample (alive, and the prediction and confidence
    stored until it breaks); ``broken`` says which of the attacked ``rows`` an attack broke;
    ``read`` gives the prediction and confidence stored for a broken sample;
    ``reads_clean_logits``: whether ``start`` needs the clean logits (else it gets ``None``).
    """

    reads_clean_logits: ClassVar[bool]

    def start(self, clean_logits: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...

    def broken(self, logits: np.ndarray, rows: np.ndarray) -> np.ndarray: ...

    def read(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class Misclassification:
    """Broken when the arg-max leaves the label (clean errors count as broken at radius 0).

    Args:
        labels: the classes ``(N,)``.
        kind: the model's output kind (the confidence is its probability per that kind).
    """

    labels: np.ndarray
    kind: str
    reads_clean_logits: ClassVar[bool] = True

    def start(self, clean_logits: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        assert clean_logits is not None
        pred, conf = self.read(clean_logits)
        return pred == self.labels, pred, conf

    def broken(self, logits: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return np.asarray(logits.argmax(axis=1) != self.labels[rows])

    def read(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return logits.argmax(axis=1), probabilities(logits, self.kind).max(axis=1)


@dataclass(frozen=True)
class CallFlip:
    """Broken when output ``output``'s call (its sigmoid at ``threshold`` or above) differs from ``called``.

    Every sample starts alive (``called`` are the clean calls); the confidence stored is the
    output's probability.

    Args:
        output: the attacked output's index.
        called: ``(N,)`` bool: its clean calls.
        threshold: its decision threshold in (0, 1).
    """

    output: int
    called: np.ndarray
    threshold: float
    reads_clean_logits: ClassVar[bool] = False

    def start(self, clean_logits: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = len(self.called)
        return np.ones(n, bool), np.full(n, self.output), np.full(n, np.nan, np.float32)

    def broken(self, logits: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return np.asarray((self.read(logits)[1] >= self.threshold) != self.called[rows])

    def read(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.full(len(logits), self.output), probabilities(logits, "multilabel")[:, self.output]


def epsilon_sweep(
    attack: SweepAttack,
    model: ModelAdapter,
    x: np.ndarray,
    labels: np.ndarray,
    epsilons: Sequence[float],
    *,
    criterion: Criterion | None = None,
    clean_logits: np.ndarray | None = None,
    target: np.ndarray | None = None,
    keep: Sequence[int] = (),
    seed: int | np.ndarray = 0,
) -> SweepResult:
    """Attack at increasing radii, each time only the samples that survived the smaller ones.

    An adversarial example inside a small ball lies inside every larger one, so a sample
    broken at ``eps_k`` stays broken at every larger radius and is not attacked again.
    Samples broken on their clean image (misclassified) count as broken at radius 0.

    Args:
        attack: the attack (its steps, restarts, loss ...): PGD, APGD, the ensemble or a flip attack.
        model: the adapter.
        x: images ``(N, H, W, C)``; labels: what the attack takes as labels ``(N,)`` (classes,
            or a flip attack's codes).
        epsilons: radii in pixel units (sorted here).
        criterion: what counts as broken (default: :class:`Misclassification` of ``labels``).
        clean_logits: ``(N, K)`` clean logits if already computed (else one clean pass, when
            the criterion reads them).
        target: target classes ``(N,)`` for a targeted attack.
        keep: positions whose adversarial image at ``min_eps`` is kept (for a gallery).
        seed: seed of the random starts: one per sample ``(N,)`` (then a sample's result does
            not depend on the other samples), or a scalar (see :func:`sample_seeds`).
    """
    eps = np.sort(np.asarray(epsilons, dtype=np.float64))
    labels = np.asarray(labels).reshape(-1)
    if criterion is None:
        criterion = Misclassification(labels, model.output_kind)
    n, e = len(x), len(eps)
    z0 = None if not criterion.reads_clean_logits else (
        model.logits(x) if clean_logits is None else np.asarray(clean_logits, np.float32))
    alive, clean_pred, clean_conf = criterion.start(z0)
    seeds = sample_seeds(seed, n)
    out = SweepResult(
        epsilons=eps,
        correct=np.zeros((n, e), bool),
        min_eps=np.where(alive, np.inf, 0.0),
        adv_pred=np.repeat(clean_pred[:, None], e, 1),
        adv_conf=np.repeat(clean_conf[:, None], e, 1).astype(np.float32),
        loss_traces=np.full((e, attack.steps + 1), np.nan, np.float32),
        kept={},
        gradient_evals=0,
        traces=np.full((n, e, attack.steps + 1), np.nan, np.float32),
        evals=np.zeros(n, np.int64),
        broken_by=np.zeros(n, np.int8),
    )
    keep_set = {int(i) for i in keep}
    for k, radius in enumerate(eps):
        todo = np.flatnonzero(alive)
        if todo.size:
            res = attack(model, x[todo], labels[todo], epsilons=float(radius),
                         target=None if target is None else np.asarray(target)[todo],
                         seed=(seeds[todo] * 1009 + k) % _SEED_MOD)
            out.gradient_evals += res.gradient_evals
            out.evals[todo] += res.evals
            broken = criterion.broken(res.logits, todo)
            out.traces[todo[~broken], k] = res.loss_trace[~broken]
            if not broken.all():  # convergence matters where the attack failed (Pintor et al. 2022)
                out.loss_traces[k] = res.loss_trace[~broken].mean(axis=0)
            _record_broken(out, res, todo, broken, k, keep_set, criterion)
            alive[todo[broken]] = False
        out.correct[:, k] = alive
    return out


def _record_broken(out: SweepResult, res: AttackResult, todo: np.ndarray, broken: np.ndarray, k: int,
                   keep: set[int], criterion: Criterion) -> None:
    idx = todo[broken]
    pred, conf = criterion.read(res.logits[broken])
    out.min_eps[idx] = out.epsilons[k]
    out.broken_by[idx] = res.broken_by[broken] if res.broken_by.size else 1
    out.adv_pred[idx, k:] = pred[:, None]
    out.adv_conf[idx, k:] = conf[:, None]
    for j, pos in zip(np.flatnonzero(broken), idx):
        if int(pos) in keep:
            out.kept[int(pos)] = res.adv[j]
