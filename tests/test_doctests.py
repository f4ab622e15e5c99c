"""Every docstring example in robustkit/ runs in the default test run.

The modules are found by their text (a ``>>>`` line) and only those are imported, so that a
module with optional dependencies and no examples is never imported here. Each module's
examples run with :mod:`doctest`; an example that is not marked ``+SKIP`` but never runs
(outside a docstring, or in a docstring doctest cannot find) fails the count check.
"""

from __future__ import annotations

import doctest
import importlib
import io
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "robustkit"
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _examples(path: Path) -> int:
    """The examples anywhere in a file's text (a ``>>>`` line and its ``...`` lines) that are
    not marked ``+SKIP``: those that must run."""
    blocks: list[str] = []
    for line in (raw.strip() for raw in path.read_text(encoding="utf-8").splitlines()):
        if line.startswith(">>>"):
            blocks.append(line)
        elif line.startswith("...") and blocks:
            blocks[-1] += line
    return sum("+SKIP" not in block for block in blocks)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if ">>>" in p.read_text(encoding="utf-8")}


@pytest.fixture()
def isolated_registries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Examples register things (a report view, a paired statistic): each runs on copies of the
    registries, so that no later test meets what an example registered."""
    from robustkit import plugins, studies
    from robustkit.metrics import paired
    from robustkit.report import views

    for module, attr in ((views, "VIEWS"), (paired, "PAIRED_STATISTICS"), (paired, "PAIRED_TESTS"),
                         (plugins, "_PLUGINS"), (studies, "_REGISTRY")):
        monkeypatch.setattr(module, attr, dict(getattr(module, attr)))


@pytest.mark.usefixtures("isolated_registries")
@pytest.mark.parametrize("name", sorted(MODULES))
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    out = io.StringIO()
    for test in doctest.DocTestFinder(exclude_empty=True).find(module, name):
        runner.run(test, out=out.write)
    failed, attempted = runner.summarize(verbose=False)
    assert failed == 0, out.getvalue()
    assert attempted == _examples(MODULES[name]), f"{name}: {_examples(MODULES[name])} examples, {attempted} ran"


def test_the_examples_of_issue_28_are_collected() -> None:
    from robustkit.judge import judge_threshold
    from robustkit.metrics.paired import bh_qvalues
    from robustkit.model.square import p_selection

    for fn in (bh_qvalues, judge_threshold, p_selection):
        assert doctest.DocTestParser().get_examples(fn.__doc__ or ""), fn.__name__
        assert fn.__module__ in MODULES
