"""Render an :class:`AuditResult` into one self-contained HTML file.

The page is built from Jinja templates (``templates/`` at the top of the repository,
shipped in the wheel as ``robustkit.templates``) with autoescaping on and undefined names
as errors. It holds no script and loads nothing from outside: figures are inline SVG,
example images ``data:`` URIs, and a Content-Security-Policy forbids the rest.
"""

from __future__ import annotations

import importlib.resources
import re
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from robustkit.errors import param_error
from robustkit.plugins import plugin
from robustkit.report import views
from robustkit.results import AuditResult, StudyResult, atomic_write_text, load_results

__all__ = ["render_report", "report_html", "study_anchor"]

REPORT_FILE = "report.html"
_PARTIAL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_STATUS_ORDER = {"fail": 0, "warn": 1}


def render_report(result: AuditResult | str | Path, path: str | Path | None = None) -> Path:
    """Write the HTML report of an audit and return its path.

    Args:
        result: an :class:`AuditResult`, or an audit folder (or its ``results.json``)
            written by :func:`robustkit.results.save_results`.
        path: where to write; defaults to ``<audit folder>/report.html``. Required when
            ``result`` is an :class:`AuditResult`. An existing folder gets ``report.html``.

    Example:
        >>> render_report("reports/audit-1")  # doctest: +SKIP
        PosixPath('reports/audit-1/report.html')
    """
    if isinstance(result, (str, Path)):
        folder = Path(result)
        folder = folder.parent if folder.suffix == ".json" else folder
        audit = load_results(folder)
        target = Path(path) if path is not None else folder / REPORT_FILE
    elif isinstance(result, AuditResult):
        if path is None:
            raise param_error("path", "a file path when rendering an AuditResult", path, where="render_report")
        audit, target = result, Path(path)
    else:
        raise param_error("result", "an AuditResult or an audit folder", type(result).__name__, where="render_report")
    if target.is_dir():
        target = target / REPORT_FILE
    atomic_write_text(target, report_html(audit))
    return target


def report_html(result: AuditResult) -> str:
    """Return the full HTML document of an audit."""
    env = _environment()
    sections = [_section(env, s, result) for s in result.studies.values()]
    seen: set[str] = {"summary", "glossary"}
    for i, sec in enumerate(sections):
        if sec["anchor"] in seen or sec["anchor"] == "study-":
            sec["anchor"] = f"{sec['anchor']}-{i}"
        seen.add(sec["anchor"])
    return env.get_template("report.html.j2").render(
        css=Markup(_read_template("report.css")),
        title=f"robustkit audit \u2014 {_model_name(result.model)}",
        summary=_summary(result),
        sections=sections,
        glossary=_glossary(result),
    )


# ---------------------------------------------------------------- templates


