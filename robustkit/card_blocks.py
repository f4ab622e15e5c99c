"""The studies' declared card blocks, resolved against a stored audit.

Each study's plug-in record declares its :class:`~robustkit.plugins.CardBlock`: the metric
patterns it shows on the audit card, for every task kind (:class:`~robustkit.plugins.CardItem`
documents the fields). This module turns a block into numbers and notes; the card has no
per-study code, so a study added by a plug-in shows on the card as the built-ins do.

Example:
    >>> from robustkit.plugins import CardItem
    >>> _expand(CardItem("sensitivity.{class}", "sensitivity {class}"), _Scope(("A", "B"), "B", {}, {}))[0].metric
    'sensitivity.B'
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from robustkit.plugins import CardBlock, CardItem
from robustkit.results import StudyResult
from robustkit.task import Task

__all__ = ["BlockNumber", "resolve_block"]

_FIELD = re.compile(r"\{([^{}]*)\}")
_NUMBER = r"-?[0-9][0-9.eE+-]*"


@dataclass(frozen=True)
class BlockNumber:
    """One resolved number of a block: the study's metric name (without the study) and its label."""

    metric: str
    label: str


@dataclass
class _Scope:
    """What fields are filled from: the outputs, the critical class, data, config, bound numbers."""

    names: tuple[str, ...]
    critical: str | None
    data: Mapping[str, Any]
    config: Mapping[str, Any]
    bound: dict[str, str] = field(default_factory=dict)


def resolve_block(block: CardBlock, study: StudyResult, task: Task) -> tuple[list[BlockNumber], list[str]]:
    """The numbers ``block`` shows for ``study`` (stored metrics only) and the block's notes.

    Args:
        block: the study's declared block.
        study: the stored study result.
        task: the audit's task (its kind decides which items apply; its critical class fills
            ``{critical}`` and orders ``{class}``).

    Returns:
        ``(numbers, notes)``: numbers in declaration order without repeats; notes count the
        numbers an item's ``limit`` left out and the study's checks.
    """
    scope = _Scope(task.names, task.critical, study.data, study.config)
    kind = "exclusive" if task.exclusive else "multilabel"
    numbers: list[BlockNumber] = []
    notes: list[str] = []
    for item in block.items:
        if item.task not in ("any", kind):
            continue
        found, hidden = _resolve(item, study.metrics, scope)
        numbers += [n for n in found if n.metric not in {m.metric for m in numbers}]
        if hidden:
            notes.append(f"{hidden} more '{_plain(item, scope)}' in the full report.")
    notes += _check_note(block, study)
    return numbers, notes


def _resolve(item: CardItem | None, metrics: Mapping[str, float], scope: _Scope) -> tuple[list[BlockNumber], int]:
    """An item's numbers (its fallback's when it has none) and how many its limit left out."""
    while item is not None:
        found: list[BlockNumber] = []
        for concrete in _expand(item, scope):
            found += _matches(concrete, metrics, scope)
        if found:
            return _pick(item, found, metrics)
        item = item.fallback
    return [], 0


def _expand(item: CardItem, scope: _Scope) -> list[CardItem]:
    """The item with every field but ``{*}`` and ``{#NAME}`` filled: one copy per ``{class}`` and
    ``{a|b}`` value; none when a field has no value (no critical class, missing data)."""
    for name in _fields(item.metric):
        values = _values(name, scope)
        if values is None:
            continue
        return [c for v in values for c in _expand(_fill(item, name, v), scope)]
    for name in _fields(item.label):  # a field of the label alone: its value, else nothing
        values = _values(name, scope)
        if values is not None:
            item = _fill(item, name, values[0] if values else "")
    return [item]


def _values(name: str, scope: _Scope) -> list[str] | None:
    """The values of field ``name``; None for the fields matched later (``*``, ``#NAME``)."""
    if name == "*" or name.startswith("#"):
        return None
    if name == "critical":
        return [] if scope.critical is None else [scope.critical]
    if name == "class":
        return sorted(scope.names, key=lambda c: (c != scope.critical, scope.names.index(c)))
    if "|" in name:
        return name.split("|")
    source, _, path = name.partition(".")
    value = _lookup(scope.data if source == "data" else scope.config if source == "config" else {}, path)
    return [] if value is None or value == "" else [str(value)]


