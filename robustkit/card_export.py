"""Write the audit card: ``card.html`` and its machine-readable twins.

* ``card.html``: one printed A4 page (two at most), self-contained, no script, a CSP like
  the report's; every number links to its section of ``report.html`` in the same folder.
* ``card.json``: the same content, documented by ``robustkit/schema/card.schema.json``.
* ``card.model_card.json``: Google Model Card Toolkit's JSON (schema v0.0.2:
  ``model_details``, ``quantitative_analysis.performance_metrics`` with ``type``, ``value``,
  ``slice`` and ``confidence_interval``).
* ``card.model-index.yaml``: a Hugging Face ``model-index`` block for a model repository's
  README front matter (written by a tiny emitter: no YAML dependency).

No TensorFlow here: everything comes from results.json and records.npz.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from markupsafe import Markup

from robustkit.card import Card, CardNumber, build_card
from robustkit.report import views
from robustkit.report.render import _environment, _read_template, study_anchor
from robustkit.results import atomic_write_text

__all__ = ["CARD_FILE", "CARD_SCHEMA_VERSION", "card_html", "card_json", "mct_json", "model_index_yaml", "write_card"]

CARD_FILE = "card.html"
CARD_SCHEMA_VERSION = "2.0"  # 2.0: acceptance rows are robustkit.judge outcomes


def write_card(audit_dir: str | Path, *, out: str | Path | None = None, policy: str | Path | None = None,
               baseline: str | Path | None = None, intended_use: str | Path | None = None) -> dict[str, Path]:
    """Build the card of an audit folder and write its four files; return their paths.

    Args:
        audit_dir: the audit folder (results.json, records.npz).
        out: the HTML file to write (default ``audit_dir/card.html``); the exports go beside it.
        policy, baseline, intended_use: as :func:`robustkit.card.build_card`.
    """
    card = build_card(audit_dir, policy=policy, baseline=baseline, intended_use=intended_use)
    html_path = Path(out) if out is not None else Path(audit_dir) / CARD_FILE
    if html_path.is_dir():
        html_path = html_path / CARD_FILE
    stem = html_path.with_suffix("")
    paths = {"html": html_path, "json": stem.with_suffix(".json"),
             "mct": Path(f"{stem}.model_card.json"), "model_index": Path(f"{stem}.model-index.yaml")}
    atomic_write_text(paths["html"], card_html(card))
    atomic_write_text(paths["json"], json.dumps(card_json(card), indent=2, allow_nan=False) + "\n")
    atomic_write_text(paths["mct"], json.dumps(mct_json(card), indent=2, allow_nan=False) + "\n")
    atomic_write_text(paths["model_index"], model_index_yaml(card))
    return paths


# ---------------------------------------------------------------- card.json


def card_json(card: Card) -> dict[str, Any]:
    """The card as JSON values (see ``robustkit/schema/card.schema.json``)."""
    return {
        "card_schema_version": CARD_SCHEMA_VERSION,
        "verdict": card.verdict,
        "report": "report.html",
        "provenance": card.provenance,
        "model": card.model,
        "intended_use": card.intended_use,
        "data": card.data,
        "acceptance": [r.to_json() for r in card.acceptance],
        "sections": {k: [n.to_json() for n in v] for k, v in card.sections.items()},
        "notes": card.notes,
        "changes": [_change(d) for d in card.changes],
        "failed_checks": card.failed_checks,
        "limitations": card.limitations,
    }


def _finite(v: Any) -> float | None:
    return None if v is None or not math.isfinite(float(v)) else float(v)


def _change(d: Any) -> dict[str, Any]:
    return {"metric": d.metric, "baseline": _finite(d.baseline), "candidate": _finite(d.candidate),
            "delta": _finite(d.delta), "test": d.test, "p_adjusted": _finite(d.p_adjusted), "verdict": d.verdict,
            "flips": None if d.discordant is None else {"baseline_only": int(d.discordant[0]),
                                                         "candidate_only": int(d.discordant[1])}}


# ---------------------------------------------------------------- Model Card Toolkit and Hugging Face


def _slice(n: CardNumber) -> str:
    """MCT's ``slice``: the part of the metric name after study and metric root, or ``overall``."""
    parts = n.metric.split(".")
    return ".".join(parts[2:]) or "overall"


def mct_json(card: Card) -> dict[str, Any]:
    """The card as a Model Card Toolkit model card (schema v0.0.2; values are strings there)."""
    metrics = []
    for n in card.numbers():
        entry: dict[str, Any] = {"type": n.metric.split(".", 1)[-1] if _slice(n) == "overall" else ".".join(n.metric.split(".")[:2]),
                                 "value": f"{n.value:.6g}", "slice": _slice(n)}
        if n.interval is not None:
            entry["confidence_interval"] = {"lower_bound": f"{n.interval[0]:.6g}", "upper_bound": f"{n.interval[1]:.6g}"}
        metrics.append(entry)
    m, d = card.model, card.data
    return {
        "schema_version": "0.0.2",
        "model_details": {"name": m["name"], "overview": f"robustkit audit card of {m['name']} ({', '.join(m['classes'])})",
                          "version": {"name": m["fingerprint"][:19] or "unknown"}},
        "model_parameters": {"model_architecture": m["architecture"],
                             "input_format": f"image {'x'.join(str(s) for s in m['input_shape'])} in [0, 1]",
                             "output_format": f"probabilities over {', '.join(m['classes'])}",
                             "data": [{"name": d["name"], "description": f"{d['n_samples']} evaluation images; "
                                       + ", ".join(f"{k}: {v}" for k, v in d["class_counts"].items())}]},
        "quantitative_analysis": {"performance_metrics": metrics},
        "considerations": {"use_cases": [{"description": card.intended_use["text"]}],
                           "limitations": [{"description": t} for t in card.limitations]},
    }


