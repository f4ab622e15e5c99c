"""Render a metric's history over registered model versions into one self-contained page.

The page uses the report's Jinja environment, layout and CSS (autoescaped, no script,
nothing loaded from outside). It draws only what it is given (:class:`VersionAudit`, built
from the registry by :mod:`robustkit.registry.history`): one chart per metric, each version's
value with its 95% interval as an error bar, and a table that says for each version whether
the paired comparison with the previous version found a significant change, found none, or
was not run ("not tested").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
from markupsafe import Markup

from robustkit.report import figures
from robustkit.report.render import _environment, _read_template
from robustkit.report.views import arrow, fmt, fmt_interval
from robustkit.results import atomic_write_text

__all__ = ["HISTORY_FILE", "VersionAudit", "history_html", "render_history"]

HISTORY_FILE = "history.html"
_SIGNIFICANT = {"regression": "fail", "improvement": "pass", "changed": "warn"}

_CSS = """
/* history page */
.figures { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 1rem; }
.figures svg { max-width: 100%; height: auto; }
td.verdict { white-space: nowrap; }
"""


@dataclass(frozen=True)
class VersionAudit:
    """One registered model version and the audit linked to it.

    Attributes:
        version: the registry's version number, as text.
        aliases: the version's aliases (``champion`` ...).
        run_id: the audit's MLflow run.
        model: the checkpoint's name in the audit.
        values, intervals, directions: per robustkit metric name (intervals only where logged).
        changes: per metric, the verdict of the paired comparison with the previous version
            (``regression``, ``improvement``, ``changed``, ``unchanged``, ``not testable``);
            None when no comparison with the previous version was logged.
        change_note: where the comparison came from, or why there is none.
    """

    version: str
    aliases: tuple[str, ...]
    run_id: str
    model: str
    values: dict[str, float]
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    directions: dict[str, str] = field(default_factory=dict)
    changes: dict[str, str] | None = None
    change_note: str = ""


def render_history(model: str, versions: Sequence[VersionAudit], metrics: Sequence[str], out: str | Path,
                   *, tracking_uri: str = "") -> Path:
    """Write ``history.html`` into the folder ``out`` (or to ``out`` if it ends in .html)."""
    target = Path(out)
    target = target if target.suffix == ".html" else target / HISTORY_FILE
    atomic_write_text(target, history_html(model, versions, metrics, tracking_uri=tracking_uri))
    return target


def history_html(model: str, versions: Sequence[VersionAudit], metrics: Sequence[str], *, tracking_uri: str = "") -> str:
    env = _environment()
    sections = [{"anchor": "versions", "name": "Versions", "ok": True, "status": ""}]
    sections += [{"anchor": f"metric-{i}", "name": m, "ok": True, "status": ""} for i, m in enumerate(metrics)]
    return env.get_template("history.html.j2").render(
        css=Markup(_read_template("report.css") + _CSS), title=f"robustkit history \u2014 {model}", model=model,
        tracking_uri=tracking_uri, sections=sections,
        versions=[{"version": v.version, "aliases": ", ".join(v.aliases), "run": v.run_id, "model": v.model,
                   "tested": v.changes is not None, "note": v.change_note} for v in versions],
        metrics=[_metric(i, m, versions) for i, m in enumerate(metrics)])


def _direction(name: str, versions: Sequence[VersionAudit]) -> str:
    return next((v.directions[name] for v in reversed(versions) if name in v.directions), "none")


def _metric(i: int, name: str, versions: Sequence[VersionAudit]) -> dict[str, Any]:
    rows, prev = [], None
    for v in versions:
        value = v.values.get(name)
        change = "not tested" if v.changes is None or prev is None else v.changes.get(name, "not in the comparison")
        rows.append({"version": v.version, "aliases": ", ".join(v.aliases), "present": value is not None,
                     "value": fmt(value, name) if value is not None else "absent from this audit",
                     "interval": fmt_interval(v.intervals.get(name), name),
                     "delta": "" if value is None or prev is None else fmt(value - prev, name),
                     "change": "first version" if prev is None and value is not None else change,
                     "css": _SIGNIFICANT.get(change, "")})
        prev = value if value is not None else prev
    direction = _direction(name, versions)
    return {"anchor": f"metric-{i}", "name": name, "direction": direction, "arrow": arrow(direction),
            "rows": rows, "svg": Markup(_chart(name, versions))}


def _chart(name: str, versions: Sequence[VersionAudit]) -> str:
    """Each version's value with its interval; versions with a significant change get a ring."""
    with matplotlib.rc_context(figures.STYLE):
        return _draw(name, versions)


def _draw(name: str, versions: Sequence[VersionAudit]) -> str:
    pts = [(i, v) for i, v in enumerate(versions) if name in v.values]
    with_ci = [(i, v) for i, v in pts if name in v.intervals]
    fig = figures.new_figure(5.0, 3.2)
    ax = fig.subplots()
    xs, ys = [i for i, _ in pts], [v.values[name] for _, v in pts]
    ax.plot(xs, ys, marker="o", markersize=4, color=figures.PALETTE[0], linewidth=1.2)
    if with_ci:
        lo = [v.values[name] - v.intervals[name][0] for _, v in with_ci]
        hi = [v.intervals[name][1] - v.values[name] for _, v in with_ci]
        ax.errorbar([i for i, _ in with_ci], [v.values[name] for _, v in with_ci], yerr=[lo, hi], fmt="none",
                    ecolor=figures.PALETTE[0], capsize=4, linewidth=1)
    marked = [(i, v) for i, v in pts if v.changes is not None and v.changes.get(name) in _SIGNIFICANT]
    if marked:
        ax.scatter([i for i, _ in marked], [v.values[name] for _, v in marked], s=160, facecolors="none",
                   edgecolors="#b42318", linewidths=1.5, label="significant change vs previous", zorder=3)
        ax.legend(loc="best")
    ax.set_xticks(range(len(versions)), [f"v{v.version}" for v in versions])
    ax.set_xlabel("registered model version")
    ax.set_ylabel(figures.safe_label(name))
    return figures.to_svg(fig)
