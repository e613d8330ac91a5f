"""Fold constant subgraphs into initializers, so that the planner sees only the compute graph.

Why: many exported models compute their weights at run time (old ONNX zoo models build every weight with
`ConstantOfShape` / `Constant` / arithmetic chains; exporters emit `Constant` nodes for shapes and
scalars). As layers, such nodes have no input from the graph: a chain baseline cuts the node order where
they all come first and ships the weights over the link, and plots drown in them. They depend on no
graph input, so their values are the same for every request: compute them once, here, and store them as
initializers, where they are what they always were — parameters of the nodes that read them.

A node is folded when every input it reads (including outer-scope names its subgraphs read) is an
initializer that is not also a graph input (such a default can be overridden) or a folded tensor, it is a deterministic op of the standard domain without subgraphs, and
none of its outputs is a graph output (a stage must produce every graph output). The values come from
onnxruntime itself, so they are exactly what running the model would compute. Node names must be
canonical before folding (`partitioner.graph.onnx_names`): the nodes that stay keep their ids.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

from devices.errors import first_line
from devices.sessions import make_session
from partitioner.graph.onnx_reads import STANDARD_DOMAINS, node_inputs

logger = logging.getLogger(__name__)

# Not constant even with constant inputs: a fresh draw per run.
NONDETERMINISTIC_OPS = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                                  "Multinomial", "Bernoulli", "Dropout"})


def _foldable(node: onnx.NodeProto) -> bool:
    if node.domain not in STANDARD_DOMAINS or node.op_type in NONDETERMINISTIC_OPS:
        return False
    return not any(attribute.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                   for attribute in node.attribute)


def constant_nodes(graph: onnx.GraphProto) -> list[int]:
    """Positions of the nodes whose outputs are the same for every input (see the module docstring)."""
    overridable = {item.name for item in graph.input}  # an initializer listed as input may be fed instead
    constant = {item.name for item in graph.initializer} - overridable
    graph_outputs = {item.name for item in graph.output}
    positions = []
    for position, node in enumerate(graph.node):
        if (_foldable(node) and all(name in constant for name in node_inputs(node))
                and not any(name in graph_outputs for name in node.output)):
            positions.append(position)
            constant.update(name for name in node.output if name)
    return positions


def fold_constants(model: onnx.ModelProto) -> list[str]:
    """Replace the constant nodes of `model` (in place) by initializers holding their values; return the
    names of the nodes removed. When onnxruntime cannot evaluate them the model is left as it was."""
    graph = model.graph
    positions = constant_nodes(graph)
    if not positions:
        return []
    folded = [graph.node[position] for position in positions]
    folded_set = set(positions)
    kept = [node for position, node in enumerate(graph.node) if position not in folded_set]
    made = {name for node in folded for name in node.output if name}
    read_by_kept = {name for node in kept for name in node_inputs(node)}
    needed = [name for node in folded for name in node.output if name in read_by_kept]
    try:
        values = _evaluate(model, folded, needed) if needed else {}
        weights = [numpy_helper.from_array(values[name], name) for name in needed]
    except Exception as error:  # onnxruntime (and numpy_helper, on an exotic dtype) raise their own types
        logger.warning("constant folding skipped: onnxruntime could not evaluate %d constant node(s) (%s)",
                       len(folded), first_line(error))
        return []
    del graph.node[:]
    graph.node.extend(kept)
    still_read = read_by_kept | {item.name for item in graph.output}
    unused = [item for item in graph.initializer if item.name not in still_read]
    for item in unused:
        graph.initializer.remove(item)
    graph.initializer.extend(weights)
    stale = [item for item in graph.value_info if item.name in made]
    for item in stale:
        graph.value_info.remove(item)
    logger.info("folded %d constant node(s) into %d initializer(s)", len(folded), len(needed))
    return [node.name for node in folded]


def _evaluate(model: onnx.ModelProto, nodes: list[onnx.NodeProto], outputs: list[str]) -> dict[str, np.ndarray]:
    """The values of `outputs`, computed by onnxruntime from `nodes` and the model's initializers."""
    read = {name for node in nodes for name in node_inputs(node)}
    graph = helper.make_graph(
        nodes, "constants", [], [onnx.ValueInfoProto(name=name) for name in outputs],
        [item for item in model.graph.initializer if item.name in read])
    sub = helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    sub = onnx.shape_inference.infer_shapes(sub)
    typed = {item.name: item for item in sub.graph.value_info}
    for output in sub.graph.output:
        if not output.type.HasField("tensor_type") and output.name in typed:
            output.CopyFrom(typed[output.name])
    session = make_session(sub.SerializeToString(), 1, optimize=False)
    return dict(zip(outputs, (np.asarray(value) for value in session.run(outputs, {}))))
