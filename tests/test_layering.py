"""The architecture of docs/architecture.md §2, checked on the source: imports point down and no module
imports one that imports it back (lazy imports inside functions count too: a cycle is a cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("devices", "partitioner", "robust_training", "edgecloud")
# Which packages each may import. robust_training's core is transport-free; edgecloud is the top.
ALLOWED = {
    "devices": {"devices"},
    "partitioner": {"partitioner", "devices"},
    "robust_training": {"robust_training"},
    "edgecloud": set(PACKAGES),
}


def _import_graph() -> nx.DiGraph:
    graph = nx.DiGraph()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            graph.add_node(module)
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    targets = [node.module]
                elif isinstance(node, ast.Import):
                    targets = [alias.name for alias in node.names]
                else:
                    continue
                for target in targets:
                    if target.split(".")[0] in PACKAGES:
                        graph.add_edge(module, target)
    return graph


def test_imports_point_down() -> None:
    wrong = sorted((a, b) for a, b in _import_graph().edges if b.split(".")[0] not in ALLOWED[a.split(".")[0]])
    assert not wrong, wrong


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = _import_graph()
    # a package's __init__ re-exporting its modules is how Python packages work, not a cycle of ours
    graph.remove_edges_from([(a, b) for a, b in graph.edges if b == a.rsplit(".", 1)[0]])
    cycles = [cycle for cycle in nx.simple_cycles(graph) if len(cycle) > 1]
    assert not cycles, cycles


# Stages inside a package, lowest first: a module may import its own stage or a lower one.
STAGES = {
    "partitioner": ("errors", "units", "graph", "costs", "solve", "plan", "split", "models"),
    "edgecloud": ("errors", "transport", "serving", "training", "calibration", "testbed", "cli"),
}


def _stage(module: str) -> tuple[str, int] | None:
    parts = module.split(".")
    if parts[0] not in STAGES or len(parts) < 2 or parts[1] not in STAGES[parts[0]]:
        return None
    return parts[0], STAGES[parts[0]].index(parts[1])


def test_stages_inside_a_package_point_down() -> None:
    wrong = []
    for a, b in _import_graph().edges:
        source, target = _stage(a), _stage(b)
        if source and target and source[0] == target[0] and target[1] > source[1]:
            wrong.append((a, b))
    assert not sorted(wrong), sorted(wrong)
