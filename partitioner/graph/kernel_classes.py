"""Which kernel each node of a layer DAG runs (`devices.predictor.kernels`): the op type lies where one
type covers kernels of very different cost (a depthwise, grouped, pointwise or dense Conv; a MatMul of
a weight or of two activations), and the predictor prices each class on its own. Read from the ONNX
attributes and from which inputs are constants (initializers, Constant nodes), with the weights' shapes.
Shared by the planner's cost graph and the predictor's profiling, so both price a node the same way.
"""

from __future__ import annotations

from devices.predictor import kernel_class
from partitioner.graph.layer_graph import LayerGraph


def node_kernel_classes(graph: LayerGraph) -> dict[str, str]:
    """Each ONNX node's kernel class (`devices.predictor.kernels`), from its attributes and which of its
    inputs are constants, with the weights' shapes (initializers, Constant nodes)."""
    from onnx import helper, numpy_helper

    model = graph.model.graph
    shapes: dict[str, tuple[int, ...]] = {init.name: tuple(init.dims) for init in model.initializer}
    for node in model.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    shapes[node.output[0]] = tuple(numpy_helper.to_array(attribute.t).shape)
    classes = {}
    for node in model.node:
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute
                      if a.type == a.INT or a.type == a.INTS}
        classes[node.name] = kernel_class(node.op_type, attributes, [shapes.get(name) for name in node.input],
                                          [name in shapes for name in node.input])
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
