"""The HTML report: complete, self-contained, script-free, escaped, and built from stored results."""

from __future__ import annotations

import base64
import math
import re
import subprocess
import sys
import zlib
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from robustkit.errors import ConfigError
from robustkit.report import figures, render_report, report_html, views
from robustkit.results import AuditResult, Check, StudyResult, load_results, save_results

CLASSES = ["COVID-19", "NORMAL", "Viral Pneumonia"]
HOSTILE = '<script>alert(1)</script>"><img src=x onerror=alert(1)>\'$x$'
REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- builders


def _png_b64(seed: int, size: int = 24) -> str:
    """A tiny grayscale PNG, base64 without the data: prefix (built by hand, no imaging library)."""
    rng = np.random.default_rng(seed)
    img = (np.linspace(0, 255, size)[None, :] * 0.6 + rng.uniform(0, 100, (size, size))).astype(np.uint8)
    raw = b"".join(b"\x00" + row.tobytes() for row in img)

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    ihdr = size.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    return base64.b64encode(png).decode("ascii")


def _roc(seed: int) -> dict[str, list[float]]:
    rng = np.random.default_rng(seed)
    fpr = np.sort(np.concatenate([[0.0, 1.0], rng.uniform(0, 1, 8)]))
    tpr = np.minimum(1.0, np.sqrt(fpr) * 1.05)
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist()}


def clean_study(classes: list[str] = CLASSES, ids: list[str] | None = None) -> StudyResult:
    """A clean StudyResult as the clean study writes it, with made-up numbers."""
    k = len(classes)
    confusion = [[30 if i == j else 3 + i + j for j in range(k)] for i in range(k)]
    metrics: dict[str, float] = {"accuracy": 0.9534, "balanced_accuracy": 0.941, "macro_f1": 0.9377, "auroc.macro": 0.987}
    intervals = {"accuracy": [0.931, 0.9702], "balanced_accuracy": [0.91, 0.96], "auroc.macro": [0.975, 0.995]}
    rows = []
    for i, c in enumerate(classes):
        vals = {"precision": 0.9 - 0.02 * i, "sensitivity": 0.88 + 0.03 * i, "f1": 0.89, "auroc": 0.98 - 0.01 * i}
        for m, v in vals.items():
            metrics[f"{m}.{c}"] = v
            intervals[f"{m}.{c}"] = [v - 0.04, min(1.0, v + 0.03)]
        rows.append({"class": c, **vals, "support": 40 + i})
    metrics["n_samples"] = float(sum(r["support"] for r in rows))
    ids = ids or [f"{c}/img_{j}" for c in classes for j in range(2)]
    examples = [
        {"id": ids[j], "label": classes[j % k], "pred": classes[(j + (j % 2)) % k],
         "confidence": 0.6 + 0.05 * j, "image_png": _png_b64(j)}
        for j in range(min(4, len(ids)))
    ]
    return StudyResult(
        name="clean", seconds=12.34,
        config={"batch_size": 32},
        metrics=metrics, intervals=intervals,
        directions={"accuracy": "higher", "balanced_accuracy": "higher", "macro_f1": "higher", "auroc": "higher",
                    "precision": "higher", "sensitivity": "higher", "f1": "higher", "n_samples": "none"},
        tables={"per_class": rows},
        data={
            "description": "Baseline performance on the unmodified images.",
            "headline": ["accuracy", f"sensitivity.{classes[0]}", "auroc.macro"],
            "metric_docs": {"accuracy": "Fraction of images classified correctly.",
                            "sensitivity": "Of the images of a class, the fraction predicted as that class.",
                            "auroc": "Area under the one-vs-rest ROC curve."},
            "confusion": confusion, "class_names": list(classes),
            "roc": {c: _roc(i) for i, c in enumerate(classes)},
            "examples": examples,
        },
        checks=[Check("per-class support", "warn", f"class {classes[0]} has only 40 samples"),
                Check("accuracy above chance", "pass", "0.953 > 0.333")],
        records={"index": np.arange(6), "pred": np.array([0, 1, 2, 0, 1, 1])},
    )


def mystery_study() -> StudyResult:
    return StudyResult(
        name="mystery", seconds=1.0,
        metrics={"ece": 0.0412, "ece.adaptive": 0.05, "coverage.0.9": 0.9, "n_bins": 15.0},
        intervals={"ece": [0.03, 0.055]},
        directions={"ece": "lower", "coverage": "higher", "n_bins": "none"},
        tables={"bins": [{"bin": 1, "confidence": 0.45, "accuracy": 0.5, "count": 12}]},
        data={"description": "A study this report has no special layout for.", "headline": ["ece"],
              "metric_docs": {"ece": "Expected calibration error."}},
        checks=[Check("calibrated", "fail", "ece 0.041 above 0.03")],
    )


