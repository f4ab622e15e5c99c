"""The task model: what an audit's outputs are, how they are decided, and which one matters most.

An audit has one :class:`Task`, built by the runner from the model's output kind, its class
names, the decision thresholds and the audit config, and stored in ``results.json``
(``task``). Single-label is the multi-label case with one-hot targets (as scikit-learn's
``roc_auc_score`` treats it): ``exclusive`` says whether an image has exactly one label
(softmax, logits, or a sigmoid head read by its arg-max) or a set of them (multi-label);
``decide`` turns probabilities into calls for both.

The **critical output** is the class whose misses cost most (COVID-19 for the demo's
chest X-ray model, a fracture for a fracture model). It is configuration, never a name in
the code: ``critical_class`` in the audit config or ``--critical-class``. Without one, the
numbers that need it (the critical miss rate under attack, the confident critical rate on
out-of-distribution sets, the critical class's sensitivity among kept cases and per slice)
are not computed, and the results, the report and the card say so
(:func:`critical_missing_check`).

No TensorFlow here: the report, compare, gate and the card read the same object back with
:meth:`Task.from_results`.

Example:
    >>> task = Task(names=("COVID-19", "NORMAL", "Viral Pneumonia"), exclusive=True, critical="COVID-19")
    >>> task.critical_index
    0
    >>> task.decide(np.array([[0.2, 0.5, 0.3]])).astype(int).tolist()
    [[0, 1, 0]]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from robustkit.errors import ConfigError
from robustkit.results import Check

__all__ = ["CRITICAL_OPTION", "Task", "critical_missing_check", "resolve_critical"]

#: how a user sets the critical class, quoted in every message that asks for it
CRITICAL_OPTION = "--critical-class NAME (critical_class in the audit config)"


@dataclass(frozen=True)
class Task:
    """The audited outputs and their decision rule.

    Attributes:
        names: the output names in the model's order (classes or findings), ``K`` of them.
        exclusive: one label per image (arg-max decides) or a set of labels (thresholds).
        critical: the output whose misses cost most, or None when the audit names none.
        thresholds: per-output decision thresholds ``(K,)`` of a non-exclusive task.
        threshold_source: how the thresholds were set (given, or chosen on which half).
    """

    names: tuple[str, ...]
    exclusive: bool = True
    critical: str | None = None
    thresholds: tuple[float, ...] | None = None
    threshold_source: str | None = None

    def __post_init__(self) -> None:
        if self.critical is not None and self.critical not in self.names:
            raise ConfigError(_unknown(self.critical, self.names))
        if self.thresholds is not None and len(self.thresholds) != len(self.names):
            raise ConfigError(f"expected a threshold per output ({len(self.names)}), got {len(self.thresholds)}.")

    @property
    def critical_index(self) -> int | None:
        """The critical output's position in :attr:`names`, or None."""
        return None if self.critical is None else self.names.index(self.critical)

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """The calls ``(N, K)`` bool: the arg-max one-hot, or each output above its threshold."""
        p = np.asarray(probs, dtype=np.float64)
        if self.exclusive or self.thresholds is None:
            return np.eye(p.shape[1], dtype=bool)[p.argmax(axis=1)]
        return p >= np.asarray(self.thresholds, dtype=np.float64)[None, :]

    def describe(self) -> dict[str, Any]:
        """The ``task`` block of ``results.json``."""
        return {"names": list(self.names), "exclusive": self.exclusive, "critical_class": self.critical,
                "critical_class_source": "configured" if self.critical is not None else "not set",
                **({"thresholds": list(self.thresholds), "threshold_source": self.threshold_source}
                   if self.thresholds is not None else {})}

    @classmethod
    def from_results(cls, model: Mapping[str, Any], class_names: Sequence[str],
                     task: Mapping[str, Any] | None = None) -> Task:
        """The task of a stored audit (its ``task`` block; older audits: from the model block)."""
        names = tuple(str(n) for n in class_names)
        block = dict(task or {})
        thresholds = model.get("thresholds")
        return cls(names=names, exclusive=bool(block.get("exclusive", model.get("output_kind") != "multilabel")),
                   critical=block.get("critical_class"),
                   thresholds=tuple(float(thresholds[n]) for n in names) if thresholds else None,
                   threshold_source=model.get("threshold_source"))


def resolve_critical(name: str | None, names: Sequence[str]) -> str | None:
    """Check a configured critical class against the model's outputs; ConfigError naming
    ``--critical-class`` and the choices when it is not one of them."""
    if name is None:
        return None
    if name not in names:
        raise ConfigError(_unknown(name, names))
    return name


def critical_missing_check(what: str) -> Check:
    """The warn check a study adds when a number needs a critical class and the audit has none.

    Args:
        what: the numbers left out, e.g. ``"the critical miss rate under attack"``.
    """
    return Check("critical class", "warn", f"no critical class was set, so {what} was not measured "
                                           f"(set {CRITICAL_OPTION}).")


def _unknown(name: str, names: Sequence[str]) -> str:
    return (f"The 'critical_class' option (--critical-class) must be one of the model's outputs "
            f"({', '.join(map(repr, names))}). Got {name!r} instead.")