def _templates_root() -> Any:
    """The templates folder: the installed ``robustkit.templates``, else the checkout's."""
    try:
        root = importlib.resources.files("robustkit.templates")
        if root.joinpath("report.html.j2").is_file():
            return root
    except (ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parents[2] / "templates"


def _read_template(name: str) -> str:
    node = _templates_root()
    for part in name.split("/"):
        node = node.joinpath(part)
    return node.read_text(encoding="utf-8")


def _read_plugin_template(name: str) -> str:
    """``package:path/in/package`` -> the text of a template shipped by a plug-in."""
    package, _, rel = name.partition(":")
    node = importlib.resources.files(package)
    for part in rel.split("/"):
        node = node.joinpath(part)
    return node.read_text(encoding="utf-8")


def _load(name: str) -> tuple[str, None, Callable[[], bool]] | None:
    try:
        text = _read_plugin_template(name) if ":" in name else _read_template(name)
        return text, None, lambda: True
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, ImportError, TypeError):
        return None


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(_load),
        autoescape=jinja2.select_autoescape(("html", "j2", "xml"), default_for_string=True, default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = views.fmt
    env.filters["interval"] = views.fmt_interval
    env.filters["status_class"] = views.status_class
    return env


def _partial_for(env: jinja2.Environment, name: str) -> str:
    record = plugin(name)
    candidates = [record.template] if record is not None and record.template else []
    if _PARTIAL_NAME.match(name):
        candidates.append(f"partials/{name}.html.j2")
    for candidate in candidates:
        try:
            env.get_template(candidate)
            return candidate
        except jinja2.TemplateNotFound:
            pass
    return "partials/_generic.html.j2"


def study_anchor(name: str) -> str:
    """The id of a study's section in report.html (``study-<name>``), the card's link target."""
    return "study-" + re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")


def _section(env: jinja2.Environment, study: StudyResult, audit: AuditResult) -> dict[str, Any]:
    ctx, view_error = views.build_view(study, audit)
    generic = study.status != "ok" or view_error is not None
    return {
        "name": study.name,
        "anchor": study_anchor(study.name),
        "status": study.status,
        "ok": study.status == "ok",
        "seconds": f"{study.seconds:.1f}",
        "error": study.error or "",
        "view_error": view_error or "",
        "missing_figures": study.missing_figures,
        "template": "partials/_generic.html.j2" if generic else _partial_for(env, study.name),
        "view": ctx,
    }


# ---------------------------------------------------------------- summary


def _first(obj: Mapping[str, Any], *keys: str) -> Any:
    for k in keys:
        if obj.get(k) not in (None, "", [], {}):
            return obj[k]
    return None


def _short(fingerprint: Any) -> str | None:
    if not fingerprint:
        return None
    text = str(fingerprint).split(":", 1)[-1]
    return text[:12]


def _basename(value: Any) -> str | None:
    return None if not value else Path(str(value)).name or str(value)


def _model_name(model: Mapping[str, Any]) -> str:
    return str(_first(model, "name") or _basename(_first(model, "path", "file")) or "model")


def _rows(pairs: Iterable[tuple[str, Any]]) -> list[dict[str, str]]:
    out = []
    for label, value in pairs:
        if value is None or value == "" or value == []:
            continue
        if isinstance(value, (list, tuple)):
            value = ", ".join(str(v) for v in value)
        elif isinstance(value, Mapping):
            value = ", ".join(f"{k}: {views.fmt(v, 'count')}" for k, v in value.items())
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = views.fmt(value)
        out.append({"label": label, "value": str(value)})
    return out


def _model_rows(audit: AuditResult) -> list[dict[str, str]]:
    m = audit.model
    size = _first(m, "input_size", "input_shape", "image_size")
    return _rows([
        ("Model", _model_name(m)),
        ("File", _basename(_first(m, "path", "file")) if m.get("name") else None),
        ("Fingerprint", _short(_first(m, "fingerprint", "sha256"))),
        ("Architecture", _first(m, "arch", "architecture")),
        ("Input size", "\u00d7".join(str(s) for s in size) if isinstance(size, (list, tuple)) else size),
        ("Classes", _first(m, "class_names") or audit.class_names),
        ("Parameters", _first(m, "n_params", "parameters", "param_count")),
        ("Output kind", f"{m['output_kind']} ({m.get('output_kind_reason', 'no reason recorded')})"
         if m.get("output_kind") else None),
        *_setup_rows(m),
        ("Critical class", _critical_text(audit.task) if audit.task else None),
    ])


def _setup_rows(m: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """Preprocessing, class order, assumptions and the input probe's table (issue #25)."""
    pre, probe = m.get("preprocess"), m.get("input_probe") or {}
    rows: list[tuple[str, Any]] = [
        ("Preprocessing", f"{pre['preset']}: the model receives {pre['formula']} ({pre['source']})" if pre else None),
        ("Class order", m.get("class_order_source")),
        ("Assumed", "; ".join(m.get("assumptions") or []) or None),
    ]
    if probe.get("skipped"):
        rows.append(("Input probe", f"skipped ({probe['skipped']})"))
    elif probe:
        scores = ", ".join(f"{r['setup']} {r['score']:.2f}" for r in probe["rows"])
        rows.append(("Input probe", f"{probe['verdict'].upper()}: {probe['message']}. Before any study, "
                     f"{probe['n']} stratified audit images scored under each preprocessing ({probe['metric']}; "
                     f"chance {probe['chance']:.2f}): {scores}; a clearly better setup would have stopped the "
                     "audit (the rule and each setup's best class order: results.json, model.input_probe)."))
    return rows


def _critical_text(task: Mapping[str, Any]) -> str:
    """The task's critical class, or that none was set and what that leaves unmeasured."""
    critical = task.get("critical_class")
    if critical:
        return f"{critical} (configured: the output whose misses cost most)"
    return ("not set (--critical-class): the critical miss rate, the confident critical rate and the "
            "sensitivity among kept cases and per slice were not measured")


def _skipped_text(entry: Any) -> str:
    """``path (reason)`` for a skipped-file entry ({path, reason} or a plain path)."""
    if isinstance(entry, Mapping):
        return f"{entry.get('path', '?')} ({entry.get('reason', 'no reason recorded')})"
    return _basename(entry) or ""


def _data_rows(audit: AuditResult) -> list[dict[str, str]]:
    d = audit.dataset
    skipped = _first(d, "skipped", "skipped_files")
    if isinstance(skipped, (list, tuple)):
        skipped = f"{len(skipped)}: " + "; ".join(_skipped_text(s) for s in skipped[:10]) + (" \u2026" if len(skipped) > 10 else "")
    return _rows([
        ("Dataset", _basename(_first(d, "root", "path", "name"))),
        ("Samples", _first(d, "n_samples", "n") or len(audit.ids)),
        ("Class counts", _first(d, "class_counts", "counts")),
        ("Fingerprint", _short(_first(d, "fingerprint", "sha256"))),
        ("Skipped files", skipped),
        *_intake_rows(d),
    ])


def _intake_rows(d: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """Class map, excluded classes, metadata columns, mask resizes and notes (issue #11)."""
    resized = d.get("mask_resized") or {}
    return [
        ("Class map", ", ".join(f"{k} \u2192 {v}" for k, v in (d.get("class_map") or {}).items()) or None),
        ("Excluded (out of scope)", (f"{d.get('n_excluded', 0)} images: " + ", ".join(
            f"{k} {v}" for k, v in d["excluded_counts"].items())) if d.get("n_excluded") else None),
        ("Metadata columns", d.get("metadata_columns") or None),
        ("Missing metadata", _missing_text(d)),
        ("Masks resized", "; ".join(f"{n} masks {k} (nearest neighbour, same aspect ratio)"
                                    for k, n in resized.items()) or None),
        ("Notes", d.get("notes") or None),
    ]


def _missing_text(d: Mapping[str, Any]) -> str | None:
    """The ``missing`` values per metadata column and what they mean (None without metadata)."""
    counts = d.get("metadata_missing")
    if not d.get("metadata_columns") or counts is None:
        return None
    shown = {k: int(v) for k, v in counts.items() if v}
    if not shown:
        return "none: every image has a value in every metadata column"
    per = ", ".join(f"{k} {v}" for k, v in shown.items())
    return (f"{per} of {d.get('n_samples', '?')} images have the value 'missing' (no row in their class's "
            "metadata sheet, or an empty cell); the slices study reports them as their own slice")


def _audit_rows(audit: AuditResult) -> list[dict[str, str]]:
    c, e = audit.config, audit.environment
    return _rows([
        ("Profile", _first(c, "profile")),
        ("Seed", _first(c, "seed")),
        ("robustkit", audit.robustkit_version),
        ("Created", audit.created),
        ("Total time", f"{audit.seconds:.1f} s" if audit.seconds else None),
        ("TensorFlow", _first(e, "tensorflow", "tf_version", "tensorflow_version")),
        ("Device", _first(e, "device", "devices")),
    ])


def _headline(audit: AuditResult) -> list[dict[str, str]]:
    out = []
    for study in audit.studies.values():
        for row in views.metric_rows(study, [str(h) for h in study.data.get("headline", [])]):
            out.append({"study": study.name, **row})
    return out


def _problems(audit: AuditResult) -> list[dict[str, str]]:
    rows = [
        {"study": s, "check": c.name, "status": c.status, "css": views.status_class(c.status), "detail": c.detail}
        for s, c in audit.checks()
        if c.status != "pass"
    ]
    return sorted(rows, key=lambda r: _STATUS_ORDER.get(r["status"], -1))


def _summary(audit: AuditResult) -> dict[str, Any]:
    checks = list(audit.checks())
    return {
        "model": _model_rows(audit),
        "data": _data_rows(audit),
        "audit": _audit_rows(audit),
        "headline": _headline(audit),
        "problems": _problems(audit),
        "n_checks": len(checks),
        "failed_studies": [
            {"name": s.name, "status": s.status, "error": s.error or "no error message recorded"}
            for s in audit.studies.values()
            if s.status != "ok"
        ],
    }


# ---------------------------------------------------------------- glossary


def _root(metric: str, docs: Mapping[str, Any]) -> str:
    parts = metric.split(".")
    for k in range(len(parts), 0, -1):
        if ".".join(parts[:k]) in docs:
            return ".".join(parts[:k])
    return parts[0]


def _glossary(audit: AuditResult) -> list[dict[str, Any]]:
    groups = []
    for study in audit.studies.values():
        docs = study.data.get("metric_docs", {}) or {}
        entries: dict[str, dict[str, str]] = {}
        for name in study.metrics:
            root = _root(name, docs)
            if root not in entries:
                direction = study.direction(name)
                entries[root] = {
                    "root": root,
                    "example": name,
                    "meaning": str(docs.get(root, "")),
                    "direction": direction,
                    "arrow": views.arrow(direction),
                }
        if entries:
            groups.append({"study": study.name, "entries": list(entries.values())})
    return groups
