"""The conditions of a perturbation or noise study: each (transform, severity) once, in column order.

The map (:mod:`robustkit.studies.conditions`) and the pure reduce
(:mod:`robustkit.studies.condition_reduce`) both read it, so it lives apart from both. No TensorFlow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from robustkit.data.transforms import Transform, get_transform

__all__ = ["Plan", "condition_name", "describe_transform", "param_text", "plan_conditions"]


def condition_name(transform: str, severity: int) -> str:
    """``"jpeg.3"``: the qualifier of a condition's metrics."""
    return f"{transform}.{severity}"


@dataclass(frozen=True)
class Plan:
    """The conditions in column order and the distinct jobs that compute them."""

    conditions: list[tuple[Transform, int]]
    jobs: list[tuple[Transform, int]]
    columns: list[list[int]]  # per job: the condition columns it fills

    @property
    def names(self) -> list[str]:
        return [condition_name(t.name, s) for t, s in self.conditions]


def plan_conditions(transforms: Sequence[str], severities: Sequence[int]) -> Plan:
    """The conditions ``transforms x sorted(severities)`` and the distinct jobs that compute them
    (a deterministic transform at two severities with one parameter runs once)."""
    conditions = [(get_transform(t), s) for t in transforms for s in sorted(severities)]
    jobs: list[tuple[Transform, int]] = []
    columns: list[list[int]] = []
    seen: dict[tuple[str, str], int] = {}
    for col, (t, s) in enumerate(conditions):
        key = (t.name, str(s) if t.random else repr(t.param(s)))
        if key not in seen:
            seen[key] = len(jobs)
            jobs.append((t, s))
            columns.append([])
        columns[seen[key]].append(col)
    return Plan(conditions, jobs, columns)


def param_text(p: Any) -> str:
    """A transform parameter as the report prints it (``0.5``, ``3, 7``)."""
    if isinstance(p, tuple):
        return ", ".join(param_text(v) for v in p)
    return f"{p:g}" if isinstance(p, float) else str(p)


def describe_transform(t: Transform) -> dict[str, Any]:
    """What the report says of a transform: name, description, parameters, source."""
    return {
        "name": t.name,
        "description": t.description,
        "param_name": t.param_name,
        "params": [param_text(p) for p in t.params],
        "source": t.source,
        "graded": t.graded,
        "random": t.random,
    }
