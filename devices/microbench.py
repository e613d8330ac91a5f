"""Single-kernel models over a sampled configuration space (nn-Meter's kernel sampling, in small).

Why: a kernel class that few models hold cannot be fitted from them. Depthwise convolutions are in
three of the models here, and their cost is not one rate per FLOP: measured here with 1 thread, a
depthwise Conv runs at 3.5-5 GFLOP/s on 8x8 planes and 12-13 on 32x32 (a small GEMM per channel) plus
~0.1 µs per channel, for 3x3, 5x5 and 7x7 alike. Runs of single kernels of many shapes pin such
classes down without any model's own data, so a held-out model stays held out.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from devices.errors import DeviceError

_OPSET = 17


def _conv(rng: np.random.Generator, name: str, channels: int, size: int, kernel: int, group: int,
          stride: int, out_channels: int | None = None) -> Any:
    """A Conv of a [1, channels, size, size] plane; `out_channels` defaults to `channels`."""
    from onnx import TensorProto, helper

    weight_shape = [out_channels or channels, channels // group, kernel, kernel]
    weight = helper.make_tensor("w", TensorProto.FLOAT, weight_shape,
                                rng.standard_normal(int(np.prod(weight_shape))).astype(np.float32))
    node = helper.make_node("Conv", ["x", "w"], ["y"], name=name, group=group, strides=[stride, stride],
                            pads=[kernel // 2] * 4)
    return helper.make_graph([node], name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size])],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight])


def _gemm(rng: np.random.Generator, name: str, rows: int, inner: int, columns: int) -> Any:
    """A classifier head or a fully connected layer: Gemm of [rows, inner] by a weight, plus a bias."""
    from onnx import TensorProto, helper

    initializers = [helper.make_tensor("b", TensorProto.FLOAT, [inner, columns],
                                       rng.standard_normal(inner * columns).astype(np.float32)),
                    helper.make_tensor("c", TensorProto.FLOAT, [columns], rng.standard_normal(columns).astype(np.float32))]
    node = helper.make_node("Gemm", ["a", "b", "c"], ["y"], name=name)
    return helper.make_graph([node], name, [helper.make_tensor_value_info("a", TensorProto.FLOAT, [rows, inner])],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializers)


def _matmul(rng: np.random.Generator, name: str, rows: int, inner: int, columns: int, heads: int,
            weights: bool) -> Any:
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, heads, rows, inner])]
    initializers = []
    if weights:
        initializers.append(helper.make_tensor("b", TensorProto.FLOAT, [inner, columns],
                                               rng.standard_normal(inner * columns).astype(np.float32)))
    else:
        inputs.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, heads, inner, columns]))
    node = helper.make_node("MatMul", ["a", "b"], ["y"], name=name)
    return helper.make_graph([node], name, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                             initializers)


def _maxpool(name: str, channels: int, size: int, kernel: int, stride: int) -> Any:
    """A pooling layer (ResNet's stem, the chain model's): MaxPool of a [1, channels, size, size] plane."""
    from onnx import TensorProto, helper

    node = helper.make_node("MaxPool", ["x"], ["y"], name=name, kernel_shape=[kernel, kernel], strides=[stride, stride],
                            pads=[kernel // 2] * 4)
    return helper.make_graph([node], name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size])],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])


ELEMENTWISE = ("Add", "Mul", "Div", "Add/broadcast", "Mul/broadcast", "Relu", "Clip", "Erf", "Sigmoid", "Softmax",
               "ReduceMean", "LayerNormalization", "Transpose", "Transpose/4d")


def _elementwise(rng: np.random.Generator, name: str, kind: str, shape: list[int]) -> Any:
    """One element-wise, normalisation or layout op on a [1, rows, columns] tensor (4-d for Transpose/4d)."""
    from onnx import TensorProto, helper

    op_type, _, variant = kind.partition("/")
    last = shape[-1]
    vector = helper.make_tensor("v", TensorProto.FLOAT, [last], rng.standard_normal(last).astype(np.float32))
    inputs, initializers, attributes = ["x"], [], {}
    if op_type in ("Add", "Mul", "Div"):
        inputs.append("v" if variant == "broadcast" else "x")
        initializers = [vector] if variant == "broadcast" else []
    elif op_type == "LayerNormalization":
        inputs, initializers, attributes = ["x", "v"], [vector], {"axis": -1}
    elif op_type == "Clip":  # ReLU6, as MobileNetV2 has it
        bounds = [helper.make_tensor(n, TensorProto.FLOAT, [], [v]) for n, v in (("lo", 0.0), ("hi", 6.0))]
        inputs, initializers = ["x", "lo", "hi"], bounds
    elif op_type in ("Softmax",):
        attributes = {"axis": -1}
    elif op_type == "ReduceMean":
        attributes = {"axes": [-1]}
    elif op_type == "Transpose":
        if variant == "4d":
            shape = [1, shape[1], 4, max(shape[2] // 4, 1)]
        attributes = {"perm": [0, 2, 3, 1] if variant == "4d" else [0, 2, 1]}
    node = helper.make_node(op_type, inputs, ["y"], name=name, **attributes)
    return helper.make_graph([node], name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializers)


def stem_conv_models() -> dict[str, Any]:
    """Dense Convs of an image model's first layer: 3 input channels on large planes. The sampled kernels'
    Convs have 8+ input channels on planes of at most 28 pixels, so a stem's thin im2col GEMM (27 to
    147 deep) over thousands of pixels, and how onnxruntime splits it over threads, is in no run but the
    models' own. Fixed, not sampled: a stem is one of a few shapes."""
    import onnx
    from onnx import helper

    rng = np.random.default_rng(0)  # weights only; the shapes are fixed
    models = {}
    # Shapes that no bundled or evaluated model has (a held-out model's own stem would leak into its fit).
    for out_channels, size, kernel, stride in ((16, 48, 3, 1), (24, 80, 3, 1), (16, 144, 3, 2), (32, 96, 3, 1),
                                               (48, 160, 7, 2), (24, 160, 3, 2), (24, 96, 5, 1), (48, 144, 3, 2)):
        name = f"stem-{out_channels}-{size}-{kernel}x{kernel}-s{stride}"
        graph = _conv(rng, name, 3, size, kernel, 1, stride, out_channels)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
        models[name] = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    return models


