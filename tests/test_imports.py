"""No import circle between the modules of hl7_alerts, at module level.

Read with `ast`, never by importing: every ``import``/``from ... import``
that runs when a module is loaded counts, including those under
``if TYPE_CHECKING:`` (a circle mypy follows is still a circle a reader
follows) and those in class bodies; imports inside functions do not (they run
when called, and are how optional backends such as psycopg load).

An import of ``a.b.c`` depends on ``a.b.c`` and on the packages above it
(Python runs their ``__init__`` first), except the packages above the
importing module itself: those are already loading, and a package that
re-exports its own submodules is not a circle. ``from a.b import c`` reads
``a.b``'s namespace, so it depends on ``a.b`` even from inside ``a.b``
(that is how ``rules/__init__`` and ``rules/engine`` were a circle), and on
``a.b.c`` when ``c`` is a submodule.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "hl7_alerts"
ROOT = PACKAGE.name


def module_names() -> dict[str, Path]:
    """Every module of the package by dotted name (packages by their __init__)."""
    out: dict[str, Path] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def module_level_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements that run when the module is loaded: everywhere but
    inside function bodies (so ``if TYPE_CHECKING:``, ``try:`` and class
    bodies count)."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                yield child
            stack.append(child)


def ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def dependencies(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that loading ``name`` loads first."""
    is_package = path.name == "__init__.py"
    own_package = name if is_package else name.rpartition(".")[0]
    named: set[str] = set()  # modules an import statement names (and reads)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in module_level_imports(tree):
        if isinstance(node, ast.Import):
            named.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = own_package.split(".")
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, *([base] if base else [])])
        named.add(base)
        named.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules)
    named = {n for n in named if n in modules}
    above = set(ancestors(name))
    implied = {a for n in named for a in ancestors(n) if a in modules and a not in above}
    return (named | implied) - {name}


def graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: dependencies(name, path, modules) for name, path in modules.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan),
    each as one circle through it, for the failure message."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in sorted(edges.get(node, ())):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return [path_through(group, edges) for group in groups]


def path_through(group: list[str], edges: dict[str, set[str]]) -> list[str]:
    """One circle inside a strongly connected group, from its first member."""
    members = set(group)
    start = group[0]
    # Breadth-first from start back to start, staying inside the group.
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for dep in sorted(edges[node] & members):
                if dep == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, node, start]
                if dep not in previous:
                    previous[dep] = node
                    following.append(dep)
        frontier = following
    return group


def test_no_import_circle_at_module_level() -> None:
    found = circles(graph())
    assert not found, "import circles (TYPE_CHECKING imports included):\n" + "\n".join(
        " -> ".join(c) for c in found
    )


def test_the_finder_sees_a_circle(tmp_path: Path) -> None:
    edges = {"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}, "p.d": {"p.a"}}
    assert circles(edges) == [["p.a", "p.b", "p.c", "p.a"]]
    assert circles({"p.a": {"p.b"}, "p.b": set()}) == []


def test_what_counts_as_an_import(tmp_path: Path) -> None:
    modules = module_names()
    module = tmp_path / "mod.py"

    def deps(name: str, source: str) -> set[str]:
        module.write_text(source)
        return dependencies(name, module, modules)

    type_checking = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from hl7_alerts.config import Config\n"
    assert deps("hl7_alerts.x", type_checking) == {"hl7_alerts.config"}
    assert deps("hl7_alerts.x", "def f():\n    from hl7_alerts.config import Config\n") == set()
    assert deps("hl7_alerts.x", "class C:\n    import hl7_alerts.config\n") == {"hl7_alerts.config"}
    # Outside a package, a submodule import runs the package's __init__ too;
    # inside it, the __init__ is already running.
    base = "from hl7_alerts.store.base import Store\n"
    assert deps("hl7_alerts.x", base) == {"hl7_alerts.store", "hl7_alerts.store.base"}
    assert deps("hl7_alerts.store.x", base) == {"hl7_alerts.store.base"}
    # Reading a package's namespace depends on it, even from inside.
    assert deps("hl7_alerts.rules.x", "from hl7_alerts.rules import liver\n") == {
        "hl7_alerts.rules", "hl7_alerts.rules.liver"
    }
    assert deps("hl7_alerts.rules.x", "from . import liver\n") == {"hl7_alerts.rules", "hl7_alerts.rules.liver"}
    assert deps("hl7_alerts.x", "import json\nimport structlog\n") == set()
