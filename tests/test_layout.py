"""The offline sub-packages depend on each other one way only: data ← features ← training ←
evaluation ← release. Imports inside functions count as much as those at the top of a module."""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from pathlib import Path

import endcap

LAYERED = ("data", "features", "training", "evaluation", "release")
"""Sub-packages of which no two may depend on each other, directly or through other sub-packages."""


def _package_roots() -> dict[str, Path]:
    """``endcap``'s own directory and the directories mapped to its sub-packages (the editable
    install maps ``endcap.plugins`` and ``endcap.feature_repo`` to directories of their own)."""
    core = Path(endcap.__file__).parent
    roots = {"": core}
    for name in ("plugins", "feature_repo"):
        module = __import__(f"endcap.{name}", fromlist=["__file__"])
        roots[name] = Path(module.__file__).parent
    return roots


def _sub_package(module: str) -> str | None:
    """``endcap.training.fit`` → ``training``; ``None`` for modules outside ``endcap``."""
    parts = module.split(".")
    return parts[1] if parts[0] == "endcap" and len(parts) > 1 else None


def _imported_modules(tree: ast.AST) -> Iterator[tuple[str, int]]:
    """Every absolute import anywhere in ``tree`` (``from a import b`` yields ``a`` and ``a.b``), with its line."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, node.lineno
            for alias in node.names:
                yield f"{node.module}.{alias.name}", node.lineno


def import_graph() -> dict[str, dict[str, str]]:
    """``sub-package → {imported sub-package: where (file:line of the first such import)}``.
    A top-level module (``endcap.config``) counts as a sub-package of its own."""
    graph: dict[str, dict[str, str]] = {}
    for prefix, directory in _package_roots().items():
        for path in sorted(directory.rglob("*.py")):
            relative = path.relative_to(directory)
            if prefix:
                source = prefix
            elif relative.parts[0] in _package_roots() or ".venv" in relative.parts:
                continue
            else:
                source = relative.with_suffix("").parts[0]
            edges = graph.setdefault(source, {})
            for module, line in _imported_modules(ast.parse(path.read_text(), str(path))):
                target = _sub_package(module)
                if target is not None and target != source and target not in edges:
                    edges[target] = f"{path.relative_to(directory.parent)}:{line}"
    return graph


def path_between(graph: dict[str, dict[str, str]], start: str, goal: str) -> list[str] | None:
    """The sub-packages on an import path from ``start`` to ``goal`` (both included), or ``None``."""
    came_from: dict[str, str] = {start: start}
    frontier = [start]
    while frontier:
        current = frontier.pop(0)
        if current == goal:
            path = [goal]
            while path[-1] != start:
                path.append(came_from[path[-1]])
            return path[::-1]
        for target in graph.get(current, {}):
            if target not in came_from:
                came_from[target] = current
                frontier.append(target)
    return None


def describe(graph: dict[str, dict[str, str]], path: list[str]) -> str:
    return " -> ".join(f"{a} ({graph[a][b]}) " for a, b in itertools.pairwise(path)) + f"-> {path[-1]}"


def test_the_graph_sees_imports_inside_functions() -> None:
    graph = import_graph()
    assert "features" in graph["training"]
    assert "training" in graph["evaluation"]  # evaluate_target imports train inside the function
    assert "cli" not in graph["training"]


def test_offline_sub_packages_do_not_depend_on_each_other_both_ways() -> None:
    graph = import_graph()
    cycles = []
    for i, first in enumerate(LAYERED):
        for second in LAYERED[i + 1 :]:
            there, back = path_between(graph, first, second), path_between(graph, second, first)
            if there and back:
                cycles.append(f"{describe(graph, there)}; and back: {describe(graph, back)}")
    assert not cycles, "import cycle between sub-packages (move the shared part down a layer):\n" + "\n".join(cycles)
