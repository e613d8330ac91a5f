"""Layer DAG from ONNX: exact bytes and FLOPs of hand-checked layers, structure, fusion, errors."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import networkx as nx
import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from partitioner.errors import ModelLoadError, PartitionerError
from partitioner.graph.flops import TRANSCENDENTAL_FLOPS
from partitioner.graph.layer_graph import LayerGraph, load_layer_graph

FLOAT = TensorProto.FLOAT


def _model(nodes: list[onnx.NodeProto], inputs: dict[str, list[int | str]],
           outputs: list[str] | dict[str, list[int | str]], initializers: dict[str, np.ndarray] | None = None,
           domains: tuple[str, ...] = ()) -> onnx.ModelProto:
    """A model with float32 inputs (float64 initializers become float32); outputs given without a shape
    take the one shape inference finds."""
    declared = outputs if isinstance(outputs, dict) else {}
    graph = helper.make_graph(
        nodes, "test",
        [helper.make_tensor_value_info(name, FLOAT, shape) for name, shape in inputs.items()],
        [helper.make_empty_tensor_value_info(name) for name in outputs],
        [numpy_helper.from_array(value.astype(np.float32) if value.dtype == np.float64 else value, name)
         for name, value in (initializers or {}).items()])
    opsets = [helper.make_opsetid("", 18), *(helper.make_opsetid(domain, 1) for domain in domains)]
    model = helper.make_model(graph, opset_imports=opsets)
    inferred = {info.name: info for info in onnx.shape_inference.infer_shapes(model).graph.value_info}
    for output in model.graph.output:
        if output.name in declared:
            output.CopyFrom(helper.make_tensor_value_info(output.name, FLOAT, declared[output.name]))
        else:
            output.CopyFrom(inferred[output.name])
    return model


def _weights(*shape: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(shape)


def _only_node(graph: LayerGraph) -> dict:
    (node,) = graph.dag.nodes
    return graph.dag.nodes[node]


def test_conv_3x3_bytes_and_flops_by_hand() -> None:
    model = _model([helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
                   {"x": [1, 3, 8, 8]}, ["y"], {"w": _weights(4, 3, 3, 3), "b": _weights(4)})
    graph = load_layer_graph(model)
    node = _only_node(graph)
    # 4x8x8 = 256 outputs, each a 3x3x3 = 27-term dot product (2 FLOPs per multiply-add) plus its bias.
    assert node["flops"] == 256 * 27 * 2 + 256 == 14080
    assert node["param_bytes"] == (4 * 3 * 3 * 3 + 4) * 4 == 448
    assert graph.tensors["x"].bytes == 3 * 8 * 8 * 4 == 768
    assert graph.tensors["y"].shape == (1, 4, 8, 8) and graph.tensors["y"].bytes == 1024
    assert node["bytes_moved"] == 768 + 1024 + 448
    assert node["inputs"] == ["x"] and node["outputs"] == ["y"] and node["known_op"]
    assert set(graph.tensors) == {"x", "y"}  # initializers are parameters, not tensors


def test_depthwise_conv_flops_by_hand() -> None:
    model = _model([helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                     strides=[2, 2], group=8)],
                   {"x": [1, 8, 10, 10]}, ["y"], {"w": _weights(8, 1, 3, 3)})
    graph = load_layer_graph(model)
    assert graph.tensors["y"].shape == (1, 8, 5, 5)
    # 200 outputs, each over its own channel's 3x3 window only, no bias.
    assert _only_node(graph)["flops"] == 200 * 9 * 2 == 3600


def test_conv_transpose_flops_by_hand() -> None:
    model = _model([helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], kernel_shape=[3, 3])],
                   {"x": [1, 2, 3, 3]}, ["y"], {"w": _weights(2, 4, 3, 3), "b": _weights(4)})
    graph = load_layer_graph(model)
    assert graph.tensors["y"].shape == (1, 4, 5, 5)
    # Each of the 18 input elements is scattered into 4 channels x 3x3 outputs; then 100 bias adds.
    assert _only_node(graph)["flops"] == 18 * 4 * 9 * 2 + 100 == 1396


def test_einsum_costs_what_the_matching_matmul_costs() -> None:
    model = _model([helper.make_node("Einsum", ["a", "b"], ["e"], name="einsum", equation="bij,bjk->bik"),
                    helper.make_node("MatMul", ["a", "b"], ["m"], name="matmul")],
                   {"a": [2, 3, 4], "b": [2, 4, 5]}, ["e", "m"])
    flops = nx.get_node_attributes(load_layer_graph(model).dag, "flops")
    assert flops["einsum"] == flops["matmul"] == 2 * 3 * 5 * 4 * 2


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_flops_by_hand(trans_b: int) -> None:
    weight = _weights(16, 8) if trans_b else _weights(8, 16)
    model = _model([helper.make_node("Gemm", ["a", "w", "c"], ["y"], transB=trans_b)],
                   {"a": [2, 8]}, ["y"], {"w": weight, "c": _weights(16)})
    node = _only_node(load_layer_graph(model))
    assert node["flops"] == 2 * 16 * 8 * 2 + 2 * 16 == 544
    assert node["param_bytes"] == (8 * 16 + 16) * 4


def test_batched_and_broadcast_matmul_flops_by_hand() -> None:
    model = _model([helper.make_node("MatMul", ["a", "b"], ["ab"], name="attention_scores"),
                    helper.make_node("MatMul", ["c", "w"], ["cw"], name="projection")],
                   {"a": [2, 4, 5, 6], "b": [2, 4, 6, 7], "c": [3, 5, 6]}, ["ab", "cw"], {"w": _weights(6, 7)})
    graph = load_layer_graph(model)
    assert graph.dag.nodes["attention_scores"]["flops"] == 2 * 4 * 5 * 7 * 6 * 2 == 3360
    assert graph.dag.nodes["projection"]["flops"] == 3 * 5 * 7 * 6 * 2 == 1260
    assert graph.dag.nodes["attention_scores"]["bytes_moved"] == (240 + 336 + 280) * 4


@pytest.mark.parametrize(("kernel", "stride", "pads", "outputs"), [(2, 2, 0, 2 * 4 * 4), (3, 1, 1, 2 * 8 * 8)])
def test_maxpool_flops_by_hand(kernel: int, stride: int, pads: int, outputs: int) -> None:
    model = _model([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[kernel, kernel], strides=[stride, stride],
                                     pads=[pads] * 4)], {"x": [1, 2, 8, 8]}, ["y"])
    graph = load_layer_graph(model)
    assert graph.tensors["y"].bytes == outputs * 4
    assert _only_node(graph)["flops"] == outputs * kernel * kernel


def test_batch_normalization_flops_and_parameters_by_hand() -> None:
    model = _model([helper.make_node("BatchNormalization", ["x", "scale", "bias", "mean", "var"], ["y"])],
                   {"x": [1, 4, 6, 6]}, ["y"],
                   {"scale": _weights(4), "bias": _weights(4), "mean": _weights(4), "var": np.ones(4)})
    node = _only_node(load_layer_graph(model))
    assert node["flops"] == 2 * 4 * 6 * 6 == 288
    assert node["param_bytes"] == 4 * 4 * 4


def test_normalization_softmax_and_elementwise_flops_by_hand() -> None:
    model = _model([helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["n"], name="norm"),
                    helper.make_node("Softmax", ["n"], ["s"], name="softmax"),
                    helper.make_node("Add", ["s", "row"], ["sum"], name="add"),
                    helper.make_node("Tanh", ["sum"], ["t"], name="tanh"),
                    helper.make_node("GlobalAveragePool", ["img"], ["g"], name="gap"),
                    helper.make_node("ReduceMean", ["t"], ["m"], name="mean", keepdims=0)],
                   {"x": [2, 3, 8], "img": [1, 4, 5, 5]}, ["m", "g"],
                   {"gamma": np.ones(8), "beta": np.zeros(8), "row": _weights(8)})
    flops = nx.get_node_attributes(load_layer_graph(model).dag, "flops")
    assert flops["norm"] == 7 * 48 + TRANSCENDENTAL_FLOPS * 6
    assert flops["softmax"] == (4 + TRANSCENDENTAL_FLOPS) * 48
    assert flops["add"] == 48
    assert flops["tanh"] == TRANSCENDENTAL_FLOPS * 48
    assert flops["gap"] == 100
    assert flops["mean"] == 48 + 1


def test_shape_only_ops_are_known_and_free() -> None:
    model = _model([helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0]),
                    helper.make_node("Reshape", ["t", "shape"], ["r"]),
                    helper.make_node("Cast", ["r"], ["h"], to=TensorProto.FLOAT16)],
                   {"x": [6, 4]}, ["h"], {"shape": np.array([3, 8], dtype=np.int64)})
    graph = load_layer_graph(model)
    assert all(attrs["known_op"] and attrs["flops"] == 0 for _, attrs in graph.dag.nodes(data=True))
    assert graph.tensors["h"].dtype == "float16" and graph.tensors["h"].bytes == 24 * 2
    assert graph.tensors["r"].shape == (3, 8)


def test_tensors_record_producer_consumers_and_graph_boundaries() -> None:
    model = _model([helper.make_node("Relu", ["x"], ["r"], name="relu"),
                    helper.make_node("Add", ["r", "x"], ["a"], name="add"),
                    helper.make_node("Mul", ["r", "r"], ["m"], name="square")],
                   {"x": [1, 5]}, ["a", "m"])
    graph = load_layer_graph(model)
    assert graph.inputs == ["x"] and graph.outputs == ["a", "m"]
    x, r = graph.tensors["x"], graph.tensors["r"]
    assert x.producer is None and x.is_graph_input and x.consumers == ["relu", "add"]
    assert r.producer == "relu" and r.consumers == ["add", "square"] and not r.is_graph_output
    assert graph.tensors["m"].is_graph_output
    assert set(graph.dag.edges) == {("relu", "add"), ("relu", "square")}
    assert graph.dag.edges["relu", "square"] == {"tensors": ["r"], "bytes": 20}


def test_duplicate_and_empty_node_names_get_unique_ids() -> None:
    model = _model([helper.make_node("Relu", ["x"], ["a"], name=""),
                    helper.make_node("Relu", ["a"], ["b"], name="act"),
                    helper.make_node("Relu", ["b"], ["c"], name="act")],
                   {"x": [1, 2]}, ["c"])
    graph = load_layer_graph(model)
    assert list(nx.topological_sort(graph.dag)) == ["Relu_0", "act", "Relu_2"]
    assert [node.name for node in graph.model.graph.node] == ["Relu_0", "act", "Relu_2"]
    assert model.graph.node[0].name == ""  # the caller's model is left untouched


def test_unknown_op_is_loaded_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    model = _model([helper.make_node("Relu", ["x"], ["a"], name="before"),
                    helper.make_node("Frobnicate", ["a"], ["b"], name="custom", domain="example.ops"),
                    helper.make_node("Relu", ["b"], ["c"], name="after")],
                   {"x": [2, 3]}, {"c": [2, 3]}, domains=("example.ops",))
    with caplog.at_level(logging.WARNING, logger="partitioner"):
        graph = load_layer_graph(model)
    custom = graph.dag.nodes["custom"]
    assert not custom["known_op"] and custom["flops"] == 0
    assert "Frobnicate" in caplog.text
    # Its output has no inferred shape: sized like its input, so the planner can still price the edge.
    assert graph.tensors["b"].shape == (2, 3) and graph.tensors["b"].bytes == 24
    assert list(nx.topological_sort(graph.dag)) == ["before", "custom", "after"]


def test_lstm_flops_by_hand() -> None:
    model = _model([helper.make_node("LSTM", ["x", "w", "r"], ["", "h"], hidden_size=2)],
                   {"x": [5, 1, 3]}, ["h"], {"w": _weights(1, 8, 3), "r": _weights(1, 8, 2)})
    # Per step: 8 gate values, each a product over 3 inputs + 2 hidden units, an activation, then
    # 4 state-update steps per hidden unit.
    assert _only_node(load_layer_graph(model))["flops"] == 5 * (2 * 8 * 5 + TRANSCENDENTAL_FLOPS * 8 + 4 * 2)


def test_subgraph_reads_of_outer_tensors_are_edges(caplog: pytest.LogCaptureFixture) -> None:
    """An If whose branches read 'x' without taking it as an input still depends on x's producer."""
    def branch(op_type: str) -> onnx.GraphProto:
        return helper.make_graph([helper.make_node(op_type, ["x"], [f"{op_type}_out"])], op_type, [],
                                 [helper.make_tensor_value_info(f"{op_type}_out", FLOAT, [1, 2])])

    condition = helper.make_node("Constant", [], ["c"], name="condition",
                                 value=helper.make_tensor("c", TensorProto.BOOL, [], [True]))
    model = _model([helper.make_node("Relu", ["a"], ["x"], name="relu"), condition,
                    helper.make_node("If", ["c"], ["y"], name="choose", then_branch=branch("Neg"),
                                     else_branch=branch("Abs"))],
                   {"a": [1, 2]}, {"y": [1, 2]})
    with caplog.at_level(logging.WARNING, logger="partitioner"):
        graph = load_layer_graph(model)
    assert graph.dag.edges["relu", "choose"]["tensors"] == ["x"]
    assert graph.tensors["x"].consumers == ["choose"]
    assert not graph.dag.nodes["choose"]["known_op"] and "If" in caplog.text


