"""Render a :class:`robustkit.compare.Comparison` into one self-contained ``compare.html``.

The page uses the report's Jinja environment, layout and CSS (``templates/base.html.j2``,
``report.css``): autoescaped, no script, nothing loaded from outside. Curves are found from
the metric names alone: every ``<study>.<root>.<condition>.<number>`` (``accuracy.jpeg.3``,
``robust_accuracy.linf.2``) is a point of the curve ``(study, root, condition)``; a study
whose records hold ``confidence`` and ``correct`` gets an overlaid reliability diagram.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from markupsafe import Markup

from robustkit.compare import COMPARE_HTML, CandidateComparison, Comparison, MetricDelta
from robustkit.errors import param_error
from robustkit.metrics.calibration import reliability_bins
from robustkit.report import figures
from robustkit.report.render import _environment, _read_template
from robustkit.report.views import fmt
from robustkit.results import AuditResult, atomic_write_text

__all__ = ["comparison_html", "render_comparison"]

_POINT = re.compile(r"^(?P<study>[^.]+)\.(?P<root>[^.]+)\.(?P<cond>.+)\.(?P<x>-?\d+(?:\.\d+)?)$")
_MAX_CONDITION_FIGURES = 12
_SIGNIFICANT = ("regression", "improvement", "changed")

_CSS = """
/* compare page */
table.deltas { width: 100%; }
table.deltas td:first-child, table.deltas th:first-child { min-width: 16em; word-break: normal; overflow-wrap: anywhere; }
tr.verdict-regression td { background: var(--fail-bg); }
tr.verdict-improvement td { background: var(--pass-bg); }
td.verdict { white-space: nowrap; font-weight: 600; }
tr.verdict-regression td.verdict { color: var(--fail); }
tr.verdict-improvement td.verdict { color: var(--pass); }
tr.verdict-not-testable td.verdict, tr.verdict-unchanged td.verdict { color: var(--muted); font-weight: normal; }
.figures { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 1rem; }
.figures svg { max-width: 100%; height: auto; }
.counts { display: flex; flex-wrap: wrap; gap: 0.5rem 1.2rem; margin: 0.4rem 0 0.8rem; }
"""


def render_comparison(comparison: Comparison, path: str | Path) -> Path:
    """Write ``compare.html`` to ``path`` (a file, or a folder that gets ``compare.html``)."""
    if not isinstance(comparison, Comparison):
        raise param_error("comparison", "a Comparison from robustkit.compare.compare", type(comparison).__name__,
                          where="render_comparison")
    target = Path(path)
    if target.is_dir() or not target.suffix:
        target = target / COMPARE_HTML
    atomic_write_text(target, comparison_html(comparison))
    return target


def comparison_html(comparison: Comparison) -> str:
    """Return the full HTML document of a comparison."""
    env = _environment()
    findings = list(comparison.baseline.class_names) if comparison.baseline.targets is not None else []
    cands = [_candidate(c, i, findings) for i, c in enumerate(comparison.candidates)]
    sections = [_toc("how-to-read", "How to read"), _toc("models", "Models")]
    sections += [_toc(c["anchor"], f"Deltas: {c['label']}") for c in cands]
    sections.append(_toc("curves", "Curves"))
    return env.get_template("compare.html.j2").render(
        css=Markup(_read_template("report.css") + _CSS),
        title="robustkit comparison \u2014 " + " vs ".join([comparison.baseline_label] + [c.label for c in comparison.candidates]),
        sections=sections,
        alpha=fmt(comparison.alpha),
        level=f"{100 * (1 - comparison.alpha):g}",
        correction=comparison.correction,
        n_boot=comparison.n_boot,
        models=_models(comparison),
        mismatch=comparison.allow_config_mismatch and any(c.config_mismatches for c in comparison.candidates),
        candidates=cands,
        multilabel=bool(findings),
        figures=_figures(comparison),
    )


def _toc(anchor: str, name: str) -> dict[str, Any]:
    return {"anchor": anchor, "name": name, "ok": True, "status": ""}


# ---------------------------------------------------------------- tables


def _models(cmp: Comparison) -> list[dict[str, str]]:
    audits = [(cmp.baseline_label, "baseline", cmp.baseline)] + [(c.label, "candidate", c.result) for c in cmp.candidates]
    return [
        {
            "label": label, "role": role,
            "name": str(r.model.get("name") or "\u2014"),
            "fingerprint": _short(r.model.get("fingerprint")),
            "arch": str(r.model.get("arch") or "\u2014"),
            "data": _short(r.dataset.get("fingerprint")),
            "n": fmt(len(r.ids), "n_samples"),
            "created": r.created or "\u2014",
            "studies": ", ".join(r.studies),
        }
        for label, role, r in audits
    ]


def _candidate(c: CandidateComparison, i: int, findings: list[str] | None = None) -> dict[str, Any]:
    rows = [_row(d) for d in c.deltas]
    return {
        "anchor": f"deltas-{i + 1}",
        "label": c.label,
        "counts": [{"verdict": v, "n": n} for v, n in c.counts().items()],
        "significant": [r for r in rows if r["verdict"] in _SIGNIFICANT],
        "rows": rows,
        "mismatches": c.config_mismatches,
        "only_in_baseline": c.only_in_baseline,
        "only_in_candidate": c.only_in_candidate,
        "slices": [_slice_row(r) for r in c.slices],
        "findings": _finding_rows(c.deltas, findings or []),
    }


def _finding_rows(deltas: list[MetricDelta], findings: list[str]) -> list[dict[str, Any]]:
    """Multi-label comparisons: the per-finding metrics (``<study>.<root>.<finding>``), grouped
    by finding in the baseline's order, each row with its test (DeLong, McNemar, bootstrap)."""
    by_length = sorted(findings, key=len, reverse=True)  # 'Lung Opacity' before 'Opacity'
    grouped: dict[str, list[dict[str, Any]]] = {f: [] for f in findings}
    for d in deltas:
        owner = next((f for f in by_length if d.metric.endswith("." + f)), None)
        if owner is not None:
            grouped[owner].append({**_row(d), "measure": d.metric[: -len(owner) - 1]})
    return [{"finding": f, "rows": rows} for f, rows in grouped.items() if rows]


