"""One plug-in record per study (robustkit.plugins): the registry, the report, compare and the
runner's exports read it; a third party ships a study with its own view and template
through one entry point (issue #12, item 3)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from robustkit import plugins as P
from robustkit.errors import ConfigError
from robustkit.report import report_html
from robustkit.results import SCHEMA_VERSION, AuditResult, StudyResult

REPO = Path(__file__).resolve().parents[1]
MARKER = "plug-in partial for mystudy"


def _mystudy_view(study: StudyResult, audit: AuditResult) -> dict[str, Any]:
    """A third-party view: reads one stored number."""
    return {"margin": f"{study.metrics['mean_margin']:.4f}", "n": len(audit.ids)}


class _FakeEntryPoint:
    def __init__(self, name: str, obj: Any) -> None:
        self.name, self._obj = name, obj

    def load(self) -> Any:
        return self._obj


@pytest.fixture()
def plugin_package(tmp_path, monkeypatch) -> str:
    """A package on sys.path that ships a partial template."""
    pkg = tmp_path / "rk_thirdparty"
    (pkg / "templates").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "templates" / "mystudy.html.j2").write_text(
        '{% import "macros.html.j2" as m %}\n<p class="mystudy">' + MARKER
        + ": margin {{ view.margin }} over {{ view.n }} samples</p>\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "rk_thirdparty"


@pytest.fixture()
def fresh_table(monkeypatch):
    """Isolate the plug-in table and the entry-point scan."""
    monkeypatch.setattr(P, "_PLUGINS", dict(P._PLUGINS))
    monkeypatch.setattr(P, "_LOADED_ENTRY_POINTS", False)
    import robustkit.studies as studies

    monkeypatch.setattr(studies, "_REGISTRY", dict(studies._REGISTRY))
    return monkeypatch


def _audit(study: StudyResult) -> AuditResult:
    n = 4
    return AuditResult(
        model={"name": "m", "fingerprint": "sha256:m"}, dataset={"fingerprint": "sha256:d"},
        config={"seed": 0}, environment={}, ids=np.asarray([f"s{i}" for i in range(n)]),
        labels=np.zeros(n, dtype=np.int64), class_names=["a", "b"], studies={study.name: study},
        schema_version=SCHEMA_VERSION, created="2024-01-01T00:00:00+00:00",
    )


def test_builtin_table_is_the_registry_order_and_resolves() -> None:
    from robustkit.report.render import _environment
    from robustkit.studies import BUILTIN

    names = [p.name for p in P.BUILTIN_PLUGINS]
    assert names == list(BUILTIN) == ["clean", "perturbation", "noise", "adversarial", "calibration", "saliency", "slices", "ood",
                                      "smoothing"]
    env = _environment()
    for record in P.BUILTIN_PLUGINS:
        assert callable(record.load_view()), record.name
        assert record.template is not None
        env.get_template(record.template)  # raises when missing
        assert BUILTIN[record.name] == record.study.partition(":")[0]
    assert P.plugin("calibration").exports == (P.Export("temperature.json", "temperature_export"),)
    assert P.plugin("perturbation").paired.binary == ("correct", "flipped")


def test_table_views_and_templates_load_without_tensorflow() -> None:
    code = (
        "import sys\n"
        "from robustkit import plugins\n"
        "from robustkit.report.render import _environment\n"
        "for r in plugins.plugins().values():\n"
        "    r.load_view(); _environment().get_template(r.template)\n"
        "import robustkit.compare, robustkit.gate\n"
        "bad = [m for m in ('tensorflow', 'keras', 'robustkit.model', 'robustkit._tf') if m in sys.modules]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_third_party_plugin_ships_its_view_and_template(plugin_package, fresh_table) -> None:
    record = P.StudyPlugin(
        "mystudy", f"{__name__}:_NoSuchClassNeededToRender",
        view=f"{__name__}:_mystudy_view", template=f"{plugin_package}:templates/mystudy.html.j2",
    )
    fresh_table.setattr(P, "entry_points", lambda group: [_FakeEntryPoint("mystudy", record)] if group == P.ENTRY_POINT_GROUP else [])
    study = StudyResult(name="mystudy", metrics={"mean_margin": 0.4321}, directions={"mean_margin": "higher"})
    html = report_html(_audit(study))
    assert MARKER + ": margin 0.4321 over 4 samples" in html
    assert "mystudy" in P.plugins()


def test_entry_point_may_still_be_a_bare_study_class(fresh_table) -> None:
    from robustkit.studies import Study, available, get_study

    class _Bare(Study):  # type: ignore[type-arg]
        name = "bare_study"

    fresh_table.setattr(P, "entry_points", lambda group: [_FakeEntryPoint("bare_study", _Bare)])
    record = P.plugin("bare_study")
    assert record is not None and record.view is None and record.study.endswith("._Bare")
    assert get_study("bare_study") is _Bare
    assert "bare_study" in available()
    study = StudyResult(name="bare_study", metrics={"x": 0.5}, directions={"x": "higher"})
    html = report_html(_audit(study))  # the generic view and partial
    assert 'id="study-bare_study"' in html or 'id="study-bare-study"' in html
    assert "<h3>Metrics</h3>" in html and ">0.500<" in html


def test_entry_point_of_the_wrong_kind_names_the_group(fresh_table) -> None:
    fresh_table.setattr(P, "entry_points", lambda group: [_FakeEntryPoint("odd", 42)])
    with pytest.raises(ConfigError, match="robustkit.studies.*StudyPlugin.*int"):
        P.plugins()


def test_bad_study_reference_is_a_one_line_error() -> None:
    record = P.StudyPlugin("x", "no_such_module_rk:Thing")
    with pytest.raises(ConfigError, match="no_such_module_rk:Thing"):
        record.load_study()
    with pytest.raises(ConfigError, match="module:attribute"):
        P.StudyPlugin("x", "nocolon").load_study()


def test_exports_follow_the_records(tmp_path, fresh_table) -> None:
    from robustkit.runner import _write_exports

    P.register_plugin(P.StudyPlugin("mystudy", "x:Y", exports=(P.Export("mystudy.json", "export"),)))
    cal = StudyResult(name="calibration", data={"temperature_export": {"temperature": 1.7, "applies_to": "logits"}})
    mine = StudyResult(name="mystudy", data={"export": {"threshold": 0.25}})
    failed = StudyResult(name="mystudy2", status="failed", data={"export": {"x": 1}})
    audit = _audit(cal)
    audit.studies.update(mystudy=mine, mystudy2=failed)
    _write_exports(audit, tmp_path)
    assert json.loads((tmp_path / "temperature.json").read_text())["temperature"] == 1.7
    assert json.loads((tmp_path / "mystudy.json").read_text()) == {"threshold": 0.25}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mystudy.json", "temperature.json"]


def test_compare_reads_paired_columns_from_the_record(fresh_table) -> None:
    """A plug-in declares which column backs its ECE-type metric; compare tests it."""
    from robustkit.compare import compare
    from robustkit.metrics import calibration as CM

    P.register_plugin(P.StudyPlugin("mystudy", "x:Y", paired=P.PairedSpec(
        binary=(), ece={"ece_after": P.EceColumns("conf_after", "hit")})))
    rng = np.random.default_rng(0)

    def audit(shift: float) -> AuditResult:
        conf = np.clip(0.55 + 0.4 * rng.random(80) + shift, 0, 1)
        hit = rng.random(80) < 0.8
        p = np.stack([conf, 1 - conf], 1)
        study = StudyResult(name="mystudy", metrics={"ece_after": CM.ece(p, np.where(hit, 0, 1), n_bins=10)},
                            directions={"ece_after": "lower"}, config={"n_bins": 10},
                            records={"conf_after": conf, "hit": hit, "index": np.arange(80)})
        a = _audit(study)
        return AuditResult(**{**a.__dict__, "ids": np.asarray([f"s{i}" for i in range(80)]),
                              "labels": np.zeros(80, dtype=np.int64)})

    d = compare([audit(0.0), audit(0.05)], n_boot=50).candidates[0].deltas[0]
    assert d.metric == "mystudy.ece_after" and d.test == "paired-bootstrap"
