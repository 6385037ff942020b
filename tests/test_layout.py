"""The package's shape: stages import only earlier stages, no import cycle, no oversized module, README's table.

Imports are read off the source (ast), not off a running interpreter, so every import counts:
module level, function-local (lazy), ``TYPE_CHECKING`` blocks, relative ones and
``importlib.import_module("...")`` with a literal name.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sentex"
MAX_LINES = 420  # "no file much over ~400 lines"

# The pipeline's stages in order (README "Layout"): a module may import its own stage and earlier ones only.
STAGES: dict[str, int] = {
    "data": 0,
    "models": 1,
    "training": 2,
    "evaluation": 3,
    "alignment": 4,
    "deploy": 5,
    "app": 6,
    "cli": 6,
    "sweep": 6,
    "align_command": 6,
    "__main__": 6,
}
# Foundations any stage may import. They sit with the first stage: importing one must not reach a later stage.
FOUNDATIONS = ("io", "errors", "metrics", "version")
# The package root is the public facade (``sentex.load`` re-exports the deploy stage), so it counts as the top.
TOP = max(STAGES.values())


def module_name(path: Path, root: Path = ROOT) -> str:
    """``sentex/deploy/load.py`` → ``sentex.deploy.load``; a package's ``__init__.py`` is the package."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(name: str, modules: set[str]) -> str | None:
    """The module ``name`` means: itself, or the nearest enclosing module (``pkg.mod.attr`` → ``pkg.mod``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imported_names(source: str, module: str, is_package: bool) -> list[str]:
    """Every dotted name ``source`` imports, wherever in the file; relative imports made absolute.

    A ``from a import b`` yields ``a.b``: :func:`resolve` makes it ``a.b`` when ``b`` is a submodule, else ``a``.
    """
    package = module if is_package else module.rpartition(".")[0]
    names: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # ``from ..x import y``: ``level - 1`` packages up from this module's package
                parts = package.split(".")
                anchor = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            names += [f"{base}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                names.append(node.args[0].value)
    return names


def imports_of(source: str, module: str, modules: set[str], is_package: bool = False) -> set[str]:
    """The sentex modules ``source`` (the text of ``module``) imports, itself excluded."""
    found = {resolve(name, modules) for name in imported_names(source, module, is_package)}
    return {name for name in found if name is not None and name != module}


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module → the sentex modules it imports, for every module under ``root/sentex``."""
    files = {module_name(p, root): p for p in (root / "sentex").rglob("*.py")}
    return {
        name: imports_of(path.read_text(encoding="utf-8"), name, set(files), path.name == "__init__.py")
        for name, path in files.items()
    }


def stage_of(module: str) -> int:
    """The stage number of a sentex module (see :data:`STAGES`); a package that is in no stage fails the test."""
    parts = module.split(".")
    if len(parts) == 1:
        return TOP
    if parts[1] in FOUNDATIONS:
        return STAGES["data"]
    assert parts[1] in STAGES, f"sentex.{parts[1]} is in no stage: add it to STAGES or FOUNDATIONS (and README)"
    return STAGES[parts[1]]


def upward_imports(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    """Every ``(module, imported)`` where ``imported`` belongs to a later stage than ``module``."""
    return {(name, dep) for name, deps in graph.items() for dep in deps if stage_of(dep) > stage_of(name)}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A list of modules forming a cycle, or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


# --- the checker itself -----------------------------------------------------------------------
MODULES = {"sentex", "sentex.data", "sentex.data.tweets", "sentex.deploy", "sentex.deploy.load", "sentex.errors"}


def test_every_kind_of_import_is_seen() -> None:
    source = """
from typing import TYPE_CHECKING
import sentex.errors
if TYPE_CHECKING:
    from sentex.deploy.load import Extractor
def lazy():
    from sentex.deploy import load
    from . import tweets
    import importlib
    importlib.import_module("sentex.deploy")
"""
    found = imports_of(source, "sentex.data.folds", MODULES)
    assert found == {"sentex.errors", "sentex.deploy.load", "sentex.deploy", "sentex.data.tweets"}
    assert imports_of("from .. import errors", "sentex.data", MODULES, is_package=True) == {"sentex.errors"}
    assert imports_of("from sentex import load", "sentex.data.tweets", MODULES) == {"sentex"}  # the facade


def test_stage_check_catches_an_upward_import_in_a_function() -> None:
    lazy = "def f():\n    from sentex.deploy.load import load"
    graph = {
        "sentex.data.tweets": imports_of(lazy, "sentex.data.tweets", MODULES),
        "sentex.deploy.load": {"sentex.data.tweets", "sentex.errors"},
        "sentex.metrics": {"sentex.data.tweets"},  # a foundation may use the first stage
    }
    assert upward_imports(graph) == {("sentex.data.tweets", "sentex.deploy.load")}
    assert upward_imports({"sentex.errors": {"sentex.models.base"}}) == {("sentex.errors", "sentex.models.base")}


def test_cycle_finder_finds_a_constructed_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


# --- the package ------------------------------------------------------------------------------
def test_no_stage_imports_a_later_stage() -> None:
    graph = import_graph()
    assert "sentex.deploy.load" in graph["sentex.deploy.exported"]  # the graph sees real edges
    new = sorted(upward_imports(graph))
    assert not new, (
        "a module imports a later stage (order: "
        + " < ".join(STAGES)
        + "): "
        + "; ".join(f"{name} imports {dep}" for name, dep in new)
    )


def test_no_import_cycle_between_sentex_modules() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_the_export_writer_does_not_import_the_loader() -> None:
    """``sentex export`` and ``sentex.load`` share :mod:`sentex.deploy.assembly`; the writer needs no reader."""
    graph = import_graph()
    assert "sentex.deploy.load" not in graph["sentex.deploy.export"]
    assert "sentex.deploy.assembly" in graph["sentex.deploy.export"]


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_is_much_over_400_lines(path: Path) -> None:
    assert len(path.read_text(encoding="utf-8").splitlines()) <= MAX_LINES


def test_readme_layout_table_names_every_stage_package() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("## Layout") :]
    listed = set(re.findall(r"`(sentex/[\w/]+)/`", table))
    packages = {str(p.parent.relative_to(ROOT)) for p in PACKAGE.rglob("*/__init__.py")}
    assert packages <= listed, f"missing from README's layout table: {sorted(packages - listed)}"
    for path in re.findall(r"`((?:sentex|configs|bench|tests)/[\w/.]+)`", table):
        assert (ROOT / path).exists(), f"README's layout table names {path}, which does not exist"
