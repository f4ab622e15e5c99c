"""``.ci/mutation.py`` cannot rot silently: every named mutation's ``old`` snippet occurs
exactly once in its file (a refactor that moves the code makes this test fail, not the
on-demand mutation run weeks later), it injects a change, and its tests exist. No
TensorFlow, no pytest run per mutant: only the source texts are read."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


def _mutation_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("robustkit_ci_mutation", REPO / ".ci" / "mutation.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up while the class is built
    spec.loader.exec_module(module)
    return module


MUTATIONS = _mutation_module().MUTATIONS


def test_the_list_is_not_empty_and_names_are_unique() -> None:
    names = [m.name for m in MUTATIONS]
    assert len(names) > 100
    assert len(set(names)) == len(names), sorted(n for n in names if names.count(n) > 1)


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.name)
def test_each_mutation_matches_its_file_exactly_once(mutation) -> None:
    text = (REPO / mutation.path).read_text()
    assert text.count(mutation.old) == 1, (
        f"{mutation.name!r}: its old snippet occurs {text.count(mutation.old)} times in {mutation.path}")
    assert mutation.new != mutation.old
    assert mutation.group in ("pure", "faults")


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.name)
def test_each_mutation_runs_existing_tests(mutation) -> None:
    assert mutation.tests, f"{mutation.name!r} names no tests"
    for test in mutation.tests:
        assert (REPO / test.partition("::")[0]).is_file(), f"{mutation.name!r}: {test} does not exist"