def shape_arithmetic_models() -> dict[str, Any]:
    """Reshapes to targets computed at run time, as a model exported with a dynamic batch has them
    (torch 2's exporter: one Shape, a Slice per dimension, a Concat per target). Their shape ops move a
    few int64 numbers (`kernels.SHAPE_VARIANT`), so no sampled kernel and no other model prices them:
    onnxruntime's trace does, at several times their cost in a run. Two targets share the slices, as in
    the exported models: with one target onnxruntime fuses the whole chain into one Reshape, which no
    model shows. Fixed, not sampled: the cost is the dispatch, whatever the activation's size, and the
    sizes are unlike any model's."""
    import onnx
    from onnx import TensorProto, helper

    def ints(tensor: str, values: list[int]) -> Any:
        return helper.make_tensor(tensor, TensorProto.INT64, [len(values)], values)

    models = {}
    for rows, columns in ((8, 32), (24, 48), (12, 96), (32, 128)):
        for targets in (2, 3):
            name = f"shape-{targets}-targets-{rows}x{columns}"
            initializers = [ints("all", [-1])] + [ints(f"at{d}", [d]) for d in range(4)]
            nodes = [helper.make_node("Shape", ["x"], ["shape"], name=f"{name}-shape")]
            nodes += [helper.make_node("Slice", ["shape", f"at{d}", f"at{d + 1}"], [f"dim{d}"], name=f"{name}-slice{d}")
                      for d in range(3)]
            orders = [["dim0", "dim1", "dim2"], ["all", "dim2", "dim1"], ["dim0", "all", "dim1"]][:targets]
            for index, order in enumerate(orders):
                nodes += [helper.make_node("Concat", order, [f"target{index}"], name=f"{name}-concat{index}", axis=0),
                          helper.make_node("Reshape", ["x", f"target{index}"], [f"y{index}"], name=f"{name}-reshape{index}")]
            outputs = [helper.make_tensor_value_info(f"y{index}", TensorProto.FLOAT, None) for index in range(targets)]
            graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                  ["batch", rows, columns])],
                                      outputs, initializers)
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
            models[name] = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    return models