def test_batch_size_multiplies_activation_bytes() -> None:
    model = _model([helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[1, 1]),
                    helper.make_node("Flatten", ["y"], ["f"])],
                   {"x": ["N", 3, 4, 4]}, ["f"], {"w": _weights(2, 3, 1, 1)})
    one, four = load_layer_graph(model), load_layer_graph(model, batch_size=4)
    assert four.tensors["f"].shape == (4, 32)
    for name, tensor in one.tensors.items():
        assert four.tensors[name].bytes == 4 * tensor.bytes
    assert four.total_flops == 4 * one.total_flops
    assert four.total_param_bytes == one.total_param_bytes


def test_bundled_model_batch_size_multiplies_image_activations(bundled_models) -> None:
    one = load_layer_graph(bundled_models["chain"])
    four = load_layer_graph(bundled_models["chain"], batch_size=4)
    float_tensors = [name for name, tensor in one.tensors.items() if tensor.dtype == "float32"]
    assert float_tensors
    for name in float_tensors:
        assert four.tensors[name].bytes == 4 * one.tensors[name].bytes
        assert four.tensors[name].shape[0] == 4


def test_fixed_batch_dimension_cannot_be_changed() -> None:
    model = _model([helper.make_node("Relu", ["x"], ["y"])], {"x": [1, 3]}, ["y"])
    with pytest.raises(PartitionerError, match="fixed batch dimension"):
        load_layer_graph(model, batch_size=2)


