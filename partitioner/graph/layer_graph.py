"""ONNX model -> layer DAG: the nodes the planner places, the tensors it may send, what each costs.

Nodes are ONNX ops keyed by their canonical ids (`partitioner.graph.onnx_names`), or fused layers of several
ops. Every tensor's bytes are exact for the chosen batch size: prod(shape) * itemsize after shape
inference. FLOPs follow `partitioner.graph.flops` (a multiply-add is 2 FLOPs).

Parameters: an initializer counts in `param_bytes` of every node that reads it (each device that runs
one of its consumers needs its own copy). Constant subgraphs (Constant, ConstantOfShape and everything
computed from them and initializers only) are folded into initializers first
(`partitioner.graph.constant_folding`): they are weights, not layers. A Constant node that survives (its value
is a graph output) stays a node of its own: its `param_bytes` are its value's bytes; with `fuse=True` a
Constant read by one node joins that node's layer.
"""

from __future__ import annotations

import logging
import math
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import numpy as np
import onnx

from partitioner.graph.flops import NodeShapes, count_flops
from partitioner.graph.fusion import fusion_groups
from partitioner.graph.onnx_loading import fix_dimensions, infer_shapes, load_compute_model
from partitioner.graph.onnx_reads import STANDARD_DOMAINS, node_inputs

logger = logging.getLogger(__name__)

# Sub-byte element types are stored packed, two per byte.
_PACKED_4BIT_TYPES = frozenset(
    getattr(onnx.TensorProto, name) for name in ("INT4", "UINT4", "FLOAT4E2M1") if hasattr(onnx.TensorProto, name))