def failed_study() -> StudyResult:
    return StudyResult(name="adversarial", status="failed", seconds=0.5, error="ModelError: gradients are None")


def make_audit(classes: list[str] = CLASSES, studies: list[StudyResult] | None = None, ids: list[str] | None = None) -> AuditResult:
    ids = ids or [f"{c}/img_{j}" for c in classes for j in range(2)]
    studies = studies if studies is not None else [clean_study(classes, ids), mystery_study(), failed_study()]
    return AuditResult(
        model={"name": "detector", "path": "/somewhere/models/detector.hdf5", "fingerprint": "sha256:" + "ab12" * 16,
               "arch": "InceptionV3", "input_size": [256, 256, 3], "class_names": list(classes), "n_params": 22360611},
        dataset={"root": "/data/phantom", "n_samples": len(ids), "class_counts": {c: 2 for c in classes},
                 "fingerprint": "cd34" * 16, "skipped": ["broken.png"]},
        config={"profile": "quick", "seed": 7},
        environment={"tensorflow": "2.21.0", "device": "CPU"},
        ids=np.asarray(ids), labels=np.asarray([i // 2 for i in range(len(ids))]),
        class_names=list(classes), studies={s.name: s for s in studies},
        robustkit_version="0.1.0", created="2025-01-02T03:04:05Z", seconds=42.0,
    )


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):  # noqa: D102
        self.tags.append((tag, dict(attrs)))


def _tags(html: str) -> list[tuple[str, dict[str, str | None]]]:
    p = _Collector()
    p.feed(html)
    p.close()
    return p.tags


def _section(html: str, anchor: str) -> str:
    start = html.index(f'id="{anchor}"')
    end = html.find("<section", start)
    return html[start: end if end >= 0 else len(html)]


def _text(fragment: str) -> str:
    return unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", fragment)))


@pytest.fixture(scope="module")
def html() -> str:
    return report_html(make_audit())


# ---------------------------------------------------------------- document


def test_render_report_writes_a_complete_html_document(tmp_path: Path) -> None:
    out = render_report(make_audit(), tmp_path / "sub" / "r.html")
    assert out == tmp_path / "sub" / "r.html"
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    names = [t for t, _ in _tags(text)]
    for tag in ("html", "head", "meta", "title", "style", "body", "nav", "main"):
        assert tag in names
    assert [m.get("charset") for t, m in _tags(text) if t == "meta" and "charset" in m] == ["utf-8"]
    assert "@media print" in text


def test_csp_meta_forbids_scripts_and_remote_content(html: str) -> None:
    csp = [a["content"] for t, a in _tags(html) if t == "meta" and (a.get("http-equiv") or "").lower() == "content-security-policy"]
    assert csp == ["default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'none'"]


def test_every_src_and_href_stays_inside_the_page(html: str) -> None:
    raw = re.findall(r"""\b(?:src|href)\s*=\s*["']?([^"'\s>]*)""", html, flags=re.I)
    assert raw, "expected links and images in the report"
    assert all(v.startswith(("data:", "#")) for v in raw), [v for v in raw if not v.startswith(("data:", "#"))]
    parsed = [v for _, a in _tags(html) for k, v in a.items() if k.endswith(("src", "href"))]
    assert all((v or "").startswith(("data:", "#")) for v in parsed)
    assert not re.search(r"url\(\s*['\"]?(?!data:|#)", html)


def test_hostile_strings_are_escaped_everywhere(tmp_path: Path) -> None:
    classes = [HOSTILE, 'Quote "q" & <b>bold</b>', "plain"]
    ids = [f"{HOSTILE}/{j}" for j in range(6)]
    clean = clean_study(classes, ids)
    clean.data["examples"].append({"id": "bad", "label": "x", "pred": "x", "confidence": 0.5,
                                   "image_png": '" onerror="alert(1)'})
    clean.checks.append(Check(HOSTILE, "fail", HOSTILE))
    odd = StudyResult(name=HOSTILE, metrics={HOSTILE: 1.0}, tables={HOSTILE: [{HOSTILE: HOSTILE}]},
                      data={"description": HOSTILE, "headline": [HOSTILE]}, directions={HOSTILE: "higher"})
    audit = make_audit(classes, [clean, odd, StudyResult(name="s2", status="failed", error=HOSTILE)], ids)
    audit.model["name"] = HOSTILE
    audit.config["profile"] = HOSTILE
    text = render_report(audit, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "<script" not in text.lower()
    tags = _tags(text)
    assert "script" not in [t for t, _ in tags]
    assert not [(t, k) for t, a in tags for k in a if k.lower().startswith("on")]
    assert [a["src"] for t, a in tags if t == "img" and not (a.get("src") or "").startswith("data:image/png;base64,")] == []
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert len([t for t, _ in tags if t == "img"]) == 4  # the malformed example image is dropped


# ---------------------------------------------------------------- summary and sections


def test_summary_lists_provenance_headline_and_every_problem(html: str) -> None:
    summary = _text(_section(html, "summary"))
    for fact in ("detector", "ab12ab12ab12", "InceptionV3", "256×256×3", "22,360,611", "phantom",
                 "broken.png", "quick", "2.21.0", "0.1.0"):
        assert fact in summary, fact
    assert "/somewhere" not in html and "/data/phantom" not in html  # basenames only
    assert "0.953 95% CI [0.931, 0.970]" in summary
    assert "0.041 95% CI [0.030, 0.055]" in summary
    assert "calibrated" in summary and "per-class support" in summary
    assert "accuracy above chance" not in summary  # passed checks are not listed
    assert "adversarial" in summary and "gradients are None" in summary
    assert summary.index("calibrated") < summary.index("per-class support")  # failures first


def test_summary_says_when_all_checks_passed() -> None:
    study = clean_study()
    study.checks = [Check("fine", "pass", "ok")]
    summary = _text(_section(report_html(make_audit(studies=[study])), "summary"))
    assert "All 1 checks passed" in summary


def test_sections_follow_study_order_and_nav_links_them(html: str) -> None:
    anchors = re.findall(r'<section id="([^"]+)"', html)
    assert anchors == ["summary", "study-clean", "study-mystery", "study-adversarial", "glossary"]
    links = [a["href"] for t, a in _tags(html) if t == "a"]
    assert [h[1:] for h in links if h and h.startswith("#")] == anchors


def test_clean_partial_shows_tables_figures_and_examples(html: str) -> None:
    section = _section(html, "study-clean")
    text = _text(section)
    assert "Baseline performance on the unmodified images." in text
    assert "Per class" in text and "Viral Pneumonia" in text
    assert "0.880 [0.840, 0.910]" in text  # sensitivity.COVID-19 with its interval
    assert section.count("<svg") == 2  # confusion matrix and ROC
    assert len(re.findall(r'<img src="data:image/png;base64,', section)) == 4
    assert "per-class support" in text


def test_unknown_study_renders_with_the_generic_partial(html: str) -> None:
    section = _section(html, "study-mystery")
    text = _text(section)
    assert "A study this report has no special layout for." in text
    assert '<table class="metrics">' in section and '<table class="data">' in section
    assert "ece.adaptive" in text and "↓" in text and "0.041 [0.030, 0.055]" in text
    assert "calibrated" in text and "bins" in text and "0.450" in text


def test_a_view_that_fails_on_bad_data_falls_back_to_generic() -> None:
    study = clean_study()
    study.data["confusion"] = [[1, 2]]
    section = _section(report_html(make_audit(studies=[study])), "study-clean")
    assert "could not be built" in section and "ValueError" in section
    assert '<table class="metrics">' in section


def test_glossary_lists_every_metric_root_with_its_direction(html: str) -> None:
    glossary = _section(html, "glossary")
    rows = re.findall(r"<tr>(.*?)</tr>", glossary, flags=re.S)
    table = {}
    for row in rows:
        cells = [_text(c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, flags=re.S)]
        if cells:
            table[cells[0]] = cells
    audit = make_audit()
    for study in audit.studies.values():
        docs = study.data.get("metric_docs", {})
        for name in study.metrics:
            root = next((r for r in docs if name == r or name.startswith(r + ".")), name.split(".")[0])
            assert root in table, root
            expected = {"higher": "↑ higher", "lower": "↓ lower", "none": "– n/a"}[study.direction(name)]
            assert table[root][2] == expected, (root, table[root])
    assert table["accuracy"][3] == "Fraction of images classified correctly."
    assert table["sensitivity"][1].startswith("sensitivity.")


# ---------------------------------------------------------------- files and boundaries


def test_render_report_from_an_audit_folder(tmp_path: Path) -> None:
    audit = make_audit()
    folder = save_results(audit, tmp_path / "audit")
    out = render_report(folder)
    assert out == folder / "report.html"
    assert out.read_text(encoding="utf-8") == report_html(load_results(folder)) == report_html(audit)
    assert render_report(folder / "results.json", tmp_path) == tmp_path / "report.html"


def test_render_report_needs_a_path_for_an_in_memory_result() -> None:
    with pytest.raises(ConfigError, match="'path'"):
        render_report(make_audit())
    with pytest.raises(ConfigError, match="'result'"):
        render_report(42)  # type: ignore[arg-type]


def test_rendering_does_not_import_tensorflow(tmp_path: Path) -> None:
    code = (
        "import sys; sys.path.insert(0, 'tests'); import test_report as t; "
        "from robustkit.report import render_report; "
        f"render_report(t.make_audit(), {str(tmp_path / 'r.html')!r}); "
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'; print('ok')"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok" and (tmp_path / "r.html").is_file()


def test_every_template_file_is_shipped_in_the_wheel() -> None:
    root = REPO / "templates"
    assert (root / "__init__.py").is_file()
    for f in root.rglob("*"):
        if f.is_file() and "__pycache__" not in f.parts:
            rel = f.relative_to(root).as_posix()
            assert rel == "__init__.py" or re.fullmatch(r"[^/]+\.(j2|css)|partials/[^/]+\.j2", rel), rel


# ---------------------------------------------------------------- formatting and figures


@pytest.mark.parametrize(("value", "name", "expected"), [
    (0.9534, "accuracy", "0.953"), (1.0, "accuracy", "1.000"), (0.0, "ece", "0.000"),
    (1204.0, "n_samples", "1,204"), (3.0, "n_samples", "3"), (1.0, "support", "1"),
    (2.1e-5, "ece", "2.10e-05"), (12.345, "epsilon", "12.35"), (math.nan, None, "n/a"),
    (math.inf, None, "∞"), (None, None, "—"), ("text", None, "text"), (7, None, "7"),
])
def test_fmt_known_answers(value, name, expected) -> None:
    assert views.fmt(value, name) == expected


def test_fmt_interval() -> None:
    assert views.fmt_interval([0.931, 0.9702]) == "[0.931, 0.970]"
    assert views.fmt_interval(None) == "" and views.fmt_interval([]) == ""


def test_figures_are_standalone_deterministic_svg() -> None:
    names = ["a$b", "c\\d", "e"]
    svgs = [
        figures.confusion_matrix_svg([[5, 1, 0], [2, 7, 1], [0, 0, 0]], names),
        figures.roc_curves_svg({"a": ([0, 0.5, 1], [0, 0.8, 1])}, aucs={"a": 0.8}),
        figures.line_chart_svg({"blur": ([1, 2, 3], [0.9, 0.8, 0.6])}, xlabel="severity", ylabel="accuracy",
                               bands={"blur": ([0.85, 0.7, 0.5], [0.95, 0.85, 0.7])}),
    ]
    for svg in svgs:
        assert svg.startswith("<svg") and svg.endswith("</svg>")
        assert "<!--" not in svg and "<?xml" not in svg and "<script" not in svg
    assert svgs[0] == figures.confusion_matrix_svg([[5, 1, 0], [2, 7, 1], [0, 0, 0]], names)
    with pytest.raises(ValueError, match="square"):
        figures.confusion_matrix_svg([[1, 2]], names)


def test_image_data_uri_is_a_png() -> None:
    uri = figures.image_data_uri(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8, 1))
    assert uri.startswith("data:image/png;base64,")
    assert base64.b64decode(uri.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_condition_examples_carry_each_picture_once() -> None:
    """The clean thumbnail sits beside the first row only; a run of identical severities is one spanning cell."""
    from robustkit.report.view_perturbation import _example_rows

    a, b, c = ("iVBORw0KGgo" + x for x in ("AAAA", "BBBB", "CCCC"))
    examples = {"clean": a, **{f"flip.{s}": b for s in range(1, 6)},
                **{f"blur.{s}": (b if s < 3 else c) for s in range(1, 6)}}
    rows = _example_rows(examples, ["flip", "blur"])
    assert [r["clean"] is not None for r in rows] == [True, False]
    assert [(c["severity"], c["span"]) for c in rows[0]["cells"]] == [(1, 5)]
    assert [(c["severity"], c["span"]) for c in rows[1]["cells"]] == [(1, 2), (3, 3)]
    html = "".join(str(r) for r in rows)
    assert html.count(b) == 2 and html.count(a) == 1