def test_other_symbolic_dimension_defaults_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    model = _model([helper.make_node("Relu", ["x"], ["y"])], {"x": ["batch", "seq", 8]}, ["y"])
    with caplog.at_level(logging.WARNING, logger="partitioner"):
        default = load_layer_graph(model, batch_size=2)
    assert default.tensors["y"].shape == (2, 1, 8) and "seq" in caplog.text
    assert load_layer_graph(model, batch_size=2, symbolic_dims={"seq": 5}).tensors["y"].shape == (2, 5, 8)


def test_constant_node_is_folded_into_its_consumers_parameters() -> None:
    constant = helper.make_node("Constant", [], ["k"], name="k_const",
                                value=numpy_helper.from_array(np.ones((1, 4), dtype=np.float32)))
    model = _model([constant, helper.make_node("Mul", ["x", "k"], ["y"], name="scale")], {"x": [2, 4]}, ["y"])
    for fuse in (False, True):
        graph = load_layer_graph(model, fuse=fuse)
        assert list(graph.dag.nodes) == ["scale"] and graph.dag.nodes["scale"]["members"] == ["scale"]
        assert graph.dag.nodes["scale"]["param_bytes"] == 16 and "k" not in graph.tensors


def test_constant_that_is_a_graph_output_stays_a_node_with_parameters() -> None:
    constant = helper.make_node("Constant", [], ["k"], name="k_const",
                                value=numpy_helper.from_array(np.ones((1, 4), dtype=np.float32)))
    model = _model([constant, helper.make_node("Mul", ["x", "k"], ["y"], name="scale")], {"x": [2, 4]}, ["y", "k"])
    graph = load_layer_graph(model)
    assert graph.dag.nodes["k_const"]["param_bytes"] == 16 and graph.dag.nodes["k_const"]["known_op"]
    assert graph.dag.edges["k_const", "scale"]["bytes"] == 16
    fused = load_layer_graph(model, fuse=True)
    assert fused.dag.nodes["k_const"]["op_type"] == "Constant" and fused.tensors["k"].is_graph_output


