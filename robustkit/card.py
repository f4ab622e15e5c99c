"""The audit card: the one page a reviewer signs, built from an audit's stored results.

:func:`build_card` reads an :class:`~robustkit.results.AuditResult` (``results.json`` and
``records.npz``; no TensorFlow, no model) and returns a :class:`Card`: the model and its
intended use, the data, the acceptance table of a policy as :func:`robustkit.judge.judge`
decides it (the same outcomes as ``robustkit gate``), per-class sensitivity and specificity, calibration before and after scaling, the
worst acquisition shift, adversarial robustness with the attack's honesty checks,
out-of-distribution detection and the worst slice (when those studies ran), saliency
sanity, the significant changes against a baseline, the checks that did not pass, and the
limitations. Every number is a :class:`CardNumber` that names the metric it comes from and
the section of ``report.html`` that shows it. :mod:`robustkit.card_export` renders and
writes it.

Example:
    >>> card = build_card("reports/demo", policy="policy.toml")  # doctest: +SKIP
    >>> card.acceptance[0].status  # doctest: +SKIP
    'PASS'
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from robustkit.card_blocks import resolve_block
from robustkit.compare import MetricDelta, check_comparable, paired_deltas
from robustkit.errors import ConfigError
from robustkit.judge import Outcome, judge
from robustkit.plugins import BUILTIN_PLUGINS, plugin
from robustkit.policy import Policy, load_policy
from robustkit.report.render import study_anchor
from robustkit.results import AuditResult, load_results
from robustkit.task import Task

__all__ = ["KNOWN_STUDIES", "Card", "CardNumber", "audit_task", "build_card"]

#: the studies a full audit runs; one that is absent is a limitation of the card
KNOWN_STUDIES = ("clean", "perturbation", "noise", "adversarial", "calibration", "saliency", "slices", "ood")
_BOOT, _BOOT_SEED = 1000, 0


@dataclass(frozen=True)
class CardNumber:
    """One number on the card and where it comes from.

    Attributes:
        metric: the full dotted metric name in results.json (``clean.sensitivity.<class>``); for
            a number derived on the card, the name it would have (``clean.specificity.NORMAL``).
        label: what the card calls it.
        value: the point estimate.
        interval: the 95% interval ``(low, high)``, or None.
        direction: ``higher``, ``lower`` or ``none``.
        anchor: the id of its section in report.html.
        source: ``results.json``, or how a derived number was computed.
    """

    metric: str
    label: str
    value: float
    interval: tuple[float, float] | None
    direction: str
    anchor: str
    source: str = "results.json"

    def to_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "label": self.label, "value": _j(self.value),
                "interval": None if self.interval is None else [_j(v) for v in self.interval],
                "direction": self.direction, "link": f"report.html#{self.anchor}", "source": self.source}


@dataclass(frozen=True)
class Card:
    """Everything on the audit card; ``sections`` maps a section key to its numbers."""

    model: dict[str, Any]
    data: dict[str, Any]
    intended_use: dict[str, Any]
    acceptance: list[Outcome]
    sections: dict[str, list[CardNumber]]
    notes: dict[str, list[str]]
    changes: list[MetricDelta]
    failed_checks: list[dict[str, str]]
    limitations: list[str]
    provenance: dict[str, Any] = field(default_factory=dict)
    #: each section's heading, from the studies' card blocks
    titles: dict[str, str] = field(default_factory=dict)

    def numbers(self) -> list[CardNumber]:
        """Every number of every section, in card order."""
        return [n for nums in self.sections.values() for n in nums]

    @property
    def verdict(self) -> str:
        """``FAIL`` if an outcome fails, else ``PASS`` (skipped ones are not judged), ``NO POLICY``."""
        if not self.acceptance:
            return "NO POLICY"
        return "FAIL" if any(o.status == "FAIL" for o in self.acceptance) else "PASS"


# ---------------------------------------------------------------- entry point


def build_card(
    audit: AuditResult | str | Path,
    *,
    policy: Policy | str | Path | None = None,
    baseline: AuditResult | str | Path | None = None,
    intended_use: str | Path | None = None,
    alpha: float = 0.05,
    seed: int = 0,
) -> Card:
    """Build the audit card of an audit.

    Args:
        audit: an :class:`AuditResult` or an audit folder.
        policy: a policy (TOML file or :class:`~robustkit.policy.Policy`) for the acceptance
            table, judged by :func:`robustkit.judge.judge`; none gives an empty table and a limitation.
        baseline: the audit of the released checkpoint; its significant changes are listed.
        intended_use: a Markdown/text file with the intended use and out-of-scope inputs.
        alpha: significance level of the baseline comparison (a policy's own alpha wins).
        seed: seed of the bootstrap resampling (specificity intervals, paired tests).

    Raises:
        ConfigError: an unreadable intended-use file, a bad policy, an incomparable baseline.
    """
    result = audit if isinstance(audit, AuditResult) else load_results(audit)
    base = baseline if baseline is None or isinstance(baseline, AuditResult) else load_results(baseline)
    pol = policy if policy is None or isinstance(policy, Policy) else load_policy(policy)
    if base is not None:
        check_comparable(base, result, "baseline", "audit")
    sections, notes, titles = _sections(result)
    rows = judge(result, pol, baseline=base, seed=seed).outcomes() if pol is not None else []
    changes = _changes(result, base, sections, pol.alpha if pol else alpha, seed)
    use = _intended_use(intended_use)
    card = Card(model=_model(result), data=_data(result), intended_use=use, acceptance=rows,
                sections=sections, notes=notes, changes=changes, failed_checks=_failed_checks(result),
                limitations=[], provenance=_provenance(result, pol, base), titles=titles)
    return replace(card, limitations=_limitations(result, card, pol, base))


# ---------------------------------------------------------------- model, data, intended use


def _model(r: AuditResult) -> dict[str, Any]:
    m = r.model
    name = m.get("name") or (Path(str(m["path"])).name if m.get("path") else "model")
    return {"name": str(name), "fingerprint": str(m.get("fingerprint", "")),
            "architecture": str(m.get("arch") or m.get("architecture") or "not recorded"),
            "classes": list(r.class_names), "input_shape": list(m.get("input_shape") or []),
            "parameters": m.get("parameters"), "output_kind": m.get("output_kind"),
            "critical_class": r.task.get("critical_class"), "setup": model_setup_lines(m)}


def model_setup_lines(m: dict[str, Any]) -> list[str]:
    """The model's declared or assumed setup in words: preprocessing, class order, the input
    probe's finding (issue #25); an audit from before they were recorded says so."""
    pre = m.get("preprocess")
    if not pre:
        return [f"preprocessing: {m.get('input_scale', 'unit')} (recorded before the declared setup existed)"]
    lines = [f"preprocessing {pre['preset']}: {pre['formula']} ({pre['source']})",
             f"class order: {m.get('class_order_source', 'not recorded')}"]
    probe = m.get("input_probe") or {}
    if probe.get("skipped"):
        lines.append(f"input probe: skipped ({probe['skipped']})")
    elif probe:
        lines.append(f"input probe ({probe['n']} images, {probe['metric']}): {probe['message']}")
    return lines


def is_phantom(dataset: dict[str, Any]) -> bool:
    """Whether the audited data is robustkit's phantom (marked by ``phantom.json``)."""
    if dataset.get("phantom"):
        return True
    root = dataset.get("root")
    return bool(root) and (Path(str(root)) / "phantom.json").is_file()


def _data(r: AuditResult) -> dict[str, Any]:
    d = r.dataset
    counts = d.get("class_counts") or {c: int(np.sum(r.labels == k)) for k, c in enumerate(r.class_names)}
    slices = r.studies["slices"].data.get("slice_defs", {}) if "slices" in r.studies else {}
    return {"name": Path(str(d.get("root", "data"))).name or "data", "fingerprint": str(d.get("fingerprint", "")),
            "n_samples": int(d.get("n_samples", len(r.ids))), "class_counts": {str(k): int(v) for k, v in counts.items()},
            "sources": list(d.get("metadata_columns") or []), "n_slices": len(slices),
            "excluded": int(d.get("n_excluded") or 0), "phantom": is_phantom(d),
            "metadata_missing": {str(k): int(v) for k, v in (d.get("metadata_missing") or {}).items() if v}}


def _intended_use(path: str | Path | None) -> dict[str, Any]:
    if path is None:
        return {"provided": False, "source": None,
                "text": "MISSING: no intended-use statement was given (robustkit card --intended-use FILE.md). "
                        "Without it this card does not say which patients, settings and inputs the model is for."}
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--intended-use {p}: expected a readable UTF-8 text file, got {type(exc).__name__}: {exc}.") from exc
    if not text:
        raise ConfigError(f"--intended-use {p}: expected a statement of intended use, got an empty file.")
    return {"provided": True, "source": p.name, "text": text}


# ---------------------------------------------------------------- numbers


def _number(r: AuditResult, metric: str, label: str) -> CardNumber | None:
    """The stored metric ``metric`` as a card number; None when the audit lacks it."""
    study, _, rest = metric.partition(".")
    if study not in r.studies or rest not in r.studies[study].metrics:
        return None
    iv = r.studies[study].intervals.get(rest)
    interval = (float(iv[0]), float(iv[1])) if iv is not None else None
    return CardNumber(metric, label, float(r.studies[study].metrics[rest]), interval,
                      r.direction(metric), study_anchor(study))


def _present(items: Iterable[CardNumber | None]) -> list[CardNumber]:
    return [n for n in items if n is not None]


def audit_task(r: AuditResult) -> Task:
    """The audit's task model (:mod:`robustkit.task`), as stored in results.json."""
    return Task.from_results(r.model, r.class_names, r.task)


def _sections(r: AuditResult) -> tuple[dict[str, list[CardNumber]], dict[str, list[str]], dict[str, str]]:
    """Every study's declared card block (its plug-in record's ``card``), resolved against the
    audit's task: ``(numbers by section, notes by section, section titles)``. A study that ran
    and declares no block, or whose block shows nothing, is named in a note of its own."""
    task = audit_task(r)
    # every built-in section, empty when its study did not run (card.json keeps the same keys)
    blocks = [p.card for p in BUILTIN_PLUGINS if p.card is not None]
    sections: dict[str, list[CardNumber]] = {b.section or "": [] for b in blocks}
    titles: dict[str, str] = {b.section or "": b.title or "" for b in blocks}
    notes: dict[str, list[str]] = {"performance": _threshold_notes(r)} if not task.exclusive else {}
    for name, study in r.studies.items():
        record = plugin(name)
        block = record.card if record is not None else None
        if study.status != "ok":
            continue
        key = (block.section if block is not None else None) or name
        titles.setdefault(key, (block.title if block is not None else None) or name)
        found, block_notes = resolve_block(block, study, task) if block is not None else ([], [])
        numbers = _present(_number(r, f"{name}.{n.metric}", n.label) for n in found)
        sections.setdefault(key, []).extend(numbers)
        notes.setdefault(key, []).extend(block_notes)
        if not numbers:
            notes[key].append(f"Study '{name}' ran but shows no number on the card "
                              f"({'its plug-in declares no card block' if block is None else 'none of its declared metrics is stored'}); "
                              "see the full report.")
    return sections, {k: v for k, v in notes.items() if v}, titles


def _threshold_notes(r: AuditResult) -> list[str]:
    """How the per-finding thresholds of sensitivity and specificity were set."""
    given = r.model.get("thresholds") or {}
    if not given:
        return []
    values = ", ".join(f"{f} {float(t):.3g}" for f, t in given.items())
    source = str(r.model.get("threshold_source") or "source not recorded")
    return [f"Sensitivity and specificity at the thresholds {values}: {source}."]


# ---------------------------------------------------------------- baseline, checks, limitations


def _changes(r: AuditResult, base: AuditResult | None, sections: dict[str, list[CardNumber]],
             alpha: float, seed: int) -> list[MetricDelta]:
    """The card's metrics that changed significantly against the baseline (paired tests, Holm)."""
    if base is None:
        return []
    names = [n.metric for nums in sections.values() for n in nums if n.source == "results.json"]
    names = [m for m in dict.fromkeys(names) if m in base.metrics() and r.direction(m) in ("higher", "lower")]
    if not names:
        return []
    deltas = paired_deltas(base, r, names, alpha=alpha, correction="holm", n_boot=_BOOT, seed=seed)
    return [d for d in deltas if d.significant]


def _failed_checks(r: AuditResult) -> list[dict[str, str]]:
    order = {"fail": 0, "warn": 1}
    rows = [{"study": s, "check": c.name, "status": c.status, "detail": c.detail,
             "link": f"report.html#{study_anchor(s)}"} for s, c in r.checks() if c.status != "pass"]
    return sorted(rows, key=lambda x: order.get(x["status"], 2))


def _limitations(r: AuditResult, card: Card, pol: Policy | None, base: AuditResult | None) -> list[str]:
    out = []
    if card.data["phantom"]:
        out.append("The audited images are robustkit's synthetic phantom, not patient radiographs: the numbers "
                   "show that the pipeline works, not how the model performs on real patients.")
    if not card.intended_use["provided"]:
        out.append("No intended-use statement was given; the scope of these results is undefined.")
    for said in r.model.get("assumptions") or []:
        out.append(f"Assumed, not declared: {said}; every number depends on it.")
    for s in KNOWN_STUDIES:
        if s not in r.studies:
            out.append(f"Study '{s}' was not run: {_NOT_RUN.get(s, 'its results are missing')}.")
        elif r.studies[s].status != "ok":
            out.append(f"Study '{s}' failed ({r.studies[s].error or 'no error recorded'}); its numbers are missing.")
    for s, c in r.checks():
        if c.status != "pass" and ("not measured" in c.detail or "skipped" in c.detail):
            out.append(f"{s}: {c.name}: {c.detail}")
    no_iv = [n.metric for n in card.numbers() if n.interval is None and n.direction != "none"]
    if no_iv:
        out.append(f"No 95% interval for {len(no_iv)} number(s) ({', '.join(no_iv[:4])}{', ...' if len(no_iv) > 4 else ''}).")
    if pol is None:
        out.append("No acceptance policy was given (--policy): nothing on this card is judged against a threshold.")
    elif any(o.status == "SKIPPED" for o in card.acceptance):
        out.append("Some acceptance rules were not judged: they need a baseline audit (--baseline), none was given.")
    if base is None:
        out.append("No baseline audit was given (--baseline): changes since the last release are not shown.")
    return out


_NOT_RUN = {
    "perturbation": "robustness to acquisition shift (exposure, blur, JPEG, geometry) is unmeasured",
    "noise": "robustness to image noise is unmeasured",
    "adversarial": "adversarial robustness is unmeasured",
    "calibration": "whether the probabilities can be trusted is unmeasured",
    "saliency": "whether the model looks at the lungs is unmeasured",
    "slices": "performance per site, view, sex and age group (subgroups) is unmeasured",
    "ood": "behaviour on images outside the model's scope (out-of-distribution) is unmeasured",
    "clean": "there is no baseline performance",
}


def _provenance(r: AuditResult, pol: Policy | None, base: AuditResult | None) -> dict[str, Any]:
    return {"robustkit_version": r.robustkit_version, "audit_created": r.created,
            "profile": r.config.get("profile"), "seed": r.config.get("seed"),
            "studies": list(r.studies), "policy": pol.source if pol else None,
            "baseline": None if base is None else {"model": _model(base)["name"],
                                                   "fingerprint": str(base.model.get("fingerprint", ""))}}


def _j(v: float) -> float | str:
    f = float(v)
    return f if math.isfinite(f) else ("nan" if math.isnan(f) else ("inf" if f > 0 else "-inf"))
