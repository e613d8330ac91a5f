"""FLOPs of one ONNX op from its tensor shapes and attributes.

Conventions (every number the planner and the predictor see rests on them):
- a multiply-add is 2 FLOPs; a plain add, multiply, compare, max or select is 1 FLOP;
- a transcendental function (exp, log, tanh, erf, sigmoid, pow, ...) costs TRANSCENDENTAL_FLOPS per
  element: a rough but fixed price, so that relative costs stay comparable across models;
- ops that only move or reinterpret data (Reshape, Transpose, Concat, Gather, Slice, Cast, Constant, ...)
  cost 0 FLOPs but are known: the predictor prices them from bytes moved;
- an op not listed here is unknown: `count_flops` returns None and the caller decides the fallback.
Shapes are those of the fixed batch, so the counts are exact for the model as it will run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Shape = tuple[int, ...]

TRANSCENDENTAL_FLOPS = 4

# Data movement and shape arithmetic: known ops with no arithmetic on the activations.
DATA_MOVEMENT_OPS = frozenset({
    "Reshape", "Transpose", "Concat", "Flatten", "Shape", "Size", "Gather", "GatherElements", "GatherND",
    "Slice", "Unsqueeze", "Squeeze", "Identity", "Expand", "Split", "Cast", "CastLike", "Constant",
    "ConstantOfShape", "Tile", "Pad", "Range", "Dropout", "DepthToSpace", "SpaceToDepth", "ScatterND",
    "ScatterElements", "Trilu", "NonZero", "OneHot", "ReverseSequence", "EyeLike", "Compress",
})

# Cost per output element of elementwise ops.
ELEMENTWISE_FLOPS: dict[str, int] = {
    **dict.fromkeys(
        ("Add", "Sub", "Mul", "Div", "Neg", "Abs", "Relu", "Clip", "Sqrt", "Reciprocal", "Floor", "Ceil",
         "Round", "Sign", "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Where", "Not", "And",
         "Or", "Xor", "Mod", "IsNaN", "IsInf", "BitShift", "Shrink", "ThresholdedRelu", "CumSum"), 1),
    # x * alpha where negative (or a learned slope): a compare and a multiply.
    **dict.fromkeys(("LeakyRelu", "PRelu"), 2),
    # (de)quantisation: scale and shift (plus a round and clamp, counted as one).
    **dict.fromkeys(("QuantizeLinear", "DequantizeLinear"), 2),
    # scale * x + shift, then a clamp.
    **dict.fromkeys(("HardSigmoid",), 3),
    **dict.fromkeys(("HardSwish",), 4),
    **dict.fromkeys(
        ("Exp", "Log", "Tanh", "Sigmoid", "Erf", "Pow", "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh",
         "Cosh", "Asinh", "Acosh", "Atanh", "Softplus", "Softsign", "Elu", "Selu", "Celu"), TRANSCENDENTAL_FLOPS),
    # Gelu: erf (or tanh) plus four arithmetic steps; Mish: softplus, tanh and a multiply.
    "Gelu": TRANSCENDENTAL_FLOPS + 4,
    "Mish": 2 * TRANSCENDENTAL_FLOPS + 1,
}

# Variadic elementwise ops: (inputs - 1) binary operations per output element.
VARIADIC_OPS = frozenset({"Sum", "Max", "Min", "Mean"})

REDUCE_OPS = frozenset({"ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceSumSquare",
                        "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ArgMax", "ArgMin"})


@dataclass
class NodeShapes:
    """What FLOP counting needs to know about one node: shapes of its inputs and outputs (None where the
    input is omitted or its shape is unknown) and its attributes as plain Python values."""

    op_type: str
    input_shapes: Sequence[Shape | None]
    output_shapes: Sequence[Shape | None]
    attributes: Mapping[str, Any] = field(default_factory=dict)

    def input(self, index: int) -> Shape | None:
        return self.input_shapes[index] if index < len(self.input_shapes) else None

    def output(self, index: int = 0) -> Shape | None:
        return self.output_shapes[index] if index < len(self.output_shapes) else None

    def has_input(self, index: int) -> bool:
        return self.input(index) is not None


def elements(shape: Shape | None) -> int:
    """Number of elements of a tensor of `shape` (a scalar has one)."""
    return math.prod(shape) if shape is not None else 0


def _conv(node: NodeShapes) -> int:
    """Each output element is a dot product over (input channels / groups) x kernel: the weight's
    shape (M, C/groups, k1, k2, ...) names that length directly, so groups and depthwise need no case."""
    weight, output = node.input(1), node.output()
    products = elements(output) * elements(weight[1:]) if weight else 0
    return 2 * products + (elements(output) if node.has_input(2) else 0)


def _conv_transpose(node: NodeShapes) -> int:
    """Each input element is scattered into (output channels / groups) x kernel outputs: weight (C, M/groups, k...)."""
    data, weight = node.input(0), node.input(1)
    products = elements(data) * elements(weight[1:]) if data and weight else 0
    return 2 * products + (elements(node.output()) if node.has_input(2) else 0)


def _gemm(node: NodeShapes) -> int:
    a, output = node.input(0), node.output()
    if a is None or output is None:
        return 0
    inner = a[0] if node.attributes.get("transA", 0) else a[-1]
    flops = 2 * elements(output) * inner
    if node.attributes.get("alpha", 1.0) != 1.0:
        flops += elements(output)
    if node.has_input(2):
        flops += elements(output) * (2 if node.attributes.get("beta", 1.0) != 1.0 else 1)
    return flops


def _matmul(node: NodeShapes) -> int:
    """numpy matmul semantics, batched and broadcast: every output element is a dot product of length K."""
    a = node.input(0)
    return 2 * elements(node.output()) * a[-1] if a else 0


def _einsum(node: NodeShapes) -> int:
    """One multiply per extra operand and one add per point of the full index space."""
    equation = str(node.attributes.get("equation", "")).replace(" ", "")
    operand_terms = equation.split("->")[0].split(",")
    sizes: dict[str, int] = {}
    for term, shape in zip(operand_terms, node.input_shapes):
        if shape is None or "..." in term:
            return 0
        sizes.update(zip(term, shape))
    return math.prod(sizes.values()) * max(len(operand_terms), 1)


def _quantized(counter: Callable[[NodeShapes], int], data_index: int, weight_index: int,
               bias_index: int | None = None) -> Callable[[NodeShapes], int]:
    """Integer and QLinear variants cost what the float op costs: their data and weight sit at other
    input positions (scales and zero points in between)."""
    def count(node: NodeShapes) -> int:
        inputs = [node.input(data_index), node.input(weight_index)]
        if bias_index is not None:
            inputs.append(node.input(bias_index))
        return counter(NodeShapes(node.op_type, inputs, node.output_shapes, node.attributes))
    return count


def _local_response_normalization(node: NodeShapes) -> int:
    """Per element: square-accumulate over `size` channels, then scale, offset, power and divide."""
    size = int(node.attributes.get("size", 1))
    return (2 * size + 3 + TRANSCENDENTAL_FLOPS) * elements(node.input(0))


def _recurrent(node: NodeShapes) -> int:
    """RNN, GRU, LSTM: per step, batch row and direction, the gates' input and recurrent products
    (weights W (dirs, gates*H, I) and R (dirs, gates*H, H)), their biases, one activation per gate value
    and about four arithmetic steps per hidden unit to update the state."""
    data, weight, recurrence = node.input(0), node.input(1), node.input(2)
    if not data or not weight or not recurrence:
        return 0
    directions, gate_values, input_size = weight
    hidden = recurrence[-1]
    rows = elements(data) // input_size if input_size else 0  # steps x batch, in either layout
    per_row = 2 * gate_values * (input_size + hidden) + TRANSCENDENTAL_FLOPS * gate_values + 4 * hidden
    if node.has_input(3):
        per_row += 2 * gate_values
    return rows * directions * per_row


def _pool(node: NodeShapes) -> int:
    """One compare (max) or add (average) per window element per output."""
    kernel = node.attributes.get("kernel_shape", ())
    return elements(node.output()) * math.prod(kernel)


def _global_pool(node: NodeShapes) -> int:
    return elements(node.input(0))


def _batch_normalization(node: NodeShapes) -> int:
    """Inference form: scale and shift fold into one multiply-add per element."""
    return 2 * elements(node.input(0))


def _normalization_rows(node: NodeShapes, normalized_elements: int, per_element: int = 7) -> int:
    """Per element: mean, centre, square-accumulate (2), normalise, scale, shift = 7 FLOPs (RMS
    normalisation skips mean, centre and shift: 4); per normalised row: one reciprocal square root."""
    total = elements(node.input(0))
    rows = total // normalized_elements if normalized_elements else 0
    return per_element * total + TRANSCENDENTAL_FLOPS * rows


def _layer_normalization(node: NodeShapes) -> int:
    """LayerNormalization and RMSNormalization normalise over the axes from `axis` on."""
    data = node.input(0)
    if not data:
        return 0
    axis = int(node.attributes.get("axis", -1)) % len(data)
    return _normalization_rows(node, elements(data[axis:]), 4 if node.op_type == "RMSNormalization" else 7)


def _instance_normalization(node: NodeShapes) -> int:
    data = node.input(0)
    return _normalization_rows(node, elements(data[2:])) if data else 0


def _group_normalization(node: NodeShapes) -> int:
    data = node.input(0)
    if not data or len(data) < 2:
        return 0
    groups = max(int(node.attributes.get("num_groups", 1)), 1)
    return _normalization_rows(node, elements(data[1:]) // groups)


def _softmax(node: NodeShapes) -> int:
    """Per element: running max, subtract, exp, sum, divide."""
    return (4 + TRANSCENDENTAL_FLOPS) * elements(node.input(0))


def _reduce(node: NodeShapes) -> int:
    """One operation per input element, plus the final step per output element for the ops that have one."""
    data, output = elements(node.input(0)), elements(node.output())
    extra = {"ReduceMean": output, "ReduceSumSquare": data, "ReduceL2": data + TRANSCENDENTAL_FLOPS * output,
             "ReduceLogSum": TRANSCENDENTAL_FLOPS * output,
             "ReduceLogSumExp": TRANSCENDENTAL_FLOPS * (data + output)}
    return data + extra.get(node.op_type, 0)


def _variadic(node: NodeShapes) -> int:
    operations = max(len(node.input_shapes) - 1, 0) + (1 if node.op_type == "Mean" else 0)
    return operations * elements(node.output())


def _resize(node: NodeShapes) -> int:
    """Nearest neighbour only copies; (bi/tri)linear and cubic interpolation cost a few multiply-adds
    per output element and interpolated axis."""
    mode = node.attributes.get("mode", "nearest")
    if mode == "nearest":
        return 0
    data, output = node.input(0), node.output()
    resized_axes = sum(1 for before, after in zip(data or (), output or ()) if before != after)
    per_axis = 2 * (4 if mode == "cubic" else 2)
    return elements(output) * per_axis * max(resized_axes, 1)


def _elementwise(node: NodeShapes) -> int:
    return ELEMENTWISE_FLOPS[node.op_type] * elements(node.output())


_COUNTERS: dict[str, Callable[[NodeShapes], int]] = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Einsum": _einsum,
    "MaxPool": _pool,
    "AveragePool": _pool,
    "LpPool": _pool,
    "GlobalAveragePool": _global_pool,
    "GlobalMaxPool": _global_pool,
    "GlobalLpPool": _global_pool,
    "BatchNormalization": _batch_normalization,
    "LayerNormalization": _layer_normalization,
    "RMSNormalization": _layer_normalization,
    "RNN": _recurrent,
    "GRU": _recurrent,
    "LSTM": _recurrent,
    "LRN": _local_response_normalization,
    "ConvInteger": _conv,
    "QLinearConv": _quantized(_conv, 0, 3, 8),
    "MatMulInteger": _matmul,
    "QLinearMatMul": _quantized(_matmul, 0, 3),
    "InstanceNormalization": _instance_normalization,
    "GroupNormalization": _group_normalization,
    "Softmax": _softmax,
    "LogSoftmax": _softmax,
    "Resize": _resize,
    **dict.fromkeys(REDUCE_OPS, _reduce),
    **dict.fromkeys(VARIADIC_OPS, _variadic),
    **dict.fromkeys(ELEMENTWISE_FLOPS, _elementwise),
    **dict.fromkeys(DATA_MOVEMENT_OPS, lambda node: 0),
}

KNOWN_OPS = frozenset(_COUNTERS)


def count_flops(node: NodeShapes) -> int | None:
    """FLOPs of the node under the module's conventions, or None when the op type is unknown."""
    counter = _COUNTERS.get(node.op_type)
    return None if counter is None else int(counter(node))
