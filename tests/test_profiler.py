"""The on-host profiler: every node of every model gets a time keyed by its canonical id, profile files
round-trip and bad ones fail in one sentence; the CLI turns user mistakes into exit code 2."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from devices.errors import DeviceError
from devices.latency import (
    BLOCKS,
    RUNS,
    Condition,
    LatencyMeasurement,
    LatencyProtocol,
    RoundRunner,
    measure_interleaved,
    measure_latencies,
)
from devices.profiler import (
    PROFILE_FORMAT,
    ModelProfile,
    ThreadTiming,
    load_profile_file,
    measure_model,
    node_time_s,
    profile_model,
    profile_threads,
    random_inputs,
)
from devices.predictor import LatencyPredictor
from devices.profiles import DeviceProfile
from devices.microbench import kernel_models, shape_arithmetic_models, stem_conv_models
from devices.stages import prefix_stages
from edgecloud.calibration import canonical_model, layer_nodes, profile_samples, samples_from_times
from edgecloud import run_fit
from edgecloud.cli.app import app
from partitioner.graph.layer_graph import load_layer_graph
from partitioner.graph.onnx_names import unique_node_names
from partitioner.models.zoo import MODEL_NAMES

HOST = DeviceProfile("host", 1e11, 1e10, 2**30, 2, {"peak_flops": "test"})
FAST = {"warmup": 1, "repeats": 3}


def tiny_model(names: tuple[str, str, str] = ("relu", "const", "add")) -> onnx.ModelProto:
    """x -> Relu -> Add(Constant) -> MatMul-free tiny graph with a dynamic batch and a Constant node."""
    nodes = [
        helper.make_node("Relu", ["x"], ["y"], name=names[0]),
        helper.make_node("Constant", [], ["c"], name=names[1],
                         value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
        helper.make_node("Add", ["y", "c"], ["z"], name=names[2]),
    ]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 8])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_every_node_is_timed_or_listed_untimed() -> None:
    timing = measure_model(tiny_model(), threads=1, **FAST)
    assert list(timing.node_times_s) == ["relu", "const", "add"]
    # onnxruntime turns the Constant into an initializer: no kernel, so 0.0 and listed.
    assert timing.untimed == ["const"] and timing.node_times_s["const"] == 0.0
    assert timing.node_times_s["relu"] > 0 and timing.node_times_s["add"] > 0
    assert timing.latency_s > 0


def test_profile_model_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "tiny.onnx"
    onnx.save(tiny_model(), path)
    assert set(profile_model(path, threads=2, **FAST)) == {"relu", "const", "add"}


def test_names_must_be_canonical() -> None:
    with pytest.raises(DeviceError, match="name_nodes_uniquely"):
        measure_model(tiny_model(("", "const", "add")), **FAST)
    with pytest.raises(DeviceError, match="empty or repeated"):
        measure_model(tiny_model(("a", "a", "add")), **FAST)


def test_bad_arguments_and_missing_files_raise_device_error(tmp_path: Path) -> None:
    with pytest.raises(DeviceError, match="at least 1"):
        measure_model(tiny_model(), threads=0)
    with pytest.raises(DeviceError, match="does not exist"):
        measure_model(tmp_path / "nothing.onnx")


def test_random_inputs_fix_dynamic_dims_and_respect_types() -> None:
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["out"], name="g")], "g",
        [helper.make_tensor_value_info("table", TensorProto.FLOAT, [4, "d"]),
         helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
    feeds = random_inputs(helper.make_model(graph), seed=3)
    assert feeds["table"].shape == (4, 1) and feeds["table"].dtype == np.float32
    assert feeds["ids"].shape == (1,) and feeds["ids"].dtype == np.int64 and set(feeds["ids"]) <= {0, 1}
    np.testing.assert_array_equal(random_inputs(helper.make_model(graph), seed=3)["table"], feeds["table"])


@pytest.fixture(scope="session")
def bundled_profiles(bundled_models: Mapping[str, Path]) -> dict[str, ModelProfile]:
    """Every bundled model profiled once, 1 and 2 threads, few repeats (correctness, not timing)."""
    return {name: profile_threads(canonical_model(bundled_models[name]), str(bundled_models[name]), HOST, [1, 2],
                                  **FAST)
            for name in MODEL_NAMES}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_profile_covers_every_node_of_every_bundled_model(name: str, bundled_models: Mapping[str, Path],
                                                          bundled_profiles: dict[str, ModelProfile]) -> None:
    graph = load_layer_graph(bundled_models[name])
    for threads in (1, 2):
        timing = bundled_profiles[name].timings[threads]
        assert set(timing.node_times_s) == set(graph.dag.nodes)
        assert all(t >= 0 for t in timing.node_times_s.values())
        timed = [n for n, t in timing.node_times_s.items() if t > 0]
        assert set(timed) | set(timing.untimed) == set(graph.dag.nodes)
        assert timing.latency_s > 0


def test_samples_carry_dag_features_and_fused_layers_sum_their_members(
        bundled_models: Mapping[str, Path], bundled_profiles: dict[str, ModelProfile]) -> None:
    profile = bundled_profiles["resnet18"]
    times = profile.timings[1].node_times_s
    plain = samples_from_times(load_layer_graph(bundled_models["resnet18"]), times)
    assert len(plain) == len(times) and sum(s.flops for s in plain) > 10**8
    fused = samples_from_times(load_layer_graph(bundled_models["resnet18"], fuse=True), times)
    assert len(fused) < len(plain)
    assert sum(s.time_s for s in fused) == pytest.approx(sum(times.values()))
    with pytest.raises(DeviceError, match="no time for node"):
        samples_from_times(load_layer_graph(bundled_models["mlp"]), times)


def test_profile_file_round_trip(tmp_path: Path, bundled_profiles: dict[str, ModelProfile]) -> None:
    path = tmp_path / "profile.json"
    bundled_profiles["mlp"].save(path)
    data = json.loads(path.read_text())
    assert data["format"] == PROFILE_FORMAT and set(data["threads"]) == {"1", "2"}
    loaded = load_profile_file(path)
    assert loaded.timings == bundled_profiles["mlp"].timings
    assert loaded.host == HOST and loaded.repeats == FAST["repeats"]


def test_a_relative_model_path_is_relative_to_the_profile_file(tmp_path: Path) -> None:
    folder = tmp_path / "profiles"
    folder.mkdir()
    (folder / "p.json").write_text(json.dumps(_valid_profile()))
    assert Path(load_profile_file(folder / "p.json").model) == folder / "m.onnx"


def _valid_profile() -> dict:  # type: ignore[type-arg]
    timing = ThreadTiming(1, {"a": 1e-5, "b": 0.0}, ["b"], 2e-5)
    return ModelProfile("m.onnx", HOST, {1: timing}, 1, 3).to_dict()


@pytest.mark.parametrize(("corrupt", "message"), [
    (lambda d: d.update(format="nope"), "is not an edgecloud profile"),
    (lambda d: d.pop("host"), "missing key"),
    (lambda d: d["threads"].update({"1": {"a": -1.0}}), "non-negative number"),
    (lambda d: d["threads"].update({"1": {"a": "slow"}}), "non-negative number"),
    (lambda d: d["threads"].update({"x": {}}), "not a positive whole number"),
    (lambda d: d["host"].update(peak_flops=-5), "must be positive"),
    (lambda d: d["untimed"].update({"1": ["not-a-node"]}), "must list nodes"),
    (lambda d: d["settings"].update(repeats="many"), "whole numbers"),
])
def test_bad_profile_files_raise_one_sentence(tmp_path: Path, corrupt, message: str) -> None:  # type: ignore[no-untyped-def]
    data = _valid_profile()
    corrupt(data)
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DeviceError, match=message):
        load_profile_file(path)
    path.write_text("{truncated")
    with pytest.raises(DeviceError, match="not valid JSON"):
        load_profile_file(path)


runner = CliRunner()


def _single_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("error: ")
    return lines[0]


def test_cli_profile_of_a_missing_model_exits_2_with_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["profile", str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "x.json")])
    assert result.exit_code == 2
    assert "does not exist" in _single_error_line(result.output)


def test_cli_profile_of_a_corrupt_model_exits_2(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07 this is not protobuf")
    result = runner.invoke(app, ["profile", str(corrupt), "-o", str(tmp_path / "x.json")])
    assert result.exit_code == 2
    _single_error_line(result.output)


def test_cli_profile_canonicalises_names_and_writes_a_loadable_file(tmp_path: Path) -> None:
    model = tiny_model(("", "", "same"))
    model.graph.node[1].name = "same"  # empty and repeated names: the CLI canonicalises them
    source = tmp_path / "unnamed.onnx"
    onnx.save(model, source)
    output = tmp_path / "profile.json"
    result = runner.invoke(app, ["profile", str(source), "-o", str(output), "--threads", "1",
                                 "--warmup", "1", "--repeats", "2"])
    assert result.exit_code == 0, result.output
    profile = load_profile_file(output)
    assert list(profile.timings) == [1]
    assert list(profile.timings[1].node_times_s) == unique_node_names(tiny_model(("", "same", "same")).graph.node)
    assert Path(profile.model) == source.resolve()


def test_cli_profile_to_an_unwritable_path_exits_2(tmp_path: Path) -> None:
    source = tmp_path / "tiny.onnx"
    onnx.save(tiny_model(), source)
    result = runner.invoke(app, ["profile", str(source), "-o", str(tmp_path / "no" / "such" / "dir.json"),
                                 "--threads", "1", "--warmup", "0", "--repeats", "1"])
    assert result.exit_code == 2
    assert "cannot write" in _single_error_line(result.output)


def test_cli_output_that_is_a_directory_is_refused_before_any_profiling(tmp_path: Path) -> None:
    result = runner.invoke(app, ["predictor", "fit", "-o", str(tmp_path)])  # would profile every bundled model
    assert result.exit_code == 2
    assert "is a directory" in _single_error_line(result.output)
    result = runner.invoke(app, ["profile", str(tmp_path / "missing.onnx"), "-o", str(tmp_path)])
    assert result.exit_code == 2
    assert "is a directory" in _single_error_line(result.output)


def test_cli_profiles_a_bundled_model_by_name(tmp_path: Path, bundled_models: Mapping[str, Path]) -> None:
    output = tmp_path / "mlp.json"
    result = runner.invoke(app, ["profile", "mlp", "-o", str(output), "--threads", "2", "--repeats", "2"])
    assert result.exit_code == 0, result.output
    profile = load_profile_file(output)
    assert Path(profile.model) == bundled_models["mlp"].resolve()
    assert list(profile.timings) == [2] and len(profile.timings[2].node_times_s) == 5


def test_cli_predictor_fit_on_a_corrupt_profile_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "edgecloud.profile/1", "model": "m.onnx"}')
    result = runner.invoke(app, ["predictor", "fit", str(bad), "-o", str(tmp_path / "p.json")])
    assert result.exit_code == 2
    assert "missing key" in _single_error_line(result.output)


def test_cli_predictor_fit_writes_the_fit_the_bench_scores(tmp_path: Path, bundled_profiles: dict[str, ModelProfile],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """`edgecloud predictor fit` measures the profiled models' stages and the single-kernel models and
    writes `edgecloud.run_fit.fit_predictor` of them (the fit bench/predictor_error.py scores), nothing
    else. Timing is faked (a run costs by its node count) so that both sides see the same runs."""
    def timed(models: Mapping[str, onnx.ModelProto], threads: int, protocol: LatencyProtocol,
              seed: int) -> dict[str, LatencyMeasurement]:
        assert protocol == run_fit.run_protocol()
        return {name: LatencyMeasurement(seconds, seconds, seconds, protocol.rounds) for name, model in models.items()
                for seconds in [1e-5 + 2e-6 * len(model.graph.node)]}

    monkeypatch.setattr(run_fit, "measure_latencies", timed)
    paths = [tmp_path / f"{name}.json" for name in ("chain", "mlp")]
    for name, path in zip(("chain", "mlp"), paths):
        bundled_profiles[name].save(path)
    output = tmp_path / "predictor.json"
    result = runner.invoke(app, ["predictor", "fit", *map(str, paths), "-o", str(output), "--threads", "1"])
    assert result.exit_code == 0, result.output
    fitted = LatencyPredictor.load(output)
    loaded = {str(path): load_profile_file(path) for path in paths}
    runs = run_fit.measure_runs({name: Path(p.model) for name, p in loaded.items()}, 1)
    stage_times = runs["stages"]
    expected = run_fit.fit_predictor(loaded, 1, fitted.reference, stage_times, runs["kernels"])
    assert fitted.to_dict() == expected.to_dict()
    assert {"Conv", "Gemm", "Relu"} <= set(fitted.op_types)
    assert fitted.fitted_on["threads"] == 1 and fitted.fitted_on["kernel_runs"] == len(run_fit.single_kernel_models())
    assert fitted.fitted_on["stage_runs"] == sum(len(group) for group in stage_times.values()) > 2
    assert fitted.stage.work_scale == fitted.stage.fixed_scale == 1.0  # the run fit's, not a stage calibration's
    assert len(profile_samples(load_profile_file(paths[0]), 1)) == len(bundled_profiles["chain"].timings[1].node_times_s)


def test_cli_predictor_fit_refuses_profiles_without_the_thread_count(tmp_path: Path,
                                                                     bundled_profiles: dict[str, ModelProfile]) -> None:
    path = tmp_path / "chain.json"
    bundled_profiles["chain"].save(path)
    result = runner.invoke(app, ["predictor", "fit", str(path), "-o", str(tmp_path / "p.json"), "--threads", "3"])
    assert result.exit_code == 2
    assert "no timing with 3 thread(s)" in _single_error_line(result.output)


def conv_and_attention_model() -> onnx.ModelProto:
    """A depthwise, a pointwise and a dense 3x3 convolution, a MatMul on a weight and one of two activations."""
    rng = np.random.default_rng(0)

    def weight(name: str, shape: list[int]) -> onnx.TensorProto:
        return helper.make_tensor(name, TensorProto.FLOAT, shape, rng.standard_normal(shape).astype(np.float32).ravel())

    nodes = [
        helper.make_node("Conv", ["x", "w_dw"], ["a"], name="depthwise", group=8, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["a", "w_pw"], ["b"], name="pointwise"),
        helper.make_node("Conv", ["b", "w_3x3"], ["c"], name="dense", pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["c", "shape"], ["d"], name="flatten"),
        helper.make_node("MatMul", ["d", "w_fc"], ["e"], name="projection"),
        helper.make_node("Transpose", ["e"], ["et"], name="transpose", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["e", "et"], ["scores"], name="attention"),
    ]
    initializers = [weight("w_dw", [8, 1, 3, 3]), weight("w_pw", [16, 8, 1, 1]), weight("w_3x3", [16, 16, 3, 3]),
                    helper.make_tensor("shape", TensorProto.INT64, [3], [1, 16, 16]), weight("w_fc", [16, 4])]
    graph = helper.make_graph(nodes, "kernels", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 4, 4])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 16, 16])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_layer_nodes_carry_the_kernel_class_of_each_onnx_node() -> None:
    nodes = layer_nodes(load_layer_graph(conv_and_attention_model()))
    assert {name: node.kernel for name, node in nodes.items()} == {
        "depthwise": "Conv/depthwise", "pointwise": "Conv/pointwise", "dense": "Conv/dense", "flatten": "Reshape",
        "projection": "MatMul/weights", "transpose": "Transpose", "attention": "MatMul/activations"}
    assert all(node.op_type == node.kernel.split("/")[0] for node in nodes.values())
    assert {name: node.groups for name, node in nodes.items() if node.groups != 1} == {"depthwise": 8}
    # Only the depthwise Conv is priced by its im2col: 8 groups x 9 taps x 4 output rows of 4 pixels.
    assert {name: node.im2col for name, node in nodes.items() if node.im2col != (0, 0)} == {"depthwise": (288, 1152)}


def test_fused_layers_carry_no_kernel_class_and_keep_their_fused_type(bundled_models: Mapping[str, Path]) -> None:
    nodes = layer_nodes(load_layer_graph(bundled_models["mobilenetv2"], fuse=True))
    fused = [node for node in nodes.values() if "+" in node.op_type]
    assert fused and all(node.kernel == "" for node in fused)
    single = layer_nodes(load_layer_graph(bundled_models["mobilenetv2"]))
    assert {"Conv/depthwise", "Conv/pointwise"} <= {node.kernel for node in single.values()}


def test_measure_latencies_times_every_model_in_interleaved_rounds_with_two_halves() -> None:
    models = {"tiny": tiny_model(), "kernels": conv_and_attention_model()}
    protocol = LatencyProtocol(rounds=4, min_block_s=0.002, warmup_s=0.0)
    measured = measure_latencies(models, threads=1, protocol=protocol)
    assert set(measured) == {"tiny", "kernels"}
    for m in measured.values():
        assert m.runs >= protocol.rounds
        assert all(np.isfinite(v) and v > 0 for v in (m.latency_s, m.even_s, m.odd_s))
        assert m.split_half_spread == abs(m.even_s - m.odd_s) / min(m.even_s, m.odd_s)
    with pytest.raises(DeviceError, match="at least 2 rounds"):
        LatencyProtocol(rounds=1)
    with pytest.raises(DeviceError, match="positive block time"):
        LatencyProtocol(min_block_s=0.0)
    with pytest.raises(DeviceError, match="one of runs, blocks"):
        LatencyProtocol(statistic="mean")
    with pytest.raises(DeviceError, match="at least 1"):
        measure_latencies(models, threads=0)


def test_interleaved_conditions_take_turns_round_by_round_each_with_its_own_threads() -> None:
    entered: list[str] = []
    conditions = [Condition(name, threads, LatencyProtocol(rounds=3, min_block_s=0.001, warmup_s=0.0),
                            lambda name=name: entered.append(name))  # type: ignore[misc]
                  for name, threads in (("one", 1), ("two", 2))]
    measured = measure_interleaved({"tiny": tiny_model()}, conditions, rounds=3)
    assert entered == ["one", "two"] * 3  # a burst of load cannot fall on one condition's rounds only
    assert set(measured) == {"one", "two"} and all(m["tiny"].latency_s > 0 for m in measured.values())
    with pytest.raises(DeviceError, match="rounds at least 2"):
        measure_interleaved({"tiny": tiny_model()}, conditions, rounds=1)


def test_run_quantile_ignores_preemptions_and_block_statistic_keeps_a_quota_s_sustained_rate() -> None:
    # Runs of 1 ms, a fifth of them preempted to 9 ms: the 10th percentile is the undisturbed run.
    preempted = [[1e-3, 1e-3, 1e-3, 1e-3, 9e-3] for _ in range(4)]
    assert LatencyProtocol(statistic=RUNS).estimate_s(preempted) == pytest.approx(1e-3)
    # Under a CPU quota every block's mean is the sustained rate; a single run can be fast or throttled.
    throttled = [[1e-3, 3e-3], [1e-3, 3e-3, 1e-3, 3e-3], [1e-3, 5e-3]]
    assert LatencyProtocol(statistic=BLOCKS).estimate_s(throttled) == pytest.approx(2e-3)


def test_node_time_resolves_sub_microsecond_kernels_and_drops_preempted_runs() -> None:
    # The trace's whole microseconds: a 0.4 µs kernel reads 0 or 1 µs; a median says 0.
    quantised = [0.0, 1e-6, 0.0, 1e-6, 0.0] * 4
    assert node_time_s(quantised) == pytest.approx(0.4e-6, abs=0.1e-6)
    assert node_time_s([5e-6] * 9 + [500e-6]) == pytest.approx(5e-6)


def test_prefix_stages_run_their_first_nodes_and_output_every_crossing_tensor() -> None:
    import onnxruntime as ort

    model = conv_and_attention_model()
    stages = prefix_stages(model, 3)
    names = [node.name for node in model.graph.node]
    assert [len(s.nodes) for s in stages] == sorted({len(s.nodes) for s in stages})
    assert stages[-1].nodes == names  # the last prefix is the whole model
    feeds = random_inputs(model)
    whole = onnx.ModelProto()
    whole.CopyFrom(model)
    for stage in stages:
        assert stage.nodes == names[:len(stage.nodes)]
        crossing = [o.name for o in stage.model.graph.output]
        later = {i for node in model.graph.node[len(stage.nodes):] for i in node.input} | {o.name for o in model.graph.output}
        assert crossing and set(crossing) <= later
        # Every crossing tensor holds what the whole model computes there.
        del whole.graph.output[:]
        whole.graph.output.extend(stage.model.graph.output)
        expected = ort.InferenceSession(whole.SerializeToString()).run(None, feeds)
        got = ort.InferenceSession(stage.model.SerializeToString()).run(None, feeds)
        for a, b in zip(got, expected, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6)
    with pytest.raises(DeviceError, match="at least one prefix"):
        prefix_stages(model, 0)


def test_kernel_models_sample_every_kernel_class_as_a_runnable_single_node_model() -> None:
    models = kernel_models(14, seed=1)
    assert kernel_models(14, seed=1).keys() == models.keys() and len(models) == 14
    classes = set()
    for model in models.values():
        nodes = list(layer_nodes(load_layer_graph(model)).values())
        assert len(nodes) == 1
        classes.add(nodes[0].kernel)
        if nodes[0].kernel == "Conv/depthwise":
            assert nodes[0].groups > 1
    assert {"Conv/depthwise", "Conv/grouped", "Conv/pointwise", "Conv/dense", "MatMul/weights",
            "MatMul/activations", "Gemm/weights", "MaxPool"} <= classes
    # The shipped sample's size: every element-wise kind comes round, ReLU6 (Clip) and pools among them.
    op_types = {model.graph.node[0].op_type for model in kernel_models(run_fit.KERNEL_MODELS).values()}
    assert {"MaxPool", "Clip", "Relu", "Add", "LayerNormalization", "Transpose", "Softmax"} <= op_types
    measured = measure_latencies(dict(list(models.items())[:3]), 1, LatencyProtocol(rounds=2, min_block_s=0.001,
                                                                                    warmup_s=0.0))
    assert all(m.latency_s > 0 for m in measured.values())
    with pytest.raises(DeviceError, match="at least one model"):
        kernel_models(0)


def test_stem_convs_cover_what_the_sampled_kernels_lack_in_shapes_no_evaluated_model_has() -> None:
    """An image model's first layer: a dense Conv of 3 input channels on a plane larger than any sampled
    kernel's. The run pass measures them with the sampled kernels; none may repeat a bundled or real
    model's own first layer (it would leak a held-out model into its own fit)."""
    from edgecloud.calibration import predictor_model_paths  # the models bench/predictor_error.py holds out

    stems = stem_conv_models()
    sampled = list(kernel_models(run_fit.KERNEL_MODELS).values())
    def dense(model: onnx.ModelProto) -> bool:  # a group-1 Conv with a kernel wider than 1
        node = model.graph.node[0]
        groups = next((a.i for a in node.attribute if a.name == "group"), 1)
        return node.op_type == "Conv" and groups == 1 and model.graph.initializer[0].dims[2] > 1

    largest_sampled_plane = max(m.graph.input[0].type.tensor_type.shape.dim[-1].dim_value for m in sampled if dense(m))
    assert len(stems) == 8 and set(stems) <= set(run_fit.single_kernel_models())

    def first_conv(model: onnx.ModelProto) -> tuple[int, ...]:
        conv = next(node for node in model.graph.node if node.op_type == "Conv")
        weights = {i.name: tuple(i.dims) for i in model.graph.initializer}
        planes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.input}
        strides = next((tuple(a.ints) for a in conv.attribute if a.name == "strides"), (1, 1))
        return (*weights.get(conv.input[1], ()), planes.get(conv.input[0], [0])[-1], *strides)

    evaluated = set()
    for path in predictor_model_paths(0).values():
        model = onnx.load(str(path))
        if any(node.op_type == "Conv" for node in model.graph.node):
            evaluated.add(first_conv(model))
    for name, model in stems.items():
        nodes = list(layer_nodes(load_layer_graph(model)).values())
        assert len(nodes) == 1 and nodes[0].kernel == "Conv/dense", name
        weight_shape = tuple(model.graph.initializer[0].dims)
        assert weight_shape[1] == 3, name
        assert dense(model) and model.graph.input[0].type.tensor_type.shape.dim[-1].dim_value > largest_sampled_plane, name
        assert first_conv(model) not in evaluated, name