def test_weight_chains_fold_to_the_values_onnxruntime_computes() -> None:
    """ConstantOfShape -> Mul -> Conv weight, as old zoo models build them: the DAG keeps the Conv only,
    its weight becomes an initializer with exactly the run-time value, and random ops are not folded."""
    from partitioner.graph.onnx_loading import load_compute_model

    nodes = [
        helper.make_node("ConstantOfShape", ["w_shape"], ["ones"], name="fill",
                         value=numpy_helper.from_array(np.array([1.0], dtype=np.float32))),
        helper.make_node("Mul", ["ones", "w_scale"], ["w"], name="weight"),
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", kernel_shape=[3, 3]),
        helper.make_node("RandomNormal", [], ["noise"], name="noise", shape=[1, 2, 2, 2]),
        helper.make_node("Add", ["c", "noise"], ["y"], name="add"),
    ]
    scale = _weights(2, 3, 3, 3)
    model = _model(nodes, {"x": [1, 3, 4, 4]}, ["y"], {"w_shape": np.array([2, 3, 3, 3], dtype=np.int64), "w_scale": scale})
    graph = load_layer_graph(model)
    assert set(graph.dag.nodes) == {"conv", "noise", "add"}
    assert graph.dag.nodes["conv"]["param_bytes"] == 2 * 3 * 3 * 3 * 4
    folded, removed = load_compute_model(model)
    assert removed == ["fill", "weight"]
    (weight,) = [item for item in folded.graph.initializer if item.name == "w"]
    np.testing.assert_array_equal(numpy_helper.to_array(weight), scale.astype(np.float32))
    assert {item.name for item in folded.graph.initializer} == {"w"}  # the shape and scale are no longer read