def _slice_row(r: dict[str, Any]) -> dict[str, Any]:
    """One per-slice McNemar row (:func:`robustkit.compare.slice_deltas`) as text cells."""
    b, c = r.get("discordant") or ["", ""]
    return {"slice": str(r.get("slice", "")), "n": str(r.get("n", "")), "baseline": f"{r['baseline']:.3f}",
            "candidate": f"{r['candidate']:.3f}", "delta": _signed(r["delta"]), "discordant": f"{b} / {c}",
            "p": _p(r.get("p_value")), "p_holm": _p(r.get("p_holm")), "verdict": str(r.get("verdict", ""))}


def _row(d: MetricDelta) -> dict[str, Any]:
    return {
        "metric": d.metric,
        "baseline": fmt(d.baseline, d.metric.partition(".")[2]),
        "candidate": fmt(d.candidate, d.metric.partition(".")[2]),
        "delta": _signed(d.delta),
        "interval": f"[{_signed(d.interval[0])}, {_signed(d.interval[1])}]" if d.interval else "",
        "test": d.test,
        "p": _p(d.p_value),
        "p_adj": _p(d.p_adjusted),
        "direction": {"higher": "\u2191", "lower": "\u2193"}.get(d.direction, ""),
        "verdict": d.verdict,
        "css": "verdict-" + d.verdict.replace(" ", "-"),
        "note": d.note or (f"discordant pairs b={d.discordant[0]}, c={d.discordant[1]}" if d.discordant else ""),
    }


def _signed(v: float) -> str:
    v = float(v)
    return ("+" if v > 0 else "") + fmt(v) if math.isfinite(v) else fmt(v)


def _p(p: float | None) -> str:
    if p is None or not math.isfinite(p):
        return "\u2014"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def _short(fingerprint: Any) -> str:
    return str(fingerprint).split(":", 1)[-1][:12] if fingerprint else "\u2014"


# ---------------------------------------------------------------- figures


def _audits(cmp: Comparison) -> list[tuple[str, AuditResult]]:
    return [(cmp.baseline_label, cmp.baseline)] + [(c.label, c.result) for c in cmp.candidates]


def _figures(cmp: Comparison) -> list[dict[str, str]]:
    audits = _audits(cmp)
    significant = {d.metric for c in cmp.candidates for d in c.deltas if d.verdict in _SIGNIFICANT}
    curves = _curves(audits)
    out = []
    for (study, root), conds in curves.items():
        out.append(_mean_figure(study, root, conds, audits))
    flagged = [(k, cond, pts) for k, conds in curves.items() for cond, pts in conds.items()
               if any(n in significant for n in pts.values())]
    for (study, root), cond, pts in flagged[:_MAX_CONDITION_FIGURES]:
        out.append(_condition_figure(study, root, cond, pts, audits))
    out.extend(f for f in (_reliability(study, audits) for study in cmp.baseline.studies) if f)
    return out