def test_computed_reshapes_keep_their_shape_ops_in_a_run_and_are_classed_as_the_transformers(tmp_path: Path) -> None:
    """The shape-arithmetic sample must time what a dynamic-batch export runs: onnxruntime's optimizer
    folds a lone Shape -> Slice -> Concat -> Reshape into one Reshape (so a sample like that would price
    the shape ops at nothing), but keeps them where the slices feed two targets, as in the transformer.
    Its classes are the transformer's own, and its planes are not the transformer's."""
    import onnxruntime as ort

    from partitioner.graph.kernel_classes import layer_kernel_classes
    from partitioner.models.zoo import cached_model_path

    samples = shape_arithmetic_models()
    assert len(samples) == 8 and set(samples) <= set(run_fit.single_kernel_models())
    transformer = load_layer_graph(str(cached_model_path("transformer")))
    transformer_classes = set(layer_kernel_classes(transformer).values())
    transformer_plane = [d.dim_value for d in transformer.model.graph.input[0].type.tensor_type.shape.dim][1:]
    for name, model in samples.items():
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / f"{name}.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(options.optimized_model_filepath)
        assert [n.op_type for n in optimized.graph.node] == [n.op_type for n in model.graph.node], name
        classes = set(layer_kernel_classes(load_layer_graph(model)).values())
        assert classes == {"Shape", "Slice/shape", "Concat/shape", "Reshape/computed"}, (name, classes)
        assert classes <= transformer_classes
        assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim][1:] != transformer_plane