def _yaml_str(text: Any) -> str:
    """A YAML double-quoted scalar (JSON string syntax is valid YAML)."""
    return json.dumps(str(text), ensure_ascii=False)


def model_index_yaml(card: Card) -> str:
    """A Hugging Face ``model-index`` block (README front matter) with the card's numbers."""
    m, d = card.model, card.data
    lines = ["model-index:", f"- name: {_yaml_str(m['name'])}", "  results:", "  - task:",
             "      type: image-classification", "      name: Image Classification", "    dataset:",
             f"      name: {_yaml_str(d['name'])}", "      type: imagefolder",
             f"      revision: {_yaml_str(d['fingerprint'][:19] or 'unknown')}", "    metrics:"]
    for n in card.numbers():
        lines += [f"    - type: {_yaml_str(n.metric)}", f"      value: {n.value:.6g}" if math.isfinite(n.value)
                  else "      value: .nan", f"      name: {_yaml_str(n.label)}", "      verified: false"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- card.html


def _cell(n: CardNumber) -> dict[str, str]:
    return {"label": n.label, "metric": n.metric, "value": views.fmt(n.value, n.metric),
            "interval": views.fmt_interval(n.interval, n.metric), "arrow": views.arrow(n.direction),
            "link": f"report.html#{n.anchor}", "derived": "" if n.source == "results.json" else n.source}


def _per_class(nums: Sequence[CardNumber], classes: Sequence[str]) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
    """Split performance into overall numbers and a per-class table (sensitivity, specificity)."""
    overall: list[dict[str, str]] = []
    rows: dict[str, dict[str, Any]] = {}
    for n in nums:
        kind, _, cls = n.label.partition(" ")
        if kind in ("sensitivity", "specificity", "AUROC") and cls in classes:
            rows.setdefault(cls, {"class": cls})[kind] = _cell(n)
        else:
            overall.append(_cell(n))
    return overall, list(rows.values())


def card_html(card: Card) -> str:
    """The card as one self-contained HTML document (no script; CSP as in the report)."""
    env = _environment()
    overall, per_class = _per_class(card.sections.get("performance", []), card.model["classes"])
    sections = [{"key": k, "title": card.titles.get(k, k), "rows": [_cell(n) for n in v], "notes": card.notes.get(k, [])}
                for k, v in card.sections.items() if k != "performance" and (v or card.notes.get(k))]
    return env.get_template("card.html.j2").render(
        css=Markup(_read_template("card.css")), card=card, verdict=card.verdict,
        acceptance=[_acceptance_row(r) for r in card.acceptance], overall=overall, per_class=per_class,
        multilabel=card.model.get("output_kind") == "multilabel", performance_notes=card.notes.get("performance", []),
        sections=sections, changes=[_change_row(d) for d in card.changes],
        title=f"Audit card \u2014 {card.model['name']}")


def _acceptance_row(o: Any) -> dict[str, str]:
    """One judge outcome as the acceptance table shows it (the same fields as gate's line)."""
    regression = o.baseline is not None
    diff = ""
    if regression and o.difference is not None:
        diff = f"baseline {views.fmt(o.baseline, o.metric)}, difference {o.difference:+.4g}"
        if o.difference_interval is not None:
            diff += f" [{o.difference_interval[0]:+.4g}, {o.difference_interval[1]:+.4g}]"
        diff += f" ({o.method})"
    judged = o.judged if o.judged == "point" or not math.isfinite(o.judged_value) else f"{o.judged} {o.judged_value:.4g}"
    return {"rule": str(o.rule), "title": o.title, "metric": o.metric, "value": views.fmt(o.value, o.metric),
            "interval": views.fmt_interval(o.interval, o.metric), "threshold": f"{o.form} {o.threshold:g}",
            "judged": judged, "status": o.status, "css": {"PASS": "pass", "FAIL": "fail"}.get(o.status, "warn"),
            "reason": o.reason, "difference": diff, "link": f"report.html#{study_anchor(o.metric.split('.')[0])}"}


def _change_row(d: Any) -> dict[str, str]:
    flips = "" if d.discordant is None else f"{d.discordant[0]} lost, {d.discordant[1]} gained"
    return {"metric": d.metric, "baseline": views.fmt(d.baseline, d.metric), "candidate": views.fmt(d.candidate, d.metric),
            "delta": f"{d.delta:+.3f}", "p": "" if d.p_adjusted is None else f"{d.p_adjusted:.3g}",
            "verdict": d.verdict, "flips": flips, "link": f"report.html#{study_anchor(d.metric.split('.')[0])}"}
