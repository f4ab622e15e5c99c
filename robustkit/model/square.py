"""Square Attack (Linf): a gradient-free random search that needs only the model's logits.

Andriushchenko, Croce, Flammarion and Hein 2020, "Square Attack: a query-efficient black-box
adversarial attack via random search" (ECCV), Algorithm 1 with the Linf proposal: start at
vertical stripes ``x + eps * (+-1 per column and channel)``; then, per query, change the
perturbation inside one random square window of side ``s`` to ``+-eps`` per channel, and keep
the change if it lowers the margin ``z_y - max_{i != y} z_i``; the window's area shrinks as
``p`` halves at the paper's query fractions (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000
of 10000). A sample stops once misclassified.

Where this differs from the paper's code (and why): every sample draws its window position
and signs from its own seed (the reference draws one window for the whole batch), so a
sample's outcome does not depend on its batch; a proposal that would change nothing is
redrawn at most 10 times. The model calls are the adapter's compiled logits, batched over
the samples still unbroken: one forward pass per query, no gradients.
"""

from __future__ import annotations

import math

import numpy as np

from robustkit.errors import check_range, param_error
from robustkit.model.adapter import ModelAdapter
from robustkit.model.attacks import AttackResult, _check_images, sample_seeds

__all__ = ["LinfSquare", "p_selection"]

_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)  # out of 10000 queries


def p_selection(p_init: float, query: int, n_queries: int) -> float:
    """The share of the image a window covers at ``query`` of ``n_queries`` (the paper's schedule).

    >>> p_selection(0.8, 0, 10000), p_selection(0.8, 51, 10000), p_selection(0.8, 60, 100)
    (0.8, 0.2, 0.0125)
    """
    it = int(query / n_queries * 10000)
    return p_init / 2 ** sum(it > t for t in _HALVINGS)


def _side(p: float, h: int, w: int) -> int:
    """The window side for area share ``p``: ``round(sqrt(p * h * w))`` within ``[1, min(h, w) - 1]``."""
    return max(1, min(int(round(math.sqrt(p * h * w))), min(h, w) - 1))


def _margin(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``z_y - max_{i != y} z_i`` ``(N,)`` (negative: misclassified)."""
    own = z[np.arange(len(y)), y]
    other = np.where(np.eye(z.shape[1], dtype=bool)[y], -np.inf, z).max(axis=1)
    return own - other


class LinfSquare:
    """Square Attack in the Linf ball (untargeted), numpy search around compiled logits.

    Args:
        queries: model queries per sample (the paper: 5000 in AutoAttack, 10000 alone).
        p_init: the initial share of the image a window covers (0.8 in the paper for Linf).
    """

    norm = "linf"
    steps = 1  # no loss trace worth keeping: the margin trace is ``(N, 2)`` (start, end)

    def __init__(self, *, queries: int = 5000, p_init: float = 0.8) -> None:
        check_range("queries", queries, low=1, integer=True)
        check_range("p_init", p_init, low=0, high=1, low_open=True)
        self.queries, self.p_init = queries, p_init

    def __repr__(self) -> str:
        return f"LinfSquare(queries={self.queries!r}, p_init={self.p_init!r})"

    def __call__(self, model: ModelAdapter, x: np.ndarray, labels: np.ndarray, *, epsilons: float | np.ndarray,
                 target: np.ndarray | None = None, seed: int | np.ndarray = 0) -> AttackResult:
        """Attack ``x`` ``(N, H, W, C)`` with labels ``(N,)`` within Linf ``epsilons`` (scalar or ``(N,)``).

        ``target`` must be None (untargeted only); ``seed``: one per sample or a scalar.
        """
        if target is not None:
            raise param_error("target", "None (the Square attack here is untargeted)", "target classes")
        x = _check_images(model, x)
        n, (h, w, c) = len(x), x.shape[1:]
        y = np.asarray(labels, dtype=np.int64).reshape(-1)
        eps = np.broadcast_to(np.asarray(epsilons, dtype=np.float32), (n,)).reshape(n, 1, 1, 1)
        rngs = [np.random.default_rng(int(s)) for s in sample_seeds(seed, n)]
        stripes = np.stack([r.choice([-1.0, 1.0], size=(1, w, c)) for r in rngs]).astype(np.float32)
        best = np.clip(x + eps * stripes, 0.0, 1.0)
        z = model.logits(best)
        margin = _margin(z, y)
        start, queries = margin.copy(), np.ones(n, np.int64)
        for q in range(1, self.queries):
            todo = np.flatnonzero(margin > 0)
            if todo.size == 0:
                break
            side = _side(p_selection(self.p_init, q - 1, self.queries), h, w)
            cand = np.stack([self._propose(rngs[i], x[i], best[i], float(eps[i, 0, 0, 0]), side) for i in todo])
            z_new = model.logits(cand)
            m_new = _margin(z_new, y[todo])
            better = m_new < margin[todo]
            best[todo[better]], z[todo[better]], margin[todo[better]] = cand[better], z_new[better], m_new[better]
            queries[todo] += 1
        return AttackResult(adv=best, success=z.argmax(axis=1) != y, logits=z.astype(np.float32),
                            loss_trace=np.stack([-start, -margin], axis=1).astype(np.float32), gradient_evals=0,
                            evals=queries)

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
