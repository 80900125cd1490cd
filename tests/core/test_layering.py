"""The packages depend on each other one way, as DESIGN.md draws it.

    core (kvstore/*.py) -> prefix_index, eviction, kernels -> ssd -> store
        -> transport -> admin, metrics, cluster -> daemon -> client -> demo

Read from the source with ``ast`` (nothing is imported): every ``import`` of
a ``kvstore`` module, at any depth of a module, counts, except those under
``if TYPE_CHECKING:`` (annotations only). A package may import its own
level or any level below; never one above, and the package graph has no
cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOP_LEVEL = {"prefix_index", "eviction", "transport", "kernels", "client"}
INNER = {"store", "ssd", "daemon", "admin", "metrics", "cluster", "demo"}
RANK = {
    "core": 0,
    "prefix_index": 1, "eviction": 1, "kernels": 1,
    "ssd": 2,
    "store": 3,
    "transport": 4,
    "admin": 5, "metrics": 5, "cluster": 5,
    "daemon": 6,
    "client": 7,
    "demo": 8,
}
# Entry points, not library modules: `python -m kvstore` runs the CLI.
ENTRY_POINTS = {"kvstore.__main__"}
MAX_ROOT_MODULES = 12


def package_files() -> dict[str, Path]:
    """``module name -> file`` for every module the distribution installs."""
    files = {}
    for path in (ROOT / "kvstore").rglob("*.py"):
        rel = path.relative_to(ROOT / "kvstore").with_suffix("")
        files[".".join(("kvstore", *rel.parts))] = path
    for top in TOP_LEVEL:
        for path in (ROOT / top).rglob("*.py"):
            rel = path.relative_to(ROOT / top).with_suffix("")
            files[".".join(("kvstore", top, *rel.parts))] = path
    return {name.removesuffix(".__init__"): path for name, path in files.items()}


def package_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in TOP_LEVEL | INNER:
        return parts[1]
    return "core"


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module == "kvstore":  # `from kvstore import layout`: a module or a name
                found.update(f"kvstore.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return {name for name in found if name == "kvstore" or name.startswith("kvstore.")}


def package_edges() -> dict[tuple[str, str], list[str]]:
    modules = package_files()
    edges: dict[tuple[str, str], list[str]] = {}
    for module, path in modules.items():
        if module in ENTRY_POINTS:
            continue
        src = package_of(module)
        for target in imported_modules(path):
            if target not in modules and target.rpartition(".")[0] in modules:
                target = target.rpartition(".")[0]  # `from kvstore.x import name`
            dst = package_of(target)
            if dst != src:
                edges.setdefault((src, dst), []).append(f"{module} -> {target}")
    return edges


def test_every_module_belongs_to_a_ranked_package():
    packages = {package_of(m) for m in package_files()}
    assert packages == set(RANK), packages ^ set(RANK)


def test_no_package_imports_a_higher_layer():
    upward = {
        edge: where for edge, where in package_edges().items() if RANK[edge[1]] > RANK[edge[0]]
    }
    assert not upward, "\n".join(f"{a} -> {b}: {w[:3]}" for (a, b), w in upward.items())


def test_package_graph_has_no_cycle():
    graph: dict[str, set[str]] = {}
    for src, dst in package_edges():
        graph.setdefault(src, set()).add(dst)
    state: dict[str, int] = {}

    def walk(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                pytest.fail("package cycle: " + " -> ".join([*trail, node, nxt]))
            if nxt not in state:
                walk(nxt, [*trail, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node, [])


def test_kvstore_root_holds_only_the_core_types():
    root_modules = sorted(p.stem for p in (ROOT / "kvstore").glob("*.py"))
    assert len(root_modules) <= MAX_ROOT_MODULES, root_modules
    for name in INNER:
        assert (ROOT / "kvstore" / name / "__init__.py").is_file(), name


def test_the_checker_sees_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from kvstore.client import KVClient\n"
        "def f():\n    from kvstore.daemon.config import DaemonConfig\n"
    )
    assert imported_modules(bad) == {"kvstore.daemon.config"}