def _curves(audits: list[tuple[str, AuditResult]]) -> dict[tuple[str, str], dict[str, dict[float, str]]]:
    """(study, root) -> condition -> x -> metric name, for names every audit has."""
    shared = set.intersection(*(set(r.metrics()) for _, r in audits))
    base = audits[0][1]
    out: dict[tuple[str, str], dict[str, dict[float, str]]] = defaultdict(lambda: defaultdict(dict))
    for name in base.metrics():
        m = _POINT.match(name)
        if m and name in shared and base.direction(name) in ("higher", "lower"):
            out[(m["study"], m["root"])][m["cond"]][float(m["x"])] = name
    return {k: {c: dict(sorted(p.items())) for c, p in v.items() if len(p) >= 2} for k, v in out.items()
            if any(len(p) >= 2 for p in v.values())}


def _with_clean(root: str, audit: AuditResult) -> tuple[list[float], list[float]]:
    if root in ("accuracy", "robust_accuracy") and "clean.accuracy" in audit.metrics():
        return [0.0], [audit.metrics()["clean.accuracy"]]
    return [], []


def _mean_figure(study: str, root: str, conds: dict[str, dict[float, str]], audits: list[tuple[str, AuditResult]]) -> dict[str, str]:
    xs = sorted(set.intersection(*(set(p) for p in conds.values())) or set().union(*(set(p) for p in conds.values())))
    series = {}
    for label, r in audits:
        x0, y0 = _with_clean(root, r)
        ys = [float(np.mean([r.metrics()[p[x]] for p in conds.values() if x in p])) for x in xs]
        series[label] = (x0 + xs, y0 + ys)
    return {
        "title": f"{study}: mean {root} over {len(conds)} conditions",
        "svg": figures.line_chart_svg(series, xlabel="severity / strength", ylabel=f"mean {root}"),
        "caption": "One line per audit (the baseline first). Each point averages the conditions at that "
                   "severity" + ("; 0 is the clean accuracy." if _with_clean(root, audits[0][1])[0] else "."),
    }


def _condition_figure(study: str, root: str, cond: str, pts: dict[float, str], audits: list[tuple[str, AuditResult]]) -> dict[str, str]:
    series, bands = {}, {}
    for label, r in audits:
        x0, y0 = _with_clean(root, r)
        series[label] = (x0 + list(pts), y0 + [r.metrics()[n] for n in pts.values()])
        iv = [r.interval(n) for n in pts.values()]
        if not x0 and all(iv):
            bands[label] = ([v[0] for v in iv if v], [v[1] for v in iv if v])
    return {
        "title": f"{study}: {root} under {cond}",
        "svg": figures.line_chart_svg(series, xlabel="severity / strength", ylabel=root, bands=bands),
        "caption": "Shown because at least one point differs significantly between the audits.",
    }


def _reliability(study: str, audits: list[tuple[str, AuditResult]]) -> dict[str, str] | None:
    series = {}
    for label, r in audits:
        s = r.studies.get(study)
        rec = s.records if s is not None else {}
        if "confidence" not in rec or "correct" not in rec or rec["confidence"].ndim != 1:
            return None
        series[label] = _reliability_points(rec, int(s.config.get("n_bins", 15) or 15))  # type: ignore[union-attr]
    series["perfect calibration"] = ([0.0, 1.0], [0.0, 1.0])
    return {
        "title": f"{study}: reliability diagram",
        "svg": figures.line_chart_svg(series, xlabel="mean confidence in bin", ylabel="accuracy in bin", ylim=(0.0, 1.0)),
        "caption": "Points below the diagonal are over-confident bins. Equal-width bins over the evaluation samples.",
    }


def _reliability_points(rec: dict[str, np.ndarray], n_bins: int) -> tuple[list[float], list[float]]:
    """Mean confidence and accuracy of the populated bins, binned by the calibration metric."""
    conf = rec["confidence"].astype(np.float64)
    corr = (rec["correct"][:, 0] if rec["correct"].ndim == 2 else rec["correct"]).astype(np.float64)
    keep = rec["split"] == 1 if "split" in rec else np.ones(len(conf), dtype=bool)
    bins = reliability_bins(conf[keep], corr[keep], n_bins=n_bins)
    shown = [i for i, c in enumerate(bins["count"]) if c > 0]
    return [bins["confidence"][i] for i in shown], [bins["accuracy"][i] for i in shown]