def kernel_models(count: int, seed: int = 0) -> dict[str, Any]:
    """`count` single-node models (seeded): depthwise, grouped, pointwise and dense Convs, MatMuls on
    a weight and of two activations, Gemms on a weight, MaxPools, and a few element-wise and layout ops, over sizes
    that span the models' (planes of 1-56 pixels a side, 8-512 channels; dense Convs of many channels on
    small planes, so that megabytes of weights are in the sample, as in ResNet-18's last stage; Gemms
    of 16-2048 inputs and outputs, as classifier heads and MLPs have)."""
    import onnx
    from onnx import helper

    if count < 1:
        raise DeviceError("a kernel sample needs at least one model.")
    rng = np.random.default_rng(seed)
    models: dict[str, Any] = {}
    # Depthwise convolutions twice and the cheap ops five times as often: their costs vary most with
    # shape, and above some size onnxruntime splits an element-wise op over its threads (a wake-up each).
    kinds = ("depthwise", "grouped", "pointwise", "dense", "matmul-weights", "matmul-activations", "elementwise",
             "depthwise", "elementwise", "elementwise", "gemm", "maxpool", "elementwise", "elementwise")
    elementwise = 0
    for index in range(count):
        kind = kinds[index % len(kinds)]
        name = f"{kind}-{index}"
        channels = int(2 ** rng.integers(3, 10))  # 8 .. 512
        size = int(rng.choice([1, 2, 4, 7, 8, 14, 16, 28, 32, 56]))
        stride = int(rng.choice([1, 2])) if size > 2 else 1
        if kind == "depthwise":
            graph = _conv(rng, name, channels, size, int(rng.choice([3, 5, 7])), channels, stride)
        elif kind == "grouped":
            width = int(rng.choice([4, 8, 16]))
            channels = max(channels, 2 * width)
            graph = _conv(rng, name, channels, size, 3, channels // width, stride)
        elif kind == "pointwise":
            graph = _conv(rng, name, min(channels, 256), size, 1, 1, 1)
        elif kind == "dense":
            cap = 512 if size <= 7 else 128 if size <= 14 else 64  # big weights on small planes only: FLOPs stay small
            graph = _conv(rng, name, min(channels, cap), min(size, 28), 3, 1, stride)
        elif kind == "maxpool":
            graph = _maxpool(name, min(channels, 128), max(size, 4), int(rng.choice([2, 3])), stride)
        elif kind == "gemm":
            graph = _gemm(rng, name, int(2 ** rng.integers(0, 4)), int(2 ** rng.integers(4, 12)),
                          int(2 ** rng.integers(4, 12)))
        elif kind.startswith("matmul"):
            rows, inner, columns = (int(2 ** rng.integers(2, 9)) for _ in range(3))
            heads = 1 if kind == "matmul-weights" else int(rng.choice([1, 2, 4, 8]))
            graph = _matmul(rng, name, rows, inner, columns, heads, kind == "matmul-weights")
        else:
            kind = ELEMENTWISE[elementwise % len(ELEMENTWISE)]  # each op kind in turn
            elementwise += 1
            # 8 B to 2 MB: the models' activations (ResNet-18's first ReLU is 0.5 MB)
            graph = _elementwise(rng, name, kind, [1, int(2 ** rng.integers(1, 10)), int(2 ** rng.integers(1, 10))])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
        models[name] = onnx.shape_inference.infer_shapes(model, strict_mode=True)  # the output's shape filled in
    return models
