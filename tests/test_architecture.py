"""The import rule of docs/architecture.md: imports go down the layers, never up, and no
package or module imports itself in a circle (not even through an import inside a
function)."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

import lofipipe

PACKAGE = Path(lofipipe.__file__).parent

# Higher imports lower (or equal); the rank of each top-level package or module.
RANK = {
    "cli": 5,
    "pipeline": 4,
    "workers": 3,
    "training": 3,
    "models": 2,
    "media": 2,
    "data": 2,
    "evaluation": 2,
    "reports": 2,
    "schemas": 1,
    "layout": 1,
    "storage": 1,
    "errors": 1,
    "": 0,  # lofipipe/__init__.py: the version, importable from anywhere
}


def component(module: str) -> str:
    """`lofipipe.data.snippets` -> `data`; `lofipipe` -> ``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The lofipipe modules `path` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from lofipipe.data import manifest` imports the module lofipipe.data.manifest
            names = [
                f"{node.module}.{alias.name}"
                for alias in node.names
                if f"{node.module}.{alias.name}" in modules
            ] or [node.module]
        else:
            continue
        found |= {name for name in names if name == "lofipipe" or name.startswith("lofipipe.")}
    return found


def package_graph() -> dict[str, set[str]]:
    """Module -> the lofipipe modules it imports."""
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: imports_of(path, set(paths)) for name, path in paths.items()}


def find_cycle(edges: Mapping[str, Iterable[str]]) -> list[str] | None:
    """One cycle of the directed graph, as the nodes along it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def violations(graph: Mapping[str, Iterable[str]]) -> list[str]:
    """Every break of the rule in a module import graph, as a line each."""
    out = []
    for source, targets in sorted(graph.items()):
        for target in sorted(targets):
            here, there = component(source), component(target)
            if here not in RANK or there not in RANK:
                out.append(f"{source} -> {target}: {here or there!r} has no layer in RANK")
            elif RANK[there] > RANK[here]:
                out.append(
                    f"{source} -> {target}: {here} (layer {RANK[here]}) imports "
                    f"{there} (layer {RANK[there]}), above it"
                )
    packages: dict[str, set[str]] = {}
    for source, targets in graph.items():
        packages.setdefault(component(source), set()).update(
            component(t) for t in targets if component(t) != component(source)
        )
    for kind, edges in (("packages", packages), ("modules", graph)):
        if cycle := find_cycle(edges):
            out.append(f"circle of {kind}: {' -> '.join(cycle)}")
    return out


def test_imports_go_down_the_layers_without_circles():
    graph = package_graph()
    assert len(graph) > 50 and "lofipipe.pipeline.ingest" in graph
    assert violations(graph) == []


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        (
            {"lofipipe.data.manifest": {"lofipipe.pipeline.ingest"}},
            "data (layer 2) imports pipeline (layer 4), above it",
        ),
        (
            {"lofipipe.storage": {"lofipipe.workers.runtime"}},
            "storage (layer 1) imports workers (layer 3), above it",
        ),
        (
            {
                "lofipipe.data.a": {"lofipipe.evaluation.b"},
                "lofipipe.evaluation.b": {"lofipipe.data.c"},
            },
            "circle of packages: data -> evaluation -> data",
        ),
        (
            {"lofipipe.data.a": {"lofipipe.data.b"}, "lofipipe.data.b": {"lofipipe.data.a"}},
            "circle of modules: lofipipe.data.a -> lofipipe.data.b -> lofipipe.data.a",
        ),
        ({"lofipipe.newthing.a": {"lofipipe.errors"}}, "'newthing' has no layer in RANK"),
    ],
)
def test_the_rule_catches_upward_imports_circles_and_unplaced_packages(graph, expected):
    assert any(expected in line for line in violations(graph)), violations(graph)


def test_imports_inside_functions_count(tmp_path):
    module = tmp_path / "m.py"
    module.write_text(
        "def f():\n    from lofipipe.pipeline.job import run_job\n"
        "import lofipipe.data.manifest\nfrom lofipipe.data import snippets\n"
    )
    assert imports_of(module, {"lofipipe.data.snippets"}) == {
        "lofipipe.pipeline.job",
        "lofipipe.data.manifest",
        "lofipipe.data.snippets",
    }
