"""An acceptance policy: a TOML list of rules over an audit's flat metric map.

A policy is a list of ``[[rule]]`` tables and two optional top-level keys::

    judge = "bound"                      # "bound" (default) or "point"; a rule may override it
    alpha = 0.05                         # level of the paired tests and one-sided bounds
    [[rule]]
    metric = "clean.accuracy"            # full dotted name; fnmatch wildcards allowed
    min = 0.90                           # lower bound of the 95% interval >= 0.90
    [[rule]]
    metric = "calibration.ece"
    max = 0.05                           # upper bound of the 95% interval <= 0.05
    [[rule]]
    metric = "clean.sensitivity.COVID-19"
    noninferior = 0.02                   # against --baseline: the drop's one-sided upper bound < 0.02
    [[rule]]
    metric = "clean.accuracy"
    max_drop = 0.01                      # against --baseline: fail on a significant drop > 0.01
    judge = "point"                      # per-rule override (min/max only)
    name = "..."                         # optional, shown in CI and on the card
    description = "..."                  # optional

How the rules are judged is :mod:`robustkit.judge`'s business; this module only reads and
validates the file. Errors name the rule and the file (exit 2). No TensorFlow here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robustkit.config import read_toml
from robustkit.errors import ConfigError, check_choice, check_range, param_error

__all__ = ["FORMS", "JUDGES", "REGRESSION_FORMS", "Policy", "Rule", "load_policy", "parse_policy"]

#: the bounds a rule may set, in the order outcomes are listed
FORMS = ("min", "max", "max_drop", "noninferior")
#: the forms that compare with a baseline audit
REGRESSION_FORMS = ("max_drop", "noninferior")
#: what a ``min``/``max`` is judged on: the 95% interval's bound, or the point estimate
JUDGES = ("bound", "point")
_RULE_KEYS = ("metric", *FORMS, "judge", "name", "description")
_TOP_KEYS = ("rule", "alpha", "judge")


@dataclass(frozen=True)
class Rule:
    """One policy rule; ``index`` counts from 1 in file order; ``judge`` is resolved (never None)."""

    index: int
    metric: str
    min: float | None = None
    max: float | None = None
    max_drop: float | None = None
    noninferior: float | None = None
    judge: str = "bound"
    name: str = ""
    description: str = ""

    def bounds(self) -> list[tuple[str, float]]:
        """The forms this rule sets and their thresholds, in :data:`FORMS` order."""
        return [(f, float(getattr(self, f))) for f in FORMS if getattr(self, f) is not None]

    @property
    def needs_baseline(self) -> bool:
        return any(getattr(self, f) is not None for f in REGRESSION_FORMS)

    @property
    def title(self) -> str:
        """The rule's name, or a description of it built from its bounds."""
        if self.name:
            return self.name
        words = {"min": ">= {:g}", "max": "<= {:g}", "max_drop": "no significant drop > {:g}",
                 "noninferior": "non-inferior within {:g}"}
        return f"{self.metric} " + ", ".join(words[f].format(t) for f, t in self.bounds())


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...]
    alpha: float = 0.05
    source: str = "policy"
    judge: str = "bound"


def load_policy(path: str | Path) -> Policy:
    """Read and validate a TOML policy file."""
    return parse_policy(read_toml(path, what="a policy file"), source=str(Path(path)))


def parse_policy(obj: Mapping[str, Any], *, source: str = "policy") -> Policy:
    """Validate a parsed policy (``{"rule": [...], "alpha": 0.05, "judge": "bound"}``)."""
    unknown = sorted(set(obj) - set(_TOP_KEYS))
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r}; expected only [[rule]] tables, "
                          "an optional alpha and an optional judge.")
    alpha = obj.get("alpha", 0.05)
    check_range("alpha", alpha, low=0.0, high=0.5, low_open=True, high_open=True, where=source)
    judge = obj.get("judge", "bound")
    check_choice("judge", judge, JUDGES, where=source)
    rules = obj.get("rule")
    if not isinstance(rules, list) or not rules:
        raise ConfigError(f"{source}: expected at least one [[rule]] table, got {type(rules).__name__ if rules is not None else 'none'}.")
    return Policy(tuple(_rule(i + 1, r, source, judge) for i, r in enumerate(rules)), float(alpha), source, judge)


def _rule(index: int, raw: Any, source: str, default_judge: str) -> Rule:
    where = f"rule {index} of {source}"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a [[rule]] table, got {raw!r}.")
    unknown = sorted(set(raw) - set(_RULE_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; expected some of {', '.join(_RULE_KEYS)}.")
    metric = raw.get("metric")
    if not isinstance(metric, str) or not metric.strip():
        raise param_error("metric", "a dotted metric name such as 'clean.accuracy'", metric, where=where)
    for key in ("name", "description"):
        if key in raw and not isinstance(raw[key], str):
            raise param_error(key, "a string", raw[key], where=where)
    judge = raw.get("judge", default_judge)
    check_choice("judge", judge, JUDGES, where=where)
    bounds = {k: raw.get(k) for k in FORMS}
    for key, value in bounds.items():
        if value is not None:
            check_range(key, value, low=0.0 if key in REGRESSION_FORMS else None, where=where)
    if all(v is None for v in bounds.values()):
        raise ConfigError(f"{where} ({metric!r}): expected at least one of {', '.join(FORMS)}, got none.")
    if bounds["min"] is not None and bounds["max"] is not None and bounds["min"] > bounds["max"]:
        raise ConfigError(f"{where} ({metric!r}): expected min <= max, got min {bounds['min']} > max {bounds['max']}.")
    lo, hi, drop, margin = (None if v is None else float(v) for v in bounds.values())
    return Rule(index, metric.strip(), lo, hi, drop, margin, judge=str(judge), name=str(raw.get("name", "")),
                description=str(raw.get("description", "")))
