"""Which tensors an ONNX node reads, including those its subgraphs (If/Loop/Scan bodies) take from the
enclosing graph without listing them as inputs.

The layer DAG draws its edges from this and the splitter decides what crosses a stage boundary from it:
both must agree, or a control-flow node could be cut away from a tensor its body needs.
"""

from __future__ import annotations

import onnx

#: The domains of the ONNX operator set proper (custom ops live in others).
STANDARD_DOMAINS = frozenset({"", "ai.onnx"})


def node_inputs(node: onnx.NodeProto) -> list[str]:
    """Every tensor name `node` reads, each once: its explicit inputs, then outer-scope names its
    subgraphs use (read by an inner node, or passed straight through as a subgraph output)."""
    names = [name for name in node.input if name]
    for attribute in node.attribute:
        for graph in _subgraphs(attribute):
            names.extend(_outer_scope_names(graph))
    return list(dict.fromkeys(names))


def _subgraphs(attribute: onnx.AttributeProto) -> list[onnx.GraphProto]:
    if attribute.type == onnx.AttributeProto.GRAPH:
        return [attribute.g]
    if attribute.type == onnx.AttributeProto.GRAPHS:
        return list(attribute.graphs)
    return []


def _outer_scope_names(graph: onnx.GraphProto) -> list[str]:
    defined = {item.name for item in graph.input} | {item.name for item in graph.initializer}
    used: list[str] = []
    for node in graph.node:
        used.extend(name for name in node_inputs(node) if name not in defined)
        defined.update(node.output)
    used.extend(item.name for item in graph.output if item.name not in defined)
    return used
