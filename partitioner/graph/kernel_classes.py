"""Which kernel each node of a layer DAG runs (`devices.predictor.kernels`): the op type lies where one
type covers kernels of very different cost (a depthwise, grouped, pointwise or dense Conv; a MatMul of
a weight or of two activations), and the predictor prices each class on its own. Read from the ONNX
attributes and from which inputs are constants (initializers, Constant nodes), with the weights' shapes.
Shared by the planner's cost graph and the predictor's profiling, so both price a node the same way.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from devices.predictor import kernel_class
from devices.predictor.kernels import KERNEL_SEPARATOR, SHAPE_VARIANT
from partitioner.graph.layer_graph import LayerGraph

if TYPE_CHECKING:
    import onnx


def _constant_shapes(graph: LayerGraph) -> dict[str, tuple[int, ...]]:
    """The shapes of the model's constants: initializers and Constant nodes' values."""
    from onnx import numpy_helper

    model = graph.model.graph
    shapes: dict[str, tuple[int, ...]] = {init.name: tuple(init.dims) for init in model.initializer}
    for node in model.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    shapes[node.output[0]] = tuple(numpy_helper.to_array(attribute.t).shape)
    return shapes


def node_kernel_classes(graph: LayerGraph) -> dict[str, str]:
    """Each ONNX node's kernel class (`devices.predictor.kernels`), from its attributes, which of its
    inputs are constants, with the weights' shapes (initializers, Constant nodes), and which are
    computed from a Shape."""
    from onnx import helper

    model = graph.model.graph
    shapes = _constant_shapes(graph)
    classes = {}
    computed_shapes: set[str] = set()  # tensors computed from a Shape (nodes are in topological order)
    for node in model.node:
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute
                      if a.type == a.INT or a.type == a.INTS}
        kernel = kernel_class(node.op_type, attributes, [shapes.get(name) for name in node.input],
                              [name in shapes or not name for name in node.input],  # "": an omitted optional input
                              [name in computed_shapes for name in node.input])
        classes[node.name] = kernel
        if node.op_type == "Shape" or kernel.endswith(f"{KERNEL_SEPARATOR}{SHAPE_VARIANT}"):
            computed_shapes.update(name for name in node.output if name)
    return classes


def layer_kernel_groups(graph: LayerGraph) -> dict[str, int]:
    """Each layer's inner kernel calls: a single grouped or depthwise Conv's `group` attribute (onnxruntime
    loops over the groups, a fixed cost each), else 1 (a fused layer is costed by its fused type)."""
    groups = {node.name: int(next((a.i for a in node.attribute if a.name == "group"), 1) or 1)
              if node.op_type in ("Conv", "ConvTranspose") else 1 for node in graph.model.graph.node}
    return {layer: groups.get(attrs["members"][0], 1) if len(attrs["members"]) == 1 else 1
            for layer, attrs in graph.dag.nodes(data=True)}


def layer_kernel_classes(graph: LayerGraph) -> dict[str, str]:
    """Each layer's kernel class: its node's for a single node; none for a fused layer, which the
    predictor costs by its fused type."""
    classes = node_kernel_classes(graph)
    return {layer: classes.get(attrs["members"][0], "") if len(attrs["members"]) == 1 else ""
            for layer, attrs in graph.dag.nodes(data=True)}


def _conv_im2col(node: onnx.NodeProto, weight: tuple[int, ...] | None, output: tuple[int, ...] | None) -> tuple[int, int]:
    """(rows, elements) of a grouped Conv's im2col on onnxruntime's CPU (MLAS, x86: no direct depthwise
    kernel): every Conv but a 1x1 one of stride 1 without padding first copies, per group and per kernel
    tap of each input channel, one output row at a time into a column buffer, then runs a GEMM per group.
    A depthwise Conv's GEMM has one row, so the copy is its cost: a fixed cost per row (7x7 kernels on
    2-16-pixel planes, ConvNeXt's, cost 3-4x what their FLOPs say) and one per element. Measured here on
    the kernel sample, 1 thread: ~5 ns a row, ~0.2 ns an element. A dense Conv (one group) is left to
    its FLOPs: its GEMM dominates, and the terms only blurred its fit (ResNet-18 -14 % -> -27 %)."""
    if weight is None or output is None or len(weight) < 3 or len(output) != len(weight):
        return 0, 0
    ints = {a.name: list(a.ints) for a in node.attribute if a.type == a.INTS}
    group = next((int(a.i) for a in node.attribute if a.name == "group"), 1) or 1
    padded = any(ints.get("pads", [])) or any(a.name == "auto_pad" and a.s not in (b"", b"NOTSET", b"VALID")
                                              for a in node.attribute)
    kernel = weight[2:]
    if group == 1 or (all(k == 1 for k in kernel) and all(s == 1 for s in ints.get("strides", [])) and not padded):
        return 0, 0
    taps = output[0] * group * weight[1] * math.prod(kernel)
    return taps * math.prod(output[2:-1]), taps * math.prod(output[2:])


def layer_im2col(graph: LayerGraph) -> dict[str, tuple[int, int]]:
    """Each layer's im2col (rows, elements) (`_conv_im2col`); (0, 0) for every layer that is not a single Conv."""
    shapes = _constant_shapes(graph)
    nodes = {node.name: node for node in graph.model.graph.node}
    result = {}
    for layer, attrs in graph.dag.nodes(data=True):
        node = nodes.get(attrs["members"][0]) if len(attrs["members"]) == 1 else None
        if node is None or node.op_type != "Conv" or len(node.input) < 2:
            result[layer] = (0, 0)
            continue
        output = graph.tensors.get(node.output[0])
        result[layer] = _conv_im2col(node, shapes.get(node.input[1]), None if output is None else output.shape)
    return result
