"""The package's shape: no import cycles (lazy imports included), no oversized module, README's layout table."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sentex"
MAX_LINES = 420  # "no file much over ~400 lines"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Every sentex module ``path`` imports, at the top or inside a function (lazy imports count)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from pkg import name`` may name a submodule or an attribute of the package
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != "sentex":  # the root only re-exports lazily; it is no stage
                found.add(name)
                break
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imports_of(path, set(files)) - {name} for name, path in files.items()}


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


def test_cycle_finder_finds_a_constructed_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_between_sentex_modules() -> None:
    graph = import_graph()
    assert "sentex.deploy.load" in graph["sentex.deploy.exported"]  # the graph sees real edges
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_models_never_import_the_later_stages() -> None:
    graph = import_graph()
    for name, deps in graph.items():
        if name.startswith("sentex.models") and name != "sentex.models.dpo":  # dpo: alias for old class paths
            later = {d for d in deps if d.startswith(("sentex.alignment", "sentex.deploy", "sentex.app", "sentex.cli"))}
            assert not later, f"{name} imports {later}"


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