@dataclass
class TensorInfo:
    """One activation tensor (not an initializer) at the fixed batch size."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    bytes: int
    producer: str | None
    consumers: list[str]
    is_graph_input: bool
    is_graph_output: bool


@dataclass
class LayerGraph:
    """The layer DAG of a model; `model` carries the canonical node ids but its original (possibly
    dynamic) dimensions, so that sub-models cut from it run at any batch size."""

    dag: nx.DiGraph
    tensors: dict[str, TensorInfo]
    inputs: list[str]
    outputs: list[str]
    model: onnx.ModelProto
    batch_size: int = 1

    @property
    def total_flops(self) -> int:
        return sum(attrs["flops"] for _, attrs in self.dag.nodes(data=True))

    @property
    def total_param_bytes(self) -> int:
        return sum(attrs["param_bytes"] for _, attrs in self.dag.nodes(data=True))

    def onnx_node_ids(self) -> list[str]:
        """Every ONNX node id, layers expanded to their members, in topological order of the layers."""
        return [member for layer in nx.topological_sort(self.dag) for member in self.dag.nodes[layer]["members"]]


def load_layer_graph(model: str | Path | onnx.ModelProto, batch_size: int = 1, fuse: bool = False,
                     symbolic_dims: Mapping[str, int] | None = None) -> LayerGraph:
    """Build the layer DAG of `model` (a path or a ModelProto, which is not modified).

    `batch_size` replaces the inputs' dynamic first dimension; `symbolic_dims` gives other symbolic
    dimensions by name. Raises ModelLoadError for a missing, corrupt or invalid model; an op it does not
    know is logged as a warning and costs 0 FLOPs (known_op=False).
    """
    proto, _ = load_compute_model(model)
    inferred = onnx.ModelProto()
    inferred.CopyFrom(proto)
    fix_dimensions(inferred, batch_size, symbolic_dims)
    inferred = infer_shapes(inferred)

    graph = inferred.graph
    initializers = _initializer_types(graph)
    graph_inputs = [value.name for value in graph.input if value.name not in initializers]
    graph_outputs = [value.name for value in graph.output]
    tensors = _activation_tensors(graph, initializers, graph_inputs, graph_outputs)

    dag = nx.DiGraph()
    unknown_ops: Counter[str] = Counter()
    for node in graph.node:
        attrs = _node_attributes(node, tensors, initializers)
        if not attrs["known_op"]:
            unknown_ops[f"{node.domain or 'ai.onnx'}::{node.op_type}"] += 1
        dag.add_node(node.name, **attrs)
    for op, count in sorted(unknown_ops.items()):
        logger.warning("no FLOP count for op %s (%d node%s): planned with 0 FLOPs, priced from bytes moved only",
                       op, count, "s" if count > 1 else "")
    _connect(dag, tensors)
    if fuse:
        dag, tensors = _fuse(dag, tensors)
    return LayerGraph(dag=dag, tensors=tensors, inputs=graph_inputs, outputs=graph_outputs, model=proto,
                      batch_size=batch_size)


# --- tensors -----------------------------------------------------------------------------------------


def _dtype_name(elem_type: int) -> str:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name


def _tensor_bytes(elem_type: int, shape: tuple[int, ...]) -> int:
    count = math.prod(shape)
    if elem_type in _PACKED_4BIT_TYPES:
        return (count + 1) // 2
    if elem_type == onnx.TensorProto.STRING:
        return 0  # variable length: no size is known before the strings exist
    return count * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).itemsize


def _initializer_types(graph: onnx.GraphProto) -> dict[str, tuple[int, tuple[int, ...]]]:
    """Initializer name -> (element type, shape), dense and sparse."""
    types = {init.name: (init.data_type, tuple(init.dims)) for init in graph.initializer}
    for sparse in graph.sparse_initializer:
        types[sparse.values.name] = (sparse.values.data_type, tuple(sparse.dims))
    return types


def _declared_types(graph: onnx.GraphProto) -> dict[str, tuple[int, tuple[int | None, ...] | None]]:
    """Tensor name -> (element type, shape with None for unknown dims; None for unknown rank)."""
    declared: dict[str, tuple[int, tuple[int | None, ...] | None]] = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        if not value.type.HasField("tensor_type"):
            continue
        tensor_type = value.type.tensor_type
        shape = (tuple(dim.dim_value if dim.HasField("dim_value") else None for dim in tensor_type.shape.dim)
                 if tensor_type.HasField("shape") else None)
        declared[value.name] = (tensor_type.elem_type, shape)
    return declared


def _activation_tensors(graph: onnx.GraphProto, initializers: Mapping[str, object], graph_inputs: list[str],
                        graph_outputs: list[str]) -> dict[str, TensorInfo]:
    """Every non-initializer tensor with its producer, consumers and exact size.

    Where shape inference knows nothing (outputs of unknown ops), the tensor is assumed to have the
    dtype and shape of its producer's first input, as most custom ops are elementwise; unresolved
    dimensions count as 1. Both are logged, once per model.
    """
    declared = _declared_types(graph)
    producers = {output: node.name for node in graph.node for output in node.output if output}
    consumers: dict[str, list[str]] = defaultdict(list)
    first_input: dict[str, str] = {}
    for node in graph.node:
        for name in _activation_inputs(node, initializers):
            consumers[name].append(node.name)
            first_input.setdefault(node.name, name)

    tensors: dict[str, TensorInfo] = {}
    assumed, partial = [], []
    output_set = set(graph_outputs)
    ordered_names = graph_inputs + [output for node in graph.node for output in node.output if output]
    for name in ordered_names:
        elem_type, shape = declared.get(name, (0, None))
        producer = producers.get(name)
        if (elem_type == 0 or shape is None) and producer in first_input and first_input[producer] in tensors:
            template = tensors[first_input[producer]]
            elem_type = elem_type or onnx.helper.np_dtype_to_tensor_dtype(np.dtype(template.dtype))
            shape = shape if shape is not None else template.shape
            assumed.append(name)
        if elem_type == 0:
            elem_type = onnx.TensorProto.FLOAT
        if shape is None or any(dim is None for dim in shape):
            partial.append(name)
            shape = tuple(1 if dim is None else dim for dim in shape or ())
        fixed_shape = tuple(int(dim) for dim in shape)
        tensors[name] = TensorInfo(
            name=name, dtype=_dtype_name(elem_type), shape=fixed_shape, bytes=_tensor_bytes(elem_type, fixed_shape),
            producer=producer, consumers=consumers.get(name, []), is_graph_input=producer is None,
            is_graph_output=name in output_set)
    if assumed:
        logger.warning("%d tensor(s) without inferred shape (e.g. %r) sized like their producer's first input",
                       len(assumed), assumed[0])
    if partial:
        logger.warning("%d tensor(s) with dimensions shape inference could not resolve (e.g. %r): counted as 1",
                       len(partial), partial[0])
    return tensors


def _activation_inputs(node: onnx.NodeProto, initializers: Mapping[str, object]) -> list[str]:
    """Non-initializer inputs of `node`, each once, including outer-scope tensors its subgraphs read."""
    return [name for name in node_inputs(node) if name not in initializers]


# --- nodes -------------------------------------------------------------------------------------------


def _attribute_values(node: onnx.NodeProto) -> dict[str, object]:
    values: dict[str, object] = {}
    for attribute in node.attribute:
        value = onnx.helper.get_attribute_value(attribute)
        values[attribute.name] = value.decode(errors="replace") if isinstance(value, bytes) else value
    return values


def _node_attributes(node: onnx.NodeProto, tensors: Mapping[str, TensorInfo],
                     initializers: Mapping[str, tuple[int, tuple[int, ...]]]) -> dict[str, object]:
    def shape_of(name: str) -> tuple[int, ...] | None:
        if name in initializers:
            return initializers[name][1]
        return tensors[name].shape if name in tensors else None

    inputs = [name for name in _activation_inputs(node, initializers) if name in tensors]
    outputs = [name for name in node.output if name]
    param_bytes = sum(_tensor_bytes(*initializers[name]) for name in dict.fromkeys(node.input) if name in initializers)
    if node.op_type == "Constant":
        param_bytes += sum(tensors[name].bytes for name in outputs)
    flops = None
    if node.domain in STANDARD_DOMAINS:
        flops = count_flops(NodeShapes(
            op_type=node.op_type,
            input_shapes=[shape_of(name) if name else None for name in node.input],
            output_shapes=[shape_of(name) if name else None for name in node.output],
            attributes=_attribute_values(node)))
    activation_bytes = sum(tensors[name].bytes for name in [*inputs, *outputs])
    return {
        "op_type": node.op_type,
        "flops": flops or 0,
        "param_bytes": param_bytes,
        "members": [node.name],
        "inputs": inputs,
        "outputs": outputs,
        "bytes_moved": activation_bytes + param_bytes,
        "known_op": flops is not None,
    }


def _connect(dag: nx.DiGraph, tensors: Mapping[str, TensorInfo]) -> None:
    """One edge per (producer, consumer) pair, carrying every tensor that passes between them."""
    for tensor in tensors.values():
        if tensor.producer is None:
            continue
        for consumer in tensor.consumers:
            if dag.has_edge(tensor.producer, consumer):
                edge = dag.edges[tensor.producer, consumer]
                edge["tensors"].append(tensor.name)
                edge["bytes"] += tensor.bytes
            else:
                dag.add_edge(tensor.producer, consumer, tensors=[tensor.name], bytes=tensor.bytes)


# --- fusion ------------------------------------------------------------------------------------------


def _fuse(dag: nx.DiGraph, tensors: dict[str, TensorInfo]) -> tuple[nx.DiGraph, dict[str, TensorInfo]]:
    """Merge each fusion group into one layer; tensors passed inside a layer disappear from the graph."""
    groups = fusion_groups(dag, tensors)
    layer_of = {member: group.layer_id for group in groups for member in group.members}
    fused_tensors: dict[str, TensorInfo] = {}
    for name, tensor in tensors.items():
        producer = layer_of[tensor.producer] if tensor.producer is not None else None
        consumers = [layer for layer in dict.fromkeys(layer_of[c] for c in tensor.consumers) if layer != producer]
        if producer is not None and not consumers and tensor.consumers and not tensor.is_graph_output:
            continue  # passed between members of one layer only
        fused_tensors[name] = TensorInfo(
            name=tensor.name, dtype=tensor.dtype, shape=tensor.shape, bytes=tensor.bytes, producer=producer,
            consumers=consumers, is_graph_input=tensor.is_graph_input, is_graph_output=tensor.is_graph_output)

    fused = nx.DiGraph()
    for group in groups:
        members = [dag.nodes[member] for member in group.members]
        computing = [attrs["op_type"] for attrs in members if attrs["op_type"] != "Constant"]
        inputs = [name for attrs in members for name in attrs["inputs"]
                  if name in fused_tensors and fused_tensors[name].producer != group.layer_id]
        outputs = [name for attrs in members for name in attrs["outputs"] if name in fused_tensors]
        inputs = list(dict.fromkeys(inputs))
        param_bytes = sum(attrs["param_bytes"] for attrs in members)
        fused.add_node(
            group.layer_id,
            op_type="+".join(computing) or "Constant",
            flops=sum(attrs["flops"] for attrs in members),
            param_bytes=param_bytes,
            members=list(group.members),
            inputs=inputs,
            outputs=outputs,
            bytes_moved=sum(fused_tensors[name].bytes for name in [*inputs, *outputs]) + param_bytes,
            known_op=all(attrs["known_op"] for attrs in members),
        )
    _connect(fused, fused_tensors)
    return fused, fused_tensors