def _conv_bn_relu_model() -> onnx.ModelProto:
    """conv1 -> bn -> relu feeds both conv2 (-> clip) and the Add skip; conv2's chain fuses, and so does
    conv1's although its output 'r' leaves the layer twice."""
    bn = {f"bn_{part}": _weights(4) if part != "var" else np.ones(4) for part in ("scale", "bias", "mean", "var")}
    return _model([
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", *bn], ["b1"], name="bn1"),
        helper.make_node("Relu", ["b1"], ["r"], name="relu1"),
        helper.make_node("Conv", ["r", "w2"], ["c2"], name="conv2", kernel_shape=[1, 1]),
        helper.make_node("Clip", ["c2", "lo", "hi"], ["k"], name="clip2"),
        helper.make_node("Add", ["k", "r"], ["s"], name="skip_add"),
        helper.make_node("Conv", ["s", "w3"], ["c3"], name="conv3", kernel_shape=[1, 1]),
        helper.make_node("Relu", ["c3"], ["out_relu"], name="relu3"),
        helper.make_node("Sigmoid", ["c3"], ["out_sigmoid"], name="sigmoid3"),
    ], {"x": [1, 2, 6, 6]}, ["out_relu", "out_sigmoid"],
        {"w1": _weights(4, 2, 3, 3), "w2": _weights(4, 4, 1, 1), "w3": _weights(4, 4, 1, 1), **bn,
         "lo": np.zeros(()), "hi": np.full((), 6.0)})


def test_fusion_merges_conv_bn_activation_chains() -> None:
    model = _conv_bn_relu_model()
    plain, fused = load_layer_graph(model), load_layer_graph(model, fuse=True)
    layers = dict(fused.dag.nodes(data=True))
    assert layers["conv1"]["op_type"] == "Conv+BatchNormalization+Relu"
    assert layers["conv1"]["members"] == ["conv1", "bn1", "relu1"]
    assert layers["conv2"]["op_type"] == "Conv+Clip"
    # conv3's output goes to two nodes: nothing may be fused into it.
    assert layers["conv3"]["members"] == ["conv3"]
    assert set(fused.dag.edges) == {("conv1", "conv2"), ("conv1", "skip_add"), ("conv2", "skip_add"),
                                    ("skip_add", "conv3"), ("conv3", "relu3"), ("conv3", "sigmoid3")}
    assert fused.dag.edges["conv1", "skip_add"]["tensors"] == ["r"]
    assert fused.tensors["r"].producer == "conv1" and fused.tensors["r"].consumers == ["conv2", "skip_add"]
    assert "c1" not in fused.tensors and "b1" not in fused.tensors
    assert layers["conv1"]["inputs"] == ["x"] and layers["conv1"]["outputs"] == ["r"]
    assert layers["conv1"]["flops"] == sum(plain.dag.nodes[n]["flops"] for n in ("conv1", "bn1", "relu1"))
    assert layers["conv1"]["bytes_moved"] == (2 * 36 + 4 * 36) * 4 + layers["conv1"]["param_bytes"]
    assert fused.total_flops == plain.total_flops and fused.total_param_bytes == plain.total_param_bytes


