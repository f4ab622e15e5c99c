"""Gate a checkpoint in CI: the acceptance judge's outcomes -> exit code, text, JUnit, annotations.

The policy format is :mod:`robustkit.policy`'s, and every rule is decided by
:func:`robustkit.judge.judge` (the same call the audit card makes), so CI and the signed
card never disagree. This module only prints the outcomes: a text summary, JUnit XML (one
``testcase`` per rule; a failing rule is a ``<failure>``, a rule skipped for want of a
baseline a ``<skipped>``) and GitHub Actions annotations (``::error`` per failing rule,
``::warning`` per skipped rule, ``::notice`` per pass). Each carries every outcome's line
(:meth:`robustkit.judge.Outcome.line`): the metric, its value and 95% interval, the form
and threshold, what was judged, the status and the reason.

Exit codes: 0 when no rule fails (skipped rules do not fail the gate unless
``require_baseline``), 1 when one does, 2 for an input error (:mod:`robustkit.judge`).
No TensorFlow here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from robustkit.judge import Judgement, Outcome, RuleOutcome, judge
from robustkit.policy import Policy, Rule, load_policy, parse_policy
from robustkit.results import AuditResult

__all__ = ["GateReport", "Outcome", "Policy", "Rule", "RuleOutcome", "gate", "github_error", "load_policy",
           "parse_policy"]


@dataclass(frozen=True)
class GateReport:
    """The judge's outcomes as CI reads them; ``exit_code`` is the judgement's."""

    judgement: Judgement

    @property
    def rules(self) -> list[RuleOutcome]:
        return self.judgement.rules

    @property
    def passed(self) -> bool:
        return self.judgement.exit_code == 0

    @property
    def exit_code(self) -> int:
        return self.judgement.exit_code

    def text(self) -> str:
        """One line per rule, its outcomes' lines indented under it, and the summary."""
        lines = []
        for r in self.rules:
            lines.append(f"{r.status:<7} rule {r.rule.index}: {r.rule.title}")
            lines.extend(f"        {o.line()}" for o in r.outcomes)
        lines.append("gate: " + self.judgement.summary())
        return "\n".join(lines)

    def github(self) -> str:
        """GitHub Actions workflow commands, one per rule (every outcome line in its message)."""
        kinds = {"PASS": "notice", "FAIL": "error", "SKIPPED": "warning"}
        return "\n".join(f"::{kinds[r.status]} title={_gh_prop(f'robustkit gate: {r.status} rule {r.rule.index}: {r.rule.title}')}"
                         f"::{_gh_data(_detail(r.outcomes))}" for r in self.rules)

    def junit(self) -> str:
        """JUnit XML: one ``testsuite``, one ``testcase`` per rule; failures and skips counted."""
        n, failures, skipped = len(self.rules), self.judgement.count("FAIL"), self.judgement.count("SKIPPED")
        suite = ET.Element("testsuite", name="robustkit.gate", tests=str(n), failures=str(failures), errors="0",
                           skipped=str(skipped))
        for r in self.rules:
            case = ET.SubElement(suite, "testcase", classname="robustkit.gate", name=f"rule {r.rule.index}: {r.rule.title}")
            props = ET.SubElement(case, "properties")
            for i, o in enumerate(r.outcomes):
                for key, value in _properties(o).items():
                    ET.SubElement(props, "property", name=f"outcome.{i}.{key}", value=value)
            if r.status == "FAIL":
                ET.SubElement(case, "failure", message=r.reason, type="PolicyViolation").text = _detail(r.outcomes)
            elif r.status == "SKIPPED":
                ET.SubElement(case, "skipped", message=r.reason).text = _detail(r.outcomes)
            ET.SubElement(case, "system-out").text = _detail(r.outcomes)
        root = ET.Element("testsuites", name="robustkit gate", tests=str(n), failures=str(failures),
                          skipped=str(skipped))
        root.append(suite)
        ET.indent(root)
        return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _detail(outcomes: list[Outcome]) -> str:
    return "\n".join(o.line() for o in outcomes)


def _properties(o: Outcome) -> dict[str, str]:
    """An outcome's fields as JUnit properties (strings; empty for none)."""
    return {k: "" if v is None else (", ".join(str(x) for x in v) if isinstance(v, list) else str(v))
            for k, v in o.to_json().items() if k not in ("rule", "title")}


def gate(
    result: AuditResult | str | Path,
    policy: Policy | Mapping[str, Any] | str | Path,
    *,
    baseline: AuditResult | str | Path | None = None,
    require_baseline: bool = False,
    allow_config_mismatch: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
) -> GateReport:
    """Judge an audit against a policy for CI (see :func:`robustkit.judge.judge` for the arguments).

    Raises:
        ConfigError (exit 2): an invalid policy, a rule that matches no metric, a metric
            without an interval under ``judge = "bound"``, an incomparable baseline.
    """
    pol = parse_policy(policy) if isinstance(policy, Mapping) else policy
    return GateReport(judge(result, pol, baseline=baseline, require_baseline=require_baseline,
                            allow_config_mismatch=allow_config_mismatch, n_boot=n_boot, seed=seed))


# ---------------------------------------------------------------- output


def _gh_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _gh_prop(text: str) -> str:
    return _gh_data(text).replace(":", "%3A").replace(",", "%2C")


def github_error(title: str, text: str) -> str:
    """A GitHub Actions ``::error`` workflow annotation line (title and text escaped)."""
    return f"::error title={_gh_prop(title)}::{_gh_data(text)}"
