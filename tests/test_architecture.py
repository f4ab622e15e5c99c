"""The house's shape: no import circle anywhere in robustkit/ (lazy imports inside functions
count; imports under ``if TYPE_CHECKING:`` do not, they never run). The layer contracts
themselves are import-linter's (``lint-imports``, in ``.ci/run``)."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "robustkit"


def _module_names() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _runtime_imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """The robustkit modules ``path`` imports when it runs (``from a import b`` names module
    ``a.b`` when that is one, else ``a``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(node) for guard in ast.walk(tree)
                   if isinstance(guard, ast.If) and "TYPE_CHECKING" in ast.unparse(guard.test)
                   for node in ast.walk(guard)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
    return {m for m in found if m in modules and m != name}


def test_no_import_circle_in_the_package() -> None:
    modules = _module_names()
    graph = {name: _runtime_imports(path, name, set(modules)) for name, path in modules.items()}
    assert len(graph) > 50 and graph["robustkit.card"] >= {"robustkit.card_blocks", "robustkit.task"}
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as exc:
        circle = exc.args[1]
        raise AssertionError("import circle: " + " -> ".join(circle)) from None


def test_the_check_sees_a_lazy_circle(tmp_path: Path) -> None:
    """The graph reader finds an import inside a function and skips a TYPE_CHECKING one."""
    a = tmp_path / "a.py"
    a.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import robustkit.task\n"
                 "def f():\n    from robustkit import results\n")
    assert _runtime_imports(a, "robustkit.a", {"robustkit.results", "robustkit.task", "robustkit"}) == {
        "robustkit.results"}


#: a study's pure side: its reduce modules and what they import (DESIGN: "A study's reduce imports
#: nothing from the model side"); pyproject.toml's import-linter contract names the same modules
PURE_STUDY_MODULES = ("robustkit.studies.adversarial.reduce", "robustkit.studies.adversarial.exclusive",
                      "robustkit.studies.adversarial.checks", "robustkit.studies.adversarial.config",
                      "robustkit.studies.ood_reduce", "robustkit.studies.condition_reduce", "robustkit.studies.smoothing_reduce",
                      "robustkit.studies.saliency.reduce", "robustkit.studies.saliency.report_data",
                      "robustkit.studies.saliency.layout")


def _reached(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module ``start`` imports at run time, directly or through others (parent packages
    not counted: importing ``a.b`` runs ``a/__init__`` only the first time, as it does anyway)."""
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), set()) - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_a_study_reduce_reaches_nothing_of_the_model_side() -> None:
    modules = _module_names()
    graph = {name: _runtime_imports(path, name, set(modules)) for name, path in modules.items()}
    for name in PURE_STUDY_MODULES:
        assert name in graph, name
        model_side = sorted(m for m in _reached(graph, name) if m.startswith(("robustkit.model", "robustkit._tf")))
        assert not model_side, f"{name} imports the model side: {model_side}"
    reduces = {n for n in modules if n.startswith("robustkit.studies.") and n.rpartition(".")[2].endswith("reduce")}
    assert reduces <= set(PURE_STUDY_MODULES), f"a reduce module not held pure here: {reduces - set(PURE_STUDY_MODULES)}"


def test_the_pure_study_modules_are_the_import_contract() -> None:
    """The import-linter contract (run by ``.ci/run``) lists the same modules as the test above."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    config = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text(encoding="utf-8"))
    contracts = [c for c in config["tool"]["importlinter"]["contracts"] if c["name"].startswith("A study's reduce")]
    assert len(contracts) == 1 and sorted(contracts[0]["source_modules"]) == sorted(PURE_STUDY_MODULES)
    assert "robustkit.model" in contracts[0]["forbidden_modules"]
