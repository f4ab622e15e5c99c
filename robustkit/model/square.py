"""Square Attack (Linf and L2): a gradient-free random search that needs only the model's logits.

Andriushchenko, Croce, Flammarion and Hein 2020, "Square Attack: a query-efficient black-box
adversarial attack via random search" (ECCV), Algorithm 1. Both norms share the search: start
at a perturbation of norm ``eps``; per query, change the perturbation inside random square
windows of side ``s`` and keep the change if it lowers the margin ``z_y - max_{i != y} z_i``;
the windows' area shrinks as ``p`` halves at the paper's query fractions (10, 50, 200, 500,
1000, 2000, 4000, 6000, 8000 of 10000). A sample stops once misclassified.

* Linf (:class:`LinfSquare`): start at vertical stripes ``x + eps * (+-1 per column and
  channel)``; a proposal sets the perturbation inside one window to ``+-eps`` per channel.
* L2 (:class:`L2Square`): start at a grid of windows of side ``min(h, w) // 5``, each filled
  with the paper's pattern (two halves of centred concentric squares, weights ``1 / (k + 1)^2``
  at Chebyshev distance ``k``, of opposite signs) times a random sign per channel, the whole
  scaled to L2 norm ``eps``; a proposal moves the mass of a second window (and the budget
  left unused) into a first one, adding a fresh random pattern there, so that the
  perturbation keeps L2 norm ``eps`` before clipping to [0, 1].

Where this differs from the paper's code (and why): every sample draws its windows, signs and
pattern orientation from its own seed (the reference draws one window for the whole batch),
so a sample's outcome does not depend on its batch; window corners range over every position
that fits (the reference's upper bound is exclusive, so it never touches the last row or
column); the L2 start tiles the image with as many windows as fit, centred (the reference
assumes five per side, which fails for sizes like 12 px); a Linf proposal that would change
nothing is redrawn at most 10 times. The model calls are the adapter's compiled logits,
batched over the samples still unbroken: one forward pass per query, no gradients.

Example:
    >>> out = L2Square(queries=5000)(adapter, images, labels, epsilons=0.5, seed=ids)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from robustkit.errors import check_range, param_error
from robustkit.model.adapter import ModelAdapter
from robustkit.model.attack_loop import AttackResult, _check_images, sample_seeds

__all__ = ["L2Square", "LinfSquare", "SquareAttack", "p_selection", "square_pattern"]

_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)  # out of 10000 queries


def p_selection(p_init: float, query: int, n_queries: int) -> float:
    """The share of the image a window covers at ``query`` of ``n_queries`` (the paper's schedule).

    >>> p_selection(0.8, 0, 10000), p_selection(0.8, 51, 10000), p_selection(0.8, 60, 100)
    (0.8, 0.2, 0.00625)
    """
    it = int(query / n_queries * 10000)
    return p_init / 2 ** sum(it > t for t in _HALVINGS)


def _margin(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``z_y - max_{i != y} z_i`` ``(N,)`` (negative: misclassified)."""
    own = z[np.arange(len(y)), y]
    other = np.where(np.eye(z.shape[1], dtype=bool)[y], -np.inf, z).max(axis=1)
    return own - other


class SquareAttack(ABC):
    """The Square search (untargeted), numpy around compiled logits; a norm supplies the moves.

    Args:
        queries: model queries per sample (the paper: 5000 in AutoAttack, 10000 alone).
        p_init: the initial share of the image a window covers (0.8: the paper's Linf value and
            AutoAttack's for both norms).
    """

    norm: ClassVar[str] = ""
    steps = 1  # no loss trace worth keeping: the margin trace is ``(N, 2)`` (start, end)

    def __init__(self, *, queries: int = 5000, p_init: float = 0.8) -> None:
        check_range("queries", queries, low=1, integer=True)
        check_range("p_init", p_init, low=0, high=1, low_open=True)
        self.queries, self.p_init = queries, p_init

    def __repr__(self) -> str:
        return f"{type(self).__name__}(queries={self.queries!r}, p_init={self.p_init!r})"

    # -- what a norm supplies ---------------------------------------------------------------
    @staticmethod
    @abstractmethod
    def _side(p: float, h: int, w: int) -> int:
        """The window side for area share ``p`` of an ``h`` x ``w`` image."""

    @staticmethod
    @abstractmethod
    def _start(rng: np.random.Generator, x0: np.ndarray, eps: float) -> np.ndarray:
        """The first point ``(H, W, C)`` in [0, 1] within ``eps`` of ``x0``."""

    @staticmethod
    @abstractmethod
    def _propose(rng: np.random.Generator, x0: np.ndarray, best: np.ndarray, eps: float, side: int) -> np.ndarray:
        """A new point ``(H, W, C)`` in [0, 1] within ``eps`` of ``x0``, changed from ``best`` in windows of ``side``."""

    # -- the search, written once -----------------------------------------------------------
    def __call__(self, model: ModelAdapter, x: np.ndarray, labels: np.ndarray, *, epsilons: float | np.ndarray,
                 target: np.ndarray | None = None, seed: int | np.ndarray = 0) -> AttackResult:
        """Attack ``x`` ``(N, H, W, C)`` with labels ``(N,)`` within ``epsilons`` (scalar or ``(N,)``).

        ``target`` must be None (untargeted only); ``seed``: one per sample or a scalar.
        """
        if target is not None:
            raise param_error("target", "None (the Square attack here is untargeted)", "target classes")
        x = _check_images(model, x)
        n, (h, w, _) = len(x), x.shape[1:]
        y = np.asarray(labels, dtype=np.int64).reshape(-1)
        eps = np.broadcast_to(np.asarray(epsilons, dtype=np.float32), (n,)).astype(float)
        rngs = [np.random.default_rng(int(s)) for s in sample_seeds(seed, n)]
        best = np.stack([self._start(r, x[i], eps[i]) for i, r in enumerate(rngs)]).astype(np.float32)
        z = model.logits(best)
        margin = _margin(z, y)
        start, queries = margin.copy(), np.ones(n, np.int64)
        for q in range(1, self.queries):
            todo = np.flatnonzero(margin > 0)
            if todo.size == 0:
                break
            side = self._side(p_selection(self.p_init, q - 1, self.queries), h, w)
            cand = np.stack([self._propose(rngs[i], x[i], best[i], eps[i], side) for i in todo]).astype(np.float32)
            z_new = model.logits(cand)
            m_new = _margin(z_new, y[todo])
            better = m_new < margin[todo]
            best[todo[better]], z[todo[better]], margin[todo[better]] = cand[better], z_new[better], m_new[better]
            queries[todo] += 1
        return AttackResult(adv=best, success=z.argmax(axis=1) != y, logits=z.astype(np.float32),
                            loss_trace=np.stack([-start, -margin], axis=1).astype(np.float32), gradient_evals=0,
                            evals=queries)


class LinfSquare(SquareAttack):
    """Square Attack in the Linf ball: stripes, then ``+-eps`` per channel in one window."""

    norm = "linf"

    @staticmethod
    def _side(p: float, h: int, w: int) -> int:
        """``round(sqrt(p * h * w))`` within ``[1, min(h, w) - 1]``."""
        return max(1, min(int(round(math.sqrt(p * h * w))), min(h, w) - 1))

    @staticmethod
    def _start(rng: np.random.Generator, x0: np.ndarray, eps: float) -> np.ndarray:
        _, w, c = x0.shape
        return np.clip(x0 + (eps * rng.choice([-1.0, 1.0], size=(1, w, c))).astype(np.float32), 0.0, 1.0)

    @staticmethod
    def _propose(rng: np.random.Generator, x0: np.ndarray, best: np.ndarray, eps: float, side: int) -> np.ndarray:
        """``best`` with one ``side`` x ``side`` window of the perturbation set to ``+-eps`` per channel."""
        h, w, c = x0.shape
        i, j = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        win = (slice(i, i + side), slice(j, j + side))
        for _ in range(10):  # redraw a proposal that changes nothing
            signs = rng.choice([-eps, eps], size=(1, 1, c)).astype(np.float32)
            patch = np.clip(x0[win] + signs, 0.0, 1.0)
            if np.any(np.abs(patch - best[win]) >= 1e-7):
                break
        cand = best.copy()
        cand[win] = patch
        return cand


def _rings(rows: int, cols: int) -> np.ndarray:
    """``(rows, cols)``: centred concentric squares, ``sum_{k >= m} 1 / (k + 1)^2`` at Chebyshev distance ``m``
    from the centre ``(rows // 2, cols // 2)`` (``k`` up to ``max(rows, cols) // 2``), unit L2 norm."""
    if rows == 0:
        return np.zeros((0, cols))
    last = max(rows // 2, cols // 2)
    tail = np.cumsum(1.0 / np.arange(last + 1, 0, -1) ** 2)[::-1]  # tail[m] = sum_{k=m}^{last} 1/(k+1)^2
    m = np.maximum.outer(np.abs(np.arange(rows) - rows // 2), np.abs(np.arange(cols) - cols // 2))
    out = tail[m]
    return out / np.linalg.norm(out)


def square_pattern(side: int, *, transpose: bool = False) -> np.ndarray:
    """The L2 Square attack's window ``(side, side)``: the top half rings, the bottom half minus
    rings, unit L2 norm (turned by 90 degrees with ``transpose``).

    >>> p = square_pattern(5)
    >>> round(float(np.linalg.norm(p)), 6), bool(p[0, 2] > 0 > p[4, 2])
    (1.0, True)
    """
    out = np.concatenate([_rings(side // 2, side), -_rings(side - side // 2, side)])
    out /= np.linalg.norm(out)
    return out.T if transpose else out


def _pattern(rng: np.random.Generator, side: int, c: int) -> np.ndarray:
    """``(side, side, c)``: the pattern, turned with probability 1/2, times a random sign per channel."""
    return square_pattern(side, transpose=bool(rng.random() < 0.5))[..., None] * rng.choice([-1.0, 1.0], size=c)


class L2Square(SquareAttack):
    """Square Attack in the L2 ball: the window pattern, mass moved between two windows."""

    norm = "l2"

    @staticmethod
    def _side(p: float, h: int, w: int) -> int:
        """``round(sqrt(p * h * w))``, at least 3, odd, at most ``min(h, w)``."""
        s = max(int(round(math.sqrt(p * h * w))), 3)
        return min(s + 1 - s % 2, min(h, w))

    @staticmethod
    def _start(rng: np.random.Generator, x0: np.ndarray, eps: float) -> np.ndarray:
        """A centred grid of ``side = min(h, w) // 5`` windows, each the pattern with random signs."""
        h, w, c = x0.shape
        side = max(min(h, w) // 5, 1)
        delta = np.zeros_like(x0, dtype=np.float64)
        (nh, nw), (oh, ow) = (h // side, w // side), ((h % side) // 2, (w % side) // 2)
        for i in range(nh):
            for j in range(nw):
                delta[oh + i * side:oh + (i + 1) * side, ow + j * side:ow + (j + 1) * side] = _pattern(rng, side, c)
        return np.clip(x0 + eps * delta / max(float(np.linalg.norm(delta)), 1e-12), 0.0, 1.0)

    @staticmethod
    def _propose(rng: np.random.Generator, x0: np.ndarray, best: np.ndarray, eps: float, side: int) -> np.ndarray:
        """Empty a second window into a first: per channel the first window gets a fresh pattern
        plus its old direction, scaled to hold the two windows' mass and a share of the unused
        budget; the whole is rescaled to L2 norm ``eps``, then clipped to [0, 1]."""
        h, w, c = x0.shape
        delta = best.astype(np.float64) - x0
        (i1, j1), (i2, j2) = (tuple(int(v) for v in rng.integers(0, (h - side + 1, w - side + 1))) for _ in range(2))
        win1, win2 = (slice(i1, i1 + side), slice(j1, j1 + side)), (slice(i2, i2 + side), slice(j2, j2 + side))
        both = np.zeros((h, w, 1), bool)
        both[win1] = both[win2] = True
        mass = np.sqrt(np.sum(np.where(both, delta, 0.0) ** 2, axis=(0, 1)))  # (C,)
        unused = max(eps**2 - float(np.sum(delta**2)), 0.0) / c
        old = delta[win1] / (np.sqrt(np.sum(delta[win1] ** 2, axis=(0, 1))) + 1e-12)
        new = _pattern(rng, side, c) + old
        new *= np.sqrt(unused + mass**2) / (np.sqrt(np.sum(new**2, axis=(0, 1))) + 1e-12)
        delta[win2] = 0.0
        delta[win1] = new
        return np.clip(x0 + eps * delta / max(float(np.linalg.norm(delta)), 1e-12), 0.0, 1.0)
