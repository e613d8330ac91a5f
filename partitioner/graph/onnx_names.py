"""Canonical, unique ONNX node names: the ids shared by the layer DAG, plans, splits and profiles.

ONNX leaves node names optional and does not require uniqueness, yet every stage keys nodes by name.
All stages call `unique_node_names` (or `name_nodes_uniquely`) so that they agree on the ids.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol


class _NodeLike(Protocol):
    name: str
    op_type: str


def unique_node_names(nodes: Iterable[_NodeLike]) -> list[str]:
    """Ids for `nodes` in order: a node keeps its name when non-empty and unseen, else gets
    `<op_type>_<index>` (index = position in the graph), suffixed `_<k>` until unique."""
    nodes = list(nodes)
    taken = {node.name for node in nodes if node.name}
    seen: set[str] = set()
    names: list[str] = []
    for index, node in enumerate(nodes):
        name = node.name
        if not name or name in seen:
            base = f"{node.op_type}_{index}"
            name, k = base, 1
            while name in taken or name in seen:
                name, k = f"{base}_{k}", k + 1
        seen.add(name)
        names.append(name)
    return names


def name_nodes_uniquely(graph: "object") -> list[str]:
    """Rename the nodes of an `onnx.GraphProto` in place to their canonical ids and return them."""
    nodes = graph.node  # type: ignore[attr-defined]
    names = unique_node_names(nodes)
    for node, name in zip(nodes, names):
        node.name = name
    return names