def _assert_fusion_partitions_nodes(plain: LayerGraph, fused: LayerGraph) -> None:
    members = [member for _, attrs in fused.dag.nodes(data=True) for member in attrs["members"]]
    assert sorted(members) == sorted(plain.dag.nodes)  # every ONNX node in exactly one layer
    assert nx.is_directed_acyclic_graph(fused.dag)
    assert fused.total_flops == plain.total_flops
    for producer, consumer, data in fused.dag.edges(data=True):
        for name in data["tensors"]:
            assert fused.tensors[name].producer == producer and consumer in fused.tensors[name].consumers
        assert data["bytes"] == sum(fused.tensors[name].bytes for name in data["tensors"])


def test_fusion_partitions_hand_built_model() -> None:
    model = _conv_bn_relu_model()
    _assert_fusion_partitions_nodes(load_layer_graph(model), load_layer_graph(model, fuse=True))


def test_fusion_merges_gemm_with_its_activation(bundled_models) -> None:
    fused = load_layer_graph(bundled_models["mlp"], fuse=True)
    assert [fused.dag.nodes[layer]["op_type"] for layer in nx.topological_sort(fused.dag)] == [
        "Gemm+Relu", "Gemm+Relu", "Gemm"]


OP_CHOICES = ("Conv", "BatchNormalization", "Relu", "Clip", "Add", "Constant")


@st.composite
def random_cnn_models(draw: st.DrawFn) -> onnx.ModelProto:
    """Random DAGs of shape-preserving ops on a 1x4x3x3 tensor, each reading random earlier tensors,
    with some intermediate tensors also exposed as graph outputs."""
    steps = draw(st.lists(st.tuples(st.sampled_from(OP_CHOICES), st.integers(0, 10**6), st.integers(0, 10**6)),
                          min_size=1, max_size=14))
    available, nodes = ["x"], []
    bn = {f"bn_{part}": np.ones(4) for part in ("scale", "bias", "mean", "var")}
    for index, (op, first, second) in enumerate(steps):
        source, other, out = available[first % len(available)], available[second % len(available)], f"t{index}"
        if op == "Conv":
            nodes.append(helper.make_node("Conv", [source, "w"], [out], kernel_shape=[1, 1]))
        elif op == "BatchNormalization":
            nodes.append(helper.make_node(op, [source, *bn], [out]))
        elif op == "Add":
            nodes.append(helper.make_node(op, [source, other], [out]))
        elif op == "Constant":
            constant = f"k{index}"
            nodes += [helper.make_node("Constant", [], [constant], value=numpy_helper.from_array(
                          np.full((1, 4, 1, 1), 0.5, np.float32))),
                      helper.make_node("Mul", [source, constant], [out])]
        else:
            nodes.append(helper.make_node(op, [source], [out]))
        available.append(out)
    exposed = draw(st.lists(st.sampled_from(available[1:]), unique=True, max_size=3))
    outputs = list(dict.fromkeys([available[-1], *exposed]))
    return _model(nodes, {"x": [1, 4, 3, 3]}, outputs, {"w": _weights(4, 4, 1, 1), **bn})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_cnn_models())
def test_fusion_keeps_nodes_edges_and_acyclicity_on_random_graphs(model: onnx.ModelProto) -> None:
    plain, fused = load_layer_graph(model), load_layer_graph(model, fuse=True)
    _assert_fusion_partitions_nodes(plain, fused)
    for layer, attrs in fused.dag.nodes(data=True):
        assert all(layer in fused.tensors[name].consumers for name in attrs["inputs"])
        assert all(fused.tensors[name].producer == layer for name in attrs["outputs"])
    assert set(fused.outputs) <= set(fused.tensors)