def test_shape_arithmetic_is_a_class_only_where_every_variable_input_comes_from_a_shape() -> None:
    """A Concat of computed dimensions and constants is shape arithmetic; the same Concat of an activation
    is not; an omitted optional input does not hide it; a Reshape or Expand to a computed target is its
    own class, to a constant target it is not; a Range builds a full-size tensor from a shape, so what
    follows it is not shape arithmetic."""
    from partitioner.graph.kernel_classes import node_kernel_classes

    def ints(name: str, values: list[int], scalar: bool = False) -> onnx.TensorProto:
        return helper.make_tensor(name, TensorProto.INT64, [] if scalar else [len(values)], values)

    nodes = [helper.make_node("Shape", ["x"], ["shape"], name="shape"),
             helper.make_node("Slice", ["shape", "zero", "one", "", "one"], ["batch"], name="slice"),
             helper.make_node("Concat", ["batch", "rest"], ["target"], name="concat", axis=0),
             helper.make_node("Reshape", ["x", "target"], ["computed"], name="reshape-computed"),
             helper.make_node("Reshape", ["computed", "fixed"], ["flat"], name="reshape-constant"),
             helper.make_node("Concat", ["flat", "flat"], ["wide"], name="concat-activations", axis=1),
             helper.make_node("Expand", ["row", "target"], ["rows"], name="expand-computed"),
             helper.make_node("Squeeze", ["batch", "zero"], ["count"], name="squeeze"),
             helper.make_node("Range", ["start", "count", "step"], ["positions"], name="range"),
             helper.make_node("Add", ["positions", "positions"], ["y"], name="add-positions")]
    graph = helper.make_graph(nodes, "shapes", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 8])],
                              [helper.make_tensor_value_info(name, elem, None) for name, elem in
                               (("wide", TensorProto.FLOAT), ("rows", TensorProto.FLOAT), ("y", TensorProto.INT64))],
                              [ints("zero", [0]), ints("one", [1]), ints("rest", [32]), ints("fixed", [-1, 32]),
                               helper.make_tensor("row", TensorProto.FLOAT, [32], [0.0] * 32),
                               ints("start", [0], scalar=True), ints("step", [1], scalar=True)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    classes = node_kernel_classes(load_layer_graph(onnx.shape_inference.infer_shapes(model)))
    assert classes == {"shape": "Shape", "slice": "Slice/shape", "concat": "Concat/shape",
                       "reshape-computed": "Reshape/computed", "reshape-constant": "Reshape",
                       "concat-activations": "Concat", "expand-computed": "Expand/computed",
                       "squeeze": "Squeeze/shape", "range": "Range", "add-positions": "Add"}


def test_a_round_runner_runs_one_block_per_model_per_round_and_keeps_two_halves() -> None:
    """What one device's process of a held-out-device pass runs: a block of every model per round,
    rounds on request; its measurements are the protocol's figures over those blocks."""
    protocol = LatencyProtocol(rounds=4, min_block_s=0.001, warmup_s=0.0)
    runner = RoundRunner({"tiny": tiny_model(), "kernels": conv_and_attention_model()}, 1, protocol)
    runner.run_round()
    with pytest.raises(DeviceError, match="at least 2 rounds"):
        runner.measurements()  # one round: no two halves
    for _ in range(2):
        runner.run_round()
    measured = runner.measurements()
    assert set(measured) == {"tiny", "kernels"}
    for m in measured.values():
        assert m.runs >= 3 and 0 < min(m.even_s, m.odd_s) and m.latency_s > 0
    with pytest.raises(DeviceError, match="at least 1"):
        RoundRunner({"tiny": tiny_model()}, 0, protocol)


class _ColdAfterAGapSession:
    """A session whose first run after another model ran is slow, as ResNet-18's is here (1 thread:
    10.6 ms after 10 ms of other models or 0.3 s of sleep, then 6.4, 5.6, 5.1 ms): its weights and
    pages are cold again. The timings are the point of the test, so they are made, not measured."""

    COLD_S, WARM_S, GAP_S = 0.03, 0.001, 0.005

    def __init__(self) -> None:
        self.last = -1.0

    def run(self, _outputs: object, _feeds: object) -> list[np.ndarray]:
        import time

        cold = time.perf_counter() - self.last > self.GAP_S
        time.sleep(self.COLD_S if cold else self.WARM_S)
        self.last = time.perf_counter()
        return []


def test_a_block_does_not_time_the_run_that_pays_for_the_models_before_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # A cold first run longer than the block would otherwise be the block's only run: every figure cold.
    import devices.latency as latency

    monkeypatch.setattr(latency, "make_session", lambda *_args, **_kwargs: _ColdAfterAGapSession())
    protocol = LatencyProtocol(rounds=4, min_block_s=0.01, warmup_s=0.0)
    measured = measure_latencies({"a": tiny_model(), "b": tiny_model()}, threads=1, protocol=protocol)
    for m in measured.values():
        assert max(m.latency_s, m.even_s, m.odd_s) < _ColdAfterAGapSession.COLD_S / 3
        assert m.runs >= protocol.rounds
