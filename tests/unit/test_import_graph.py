"""Who may import whom: no cycles between the packages, and each library in its own room.

The graph's nodes are the top-level modules and packages of ``modaclouds_batch``, with one
exception: ``jobs/states.py`` (the one state vocabulary) is a node of its own, since every
layer names states and the module imports nothing of the package. A cycle anywhere else
fails with the path that closes it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "modaclouds_batch"
VOCABULARY = "jobs.states"
# Third-party libraries and the only places that may import them.
ROOMS = {
    "falcon": ("api", "dialects", "app", "observability"),
    "htcondor2": ("condor",),
    "classad2": ("condor",),
    "sqlite_utils": ("store",),
    "sqlite3": ("store",),
}


def node_of(module: tuple[str, ...]) -> str:
    dotted = ".".join(module)
    if dotted == VOCABULARY or dotted.startswith(VOCABULARY + "."):
        return VOCABULARY
    return module[0]


def modules() -> dict[tuple[str, ...], ast.Module]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        found[parts or ("__init__",)] = ast.parse(path.read_text(encoding="utf-8"))
    return found


def imports(module: tuple[str, ...], tree: ast.Module, is_package: bool):
    """(('modaclouds_batch'-relative target parts) or None, top-level name) of every import."""
    here = list(module) if is_package else list(module[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield None, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                yield None, (node.module or "").split(".")[0]
                continue
            base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
            target = base + (node.module.split(".") if node.module else [])
            if not target:  # `from .. import x`: the names are modules of the package
                for alias in node.names:
                    yield (alias.name,), None
            elif node.module is None:
                for alias in node.names:
                    yield tuple(target + [alias.name]), None
            else:
                yield tuple(target), None


def package_graph() -> dict[str, set[str]]:
    found = modules()
    packages = {m for m in found if (PACKAGE.joinpath(*m) / "__init__.py").exists()}
    graph: dict[str, set[str]] = {}
    for module, tree in found.items():
        source = node_of(module)
        for target, _ in imports(module, tree, module in packages):
            if target:
                sink = node_of(target)
                if sink != source:
                    graph.setdefault(source, set()).add(sink)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_packages_import_in_one_direction_only():
    cycle = find_cycle(package_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_state_vocabulary_imports_nothing_of_the_package():
    assert package_graph().get(VOCABULARY, set()) <= {"errors"}


def test_find_cycle_finds_a_cycle_it_is_given():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}}) is None


@pytest.mark.parametrize("library, rooms", sorted(ROOMS.items()))
def test_each_library_is_imported_only_in_its_rooms(library, rooms):
    found = modules()
    packages = {m for m in found if (PACKAGE.joinpath(*m) / "__init__.py").exists()}
    outside = sorted(".".join(module) for module, tree in found.items()
                     if module[0] not in rooms
                     and any(name == library for _, name in imports(module, tree, module in packages)))
    assert outside == [], f"{library} is imported outside {rooms}: {outside}"