@pytest.mark.parametrize("name", ["chain", "resnet18", "mobilenetv2", "inception", "transformer", "mlp"])
def test_fusion_partitions_bundled_models(bundled_models, name: str) -> None:
    plain = load_layer_graph(bundled_models[name])
    fused = load_layer_graph(bundled_models[name], fuse=True)
    _assert_fusion_partitions_nodes(plain, fused)
    assert fused.onnx_node_ids() != [] and sorted(fused.onnx_node_ids()) == sorted(plain.dag.nodes)


@pytest.mark.parametrize("fuse", [False, True])
def test_resnet_block_has_skip_edge(bundled_models, fuse: bool) -> None:
    """An Add whose one input comes straight from the block's input while the other went through the convs."""
    dag = load_layer_graph(bundled_models["resnet18"], fuse=fuse).dag
    adds = [node for node, op in dag.nodes(data="op_type") if op == "Add"]
    assert len(adds) == 8  # one per basic block
    skips = [(shortcut, add) for add in adds for shortcut, main in itertools.permutations(dag.predecessors(add), 2)
             if nx.has_path(dag, shortcut, main) and nx.shortest_path_length(dag, shortcut, main) >= 2]
    # The blocks without downsampling (5 of 8) add their input itself.
    assert len(skips) >= 5


@pytest.mark.parametrize("fuse", [False, True])
def test_inception_block_has_four_parallel_branches_into_one_concat(bundled_models, fuse: bool) -> None:
    dag = load_layer_graph(bundled_models["inception"], fuse=fuse).dag
    (concat,) = [node for node, op in dag.nodes(data="op_type") if op == "Concat"]
    branch_ends = list(dag.predecessors(concat))
    assert len(branch_ends) == 4
    common = set.intersection(*(nx.ancestors(dag, end) for end in branch_ends))
    order = {node: index for index, node in enumerate(nx.topological_sort(dag))}
    fork = max(common, key=order.__getitem__)
    branches = [(nx.descendants(dag, fork) & nx.ancestors(dag, end)) | {end} for end in branch_ends]
    assert all(branches)
    for first, second in itertools.combinations(branches, 2):
        assert not first & second  # the branches share no node between fork and Concat
    assert sorted(map(len, branches)) == ([1, 2, 2, 2] if fuse else [2, 3, 4, 4])


def test_missing_file_is_a_model_load_error(tmp_path: Path) -> None:
    missing = tmp_path / "absent.onnx"
    with pytest.raises(ModelLoadError, match="does not exist") as caught:
        load_layer_graph(missing)
    assert str(missing) in str(caught.value)


def test_directory_is_a_model_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a file"):
        load_layer_graph(tmp_path)


@pytest.mark.parametrize("content", [b"", b"hello, I am a text file\n", bytes(range(256)) * 4])
def test_non_onnx_bytes_are_a_model_load_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError) as caught:
        load_layer_graph(path)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message


def test_truncated_model_is_a_model_load_error(tmp_path: Path, bundled_models) -> None:
    path = tmp_path / "truncated.onnx"
    path.write_bytes(bundled_models["mlp"].read_bytes()[:5000])
    with pytest.raises(ModelLoadError, match="truncated.onnx"):
        load_layer_graph(path)


def test_invalid_graph_is_a_model_load_error() -> None:
    model = _model([helper.make_node("Relu", ["missing"], ["y"])], {"x": [1]}, {"y": [1]})
    with pytest.raises(ModelLoadError, match="not a valid ONNX model"):
        load_layer_graph(model)



def test_an_initializer_that_is_also_a_graph_input_is_not_folded() -> None:
    """From IR 4 on, an initializer listed as an input is a default the caller may override."""
    model = _model([helper.make_node("Add", ["k", "c"], ["kc"], name="add"),
                    helper.make_node("Mul", ["x", "kc"], ["y"], name="mul")], {"x": [2, 4]}, ["y"],
                   {"k": _weights(2, 4), "c": _weights(2, 4)})
    model.graph.input.append(helper.make_tensor_value_info("k", FLOAT, [2, 4]))
    assert set(load_layer_graph(model).dag.nodes) == {"add", "mul"}
    del model.graph.input[-1]
    assert set(load_layer_graph(model).dag.nodes) == {"mul"}
