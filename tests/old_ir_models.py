"""An old-style (IR 3) ONNX model built by hand, like the Caffe2-converted models of the old ONNX zoo.

IR < 4 requires every initializer to be listed as a graph input too, and those models compute their
weights at run time: `ConstantOfShape` of a shape initializer, `Constant` nodes, arithmetic on them.
"""

from __future__ import annotations

import numpy as np
from onnx import ModelProto, TensorProto, helper, numpy_helper

INPUT_SHAPE = (1, 3, 16, 16)


def old_ir_model(seed: int = 0, ir_version: int = 3, opset: int = 9) -> ModelProto:
    """conv -> relu -> maxpool -> conv -> relu -> flatten -> gemm, every weight built by a chain of
    ConstantOfShape / Constant / Reshape / Mul / Add nodes from shape initializers (all graph inputs)."""
    rng = np.random.default_rng(seed)
    initializers: list[TensorProto] = []
    nodes = []

    def init(name: str, value: np.ndarray) -> str:
        initializers.append(numpy_helper.from_array(value, name))
        return name

    def constant(name: str, value: np.ndarray) -> str:
        nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name + "_value")))
        return name

    def filled(name: str, shape: tuple[int, ...], fill: float) -> str:
        shape_name = init(f"{name}__SHAPE", np.array(shape, dtype=np.int64))
        nodes.append(helper.make_node("ConstantOfShape", [shape_name], [name],
                                      value=numpy_helper.from_array(np.array([fill], dtype=np.float32))))
        return name

    # conv1: weight = Reshape(flat initializer, shape initializer) * Constant scale; bias = ConstantOfShape
    flat = init("conv1_w_flat", rng.standard_normal(8 * 3 * 3 * 3).astype(np.float32))
    shape = init("conv1_w_shape", np.array([8, 3, 3, 3], dtype=np.int64))
    nodes.append(helper.make_node("Reshape", [flat, shape], ["conv1_w_raw"]))
    scale = constant("conv1_w_scale", np.array(0.5, dtype=np.float32))
    nodes.append(helper.make_node("Mul", ["conv1_w_raw", scale], ["conv1_w_0"]))
    bias1 = filled("conv1_b_0", (8,), 0.1)
    nodes.append(helper.make_node("Conv", ["data", "conv1_w_0", bias1], ["conv1"], pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("Relu", ["conv1"], ["relu1"]))
    nodes.append(helper.make_node("MaxPool", ["relu1"], ["pool1"], kernel_shape=[2, 2], strides=[2, 2]))
    # conv2: weight from a Constant node; bias = ConstantOfShape + Constant
    weight2 = constant("conv2_w_0", (0.2 * rng.standard_normal((16, 8, 3, 3))).astype(np.float32))
    zeros = filled("conv2_b_zero", (16,), 0.0)
    offset = constant("conv2_b_offset", rng.standard_normal(16).astype(np.float32))
    nodes.append(helper.make_node("Add", [zeros, offset], ["conv2_b_0"]))
    nodes.append(helper.make_node("Conv", ["pool1", weight2, "conv2_b_0"], ["conv2"], pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("Relu", ["conv2"], ["relu2"]))
    nodes.append(helper.make_node("Flatten", ["relu2"], ["flat"], axis=1))
    # fc: weight = Constant * ConstantOfShape (ones), bias initializer
    ones = filled("fc_w_ones", (10, 16 * 8 * 8), 1.0)
    values = constant("fc_w_values", (0.05 * rng.standard_normal((10, 16 * 8 * 8))).astype(np.float32))
    nodes.append(helper.make_node("Mul", [values, ones], ["fc_w_0"]))
    fc_bias = init("fc_b_0", rng.standard_normal(10).astype(np.float32))
    nodes.append(helper.make_node("Gemm", ["flat", "fc_w_0", fc_bias], ["prob"], transB=1))

    inputs = [helper.make_tensor_value_info("data", TensorProto.FLOAT, INPUT_SHAPE)]
    inputs += [helper.make_tensor_value_info(item.name, item.data_type, item.dims) for item in initializers]
    graph = helper.make_graph(nodes, "old_zoo_net", inputs,
                              [helper.make_tensor_value_info("prob", TensorProto.FLOAT, (1, 10))], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="old-zoo-like")
    model.ir_version = ir_version
    return model