def _lookup(obj: Any, path: str) -> Any:
    for key in path.split("."):
        if not isinstance(obj, Mapping) or key not in obj:
            return None
        obj = obj[key]
    return obj


def _fill(item: CardItem, name: str, value: str) -> CardItem:
    token = "{" + name + "}"
    return replace(item, metric=item.metric.replace(token, value), label=item.label.replace(token, value))


def _fields(text: str) -> list[str]:
    return _FIELD.findall(text)


def _matches(item: CardItem, metrics: Mapping[str, float], scope: _Scope) -> list[BlockNumber]:
    """The stored metrics the pattern matches, labelled; a ``{#NAME}`` binds to the smallest
    finite number present the first time it is met in a block."""
    regex = re.compile("^" + "".join(_regex_part(part, scope) for part in _split(item.metric)) + "$")
    hits = [(m, regex.match(m)) for m in metrics]
    found = [(m, h) for m, h in hits if h is not None and _star(h) not in item.exclude]
    numbered = [n for n in _fields(item.metric) if n.startswith("#") and n[1:] not in scope.bound]
    for name in numbered:  # bind: the smallest finite budget
        budgets = [h.group(_group(name)) for _, h in found if math.isfinite(_number(h.group(_group(name))))]
        if not budgets:
            return []
        scope.bound[name[1:]] = min(budgets, key=_number)
        found = [(m, h) for m, h in found if h.group(_group(name)) == scope.bound[name[1:]]]
    return [BlockNumber(m, _label(item.label, h, scope)) for m, h in found]


def _split(pattern: str) -> Iterator[str]:
    """Literal text and ``{field}`` tokens, in order."""
    pos = 0
    for m in _FIELD.finditer(pattern):
        yield pattern[pos:m.start()]
        yield m.group(0)
        pos = m.end()
    yield pattern[pos:]


def _regex_part(part: str, scope: _Scope) -> str:
    if not (part.startswith("{") and part.endswith("}")):
        return re.escape(part)
    name = part[1:-1]
    if name == "*":
        return "(?P<star>.+)"
    if name.startswith("#"):
        bound = scope.bound.get(name[1:])
        return re.escape(bound) if bound is not None else f"(?P<{_group(name)}>{_NUMBER}|inf)"
    return re.escape(part)  # a field without a value stays literal and matches nothing real


def _group(name: str) -> str:
    return "n_" + re.sub(r"\W", "_", name[1:])


def _star(m: re.Match[str]) -> str | None:
    return m.groupdict().get("star")


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.inf


def _label(label: str, m: re.Match[str], scope: _Scope) -> str:
    out = label.replace("{*}", _star(m) or "")
    for name, value in scope.bound.items():
        out = out.replace("{#" + name + "}", value)
    return re.sub(r":\s*$", "", out).strip()  # a label field without a value leaves no dangling colon


def _pick(item: CardItem, found: list[BlockNumber], metrics: Mapping[str, float]) -> tuple[list[BlockNumber], int]:
    """``each``: stored order; ``largest``: by value, finite first; then at most ``limit``."""
    if item.pick == "largest":
        found = sorted(found, key=lambda n: -metrics[n.metric] if math.isfinite(metrics[n.metric]) else math.inf)
    return found[: item.limit], max(0, len(found) - item.limit)


def _plain(item: CardItem, scope: _Scope) -> str:
    """The item's label with its fields filled where they have one value (``{*}`` left out)."""
    expanded = _expand(item, scope)
    label = expanded[0].label if len(expanded) == 1 else item.label
    return re.sub(r"\s+", " ", _FIELD.sub("", label)).strip()


def _check_note(block: CardBlock, study: StudyResult) -> list[str]:
    """``"<checks>: N of M pass; not passed: a (warn), ..."`` over the study's checks (those
    whose name starts with the block's ``check_prefix``; the critical-class reminder is not one
    of a study's own checks and is listed with the card's failed checks)."""
    if block.checks is None:
        return []
    checks = [c for c in study.checks if c.name.startswith(block.check_prefix) and c.name != "critical class"]
    if not checks:
        return [block.no_checks] if block.no_checks else []
    bad = [f"{c.name} ({c.status})" for c in checks if c.status != "pass"]
    label = f"Checks of {study.name}" if block.checks == "Checks" else block.checks
    return [f"{label}: {len(checks) - len(bad)} of {len(checks)} pass"
            + (f"; not passed: {', '.join(bad)}." if bad else ".")]
