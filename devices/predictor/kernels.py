"""Kernel classes: what onnxruntime really runs for a node, where the op type alone lies.

A depthwise 3x3 convolution and a dense 3x3 one are both `Conv`, but onnxruntime runs the first as a
per-channel loop of tiny GEMMs (strided ones slower still) and the second as one im2col + GEMM (MLAS):
per FLOP they differ by an order of magnitude, so one set of coefficients for both mispredicts whichever the training set has
fewer of. Likewise a MatMul against a weight (packed once by MLAS) and attention's MatMul of two
activations (Q·Kᵀ, scores·V: batched, small, unpacked). The class is `op/variant`; op types without
variants keep their name, so a predictor fitted before a variant existed still finds the op type.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

KERNEL_SEPARATOR = "/"
FUSED_SEPARATOR = "+"  # between the members of a fused layer type ("Conv+BatchNormalization+Relu")
VARIANT_SEPARATOR = "-"  # a refinement of a variant: "depthwise-strided" refines "depthwise"


def op_type_of(kernel: str) -> str:
    """The ONNX op type a kernel class refines ("Conv/depthwise" -> "Conv")."""
    return kernel.split(KERNEL_SEPARATOR, 1)[0]


def lineage(kernel: str) -> list[str]:
    """The class and the ones it refines, most specific first: "Conv/depthwise-strided",
    "Conv/depthwise", "Conv". A predictor fitted before a refinement existed finds its parent."""
    names = [kernel]
    while VARIANT_SEPARATOR in names[-1].rpartition(KERNEL_SEPARATOR)[2]:
        names.append(names[-1].rsplit(VARIANT_SEPARATOR, 1)[0])
    if KERNEL_SEPARATOR in kernel:
        names.append(op_type_of(kernel))
    return names


def _conv_class(attributes: Mapping[str, object], weight_shape: tuple[int, ...] | None) -> str:
    group = int(attributes.get("group", 1) or 1)  # type: ignore[call-overload]
    if group > 1:
        # Weight [out, in/group, kh, kw]: one input channel per group is depthwise.
        depthwise = weight_shape is not None and len(weight_shape) > 1 and weight_shape[1] == 1
        if not depthwise:
            return "Conv/grouped"
        # A strided depthwise Conv runs at a third of a unit-stride one's FLOP rate here (4-5 vs 10-14
        # GFLOP/s on the same planes, 1 thread): its per-channel GEMM is over strided im2col columns.
        strides = attributes.get("strides") or ()
        return "Conv/depthwise-strided" if any(int(s) > 1 for s in strides) else "Conv/depthwise"  # type: ignore[union-attr]
    if weight_shape is not None and len(weight_shape) > 2 and all(k == 1 for k in weight_shape[2:]):
        return "Conv/pointwise"
    return "Conv/dense"  # ConvTranspose takes the same variants (suffix only)


SHAPE_VARIANT = "shape"  # an op computing a tensor's shape from another's (int64 vectors of a few elements)
COMPUTED_VARIANT = "computed"  # a Reshape (Expand, Tile) to a shape computed at run time
# The ops a dynamic-dimension export chains between a Shape and its Reshape. Not Range, ConstantOfShape,
# Expand or Tile (they build full-size tensors from a shape) nor control flow (a branch is no dispatch).
SHAPE_ARITHMETIC_OPS = frozenset({"Gather", "Slice", "Concat", "Unsqueeze", "Squeeze", "Cast", "Identity", "Add", "Sub",
                                  "Mul", "Div", "Mod", "Neg", "Equal", "Less", "Greater", "Where", "ReduceProd"})


def kernel_class(op_type: str, attributes: Mapping[str, object], input_shapes: Sequence[tuple[int, ...] | None],
                 constant_inputs: Sequence[bool], shape_inputs: Sequence[bool] = ()) -> str:
    """The kernel class of one ONNX node from its attributes, input shapes, which inputs are
    constants (initializers or Constant outputs; an omitted optional input counts as one) and which are
    computed from a `Shape`.

    A model exported with a dynamic dimension computes its reshapes' targets at run time (Shape ->
    Gather -> Unsqueeze -> Concat -> Reshape): those ops move a few int64 numbers and cost a kernel
    dispatch, not the per-element rate of the same op type on activations, so they are a class of
    their own, as is a Reshape whose target is computed.
    """
    if op_type in ("Reshape", "Expand", "Tile") and len(shape_inputs) > 1 and shape_inputs[1]:
        return f"{op_type}{KERNEL_SEPARATOR}{COMPUTED_VARIANT}"
    if op_type in SHAPE_ARITHMETIC_OPS and shape_inputs:
        variable = [computed for computed, constant in zip(shape_inputs, constant_inputs, strict=True) if not constant]
        if variable and all(variable):
            return f"{op_type}{KERNEL_SEPARATOR}{SHAPE_VARIANT}"
    if op_type in ("Conv", "ConvTranspose"):
        weight = input_shapes[1] if len(input_shapes) > 1 else None
        suffix = _conv_class(attributes, weight).split(KERNEL_SEPARATOR, 1)[1]
        return f"{op_type}{KERNEL_SEPARATOR}{suffix}"
    if op_type in ("MatMul", "Gemm"):
        variant = "weights" if any(constant_inputs[:2]) else "activations"
        return f"{op_type}{KERNEL_SEPARATOR}{variant}"
    return op_type


# onnxruntime's own rules for how many intra-op threads a kernel runs on (onnxruntime 1.x sources):
# MLAS splits a GEMM (and a Conv's GEMM) only past this many multiply-adds per thread
# (MLAS_SGEMM_THREAD_COMPLEXITY), over at most MLAS_MAXIMUM_THREAD_COUNT threads, and a grouped or
# depthwise Conv over its groups;
MLAS_MULTIPLY_ADDS_PER_THREAD = 64 * 1024
MLAS_MAXIMUM_THREAD_COUNT = 16
# an element-wise kernel goes through ThreadPool::ParallelFor, which runs a loop on the calling thread
# alone when Eigen's cost model gives it one thread ((cycles - 100,000) / 100,000 + 0.9 < 2) and else
# in blocks of at least 40,000 cycles over every thread: 11/64 of a cycle per byte loaded or stored
# and the functor's compute cycles per output element.
EIGEN_STARTUP_CYCLES = 100_000
EIGEN_CYCLES_PER_THREAD = 100_000
EIGEN_BLOCK_CYCLES = 40_000
EIGEN_CYCLES_PER_FLOAT_MOVED = 2 * 4 * 11 / 64  # one float loaded, one stored
# The functors' compute cycles (onnxruntime's activations.h and element-wise ops; 1 where unlisted).
# Clip is taken as an element-wise kernel too: its 2-thread trace time here jumps by a ~20 µs wake-up
# between 12 K and 33 K elements, which the sources read (a serial Eigen loop) do not explain.
ELEMENT_WISE_COMPUTE_CYCLES = {"Relu": 1.0, "LeakyRelu": 25.0, "Elu": 30.0, "Selu": 4.0, "Sigmoid": 2.0,
                               "HardSigmoid": 0.5, "Tanh": 1.0, "Softplus": 15.0, "Softsign": 1.0,
                               "ThresholdedRelu": 1.0, "Clip": 1.0, "Add": 1.0, "Sub": 1.0, "Mul": 1.0, "Div": 1.0}


def parallel_threads(kernel: str, flops: int, threads: int) -> int:
    """How many of `threads` onnxruntime runs a node of class `kernel` (or op type, or fused layer type:
    its first member's) with `flops` on; `threads` where its rule is not known here. An element-wise
    node's flops are its output elements (`partitioner.graph.flops`).

    Why: a kernel too small to split runs on one thread, so on 2 threads its work goes at half the rate
    of one that is split. Measured here (per-node trace, 1-thread / 2-thread time): dense Convs under
    ~0.3 MFLOP 0.3–0.8x, ResNet-18's 3x3 Convs 0.97–1.54x; with one coefficient per class, held-out
    ResNet-18 was over-priced by 16 % at 2 threads because the other models' small Convs set the rate.
    Not modelled: a batched MatMul (attention over heads) is split per GEMM of the batch, so it is
    priced here as one GEMM of all its FLOPs."""
    if threads <= 1:
        return 1
    op = op_type_of(kernel).split(FUSED_SEPARATOR, 1)[0]
    if op in ("Conv", "ConvTranspose", "MatMul", "Gemm"):
        if kernel.endswith(("/grouped", "/depthwise", "/depthwise-strided")):
            return threads
        return int(min(threads, MLAS_MAXIMUM_THREAD_COUNT, (flops / 2) // MLAS_MULTIPLY_ADDS_PER_THREAD + 1))
    if op in ELEMENT_WISE_COMPUTE_CYCLES:
        cycles = flops * (EIGEN_CYCLES_PER_FLOAT_MOVED + ELEMENT_WISE_COMPUTE_CYCLES[op])
        if int((cycles - EIGEN_STARTUP_CYCLES) / EIGEN_CYCLES_PER_THREAD + 0.9) < 2:
            return 1
        return int(min(threads, max(2, cycles // EIGEN_BLOCK_CYCLES)))
    return threads
