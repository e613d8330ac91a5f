"""The latency predictor: recovers known coefficients (per op type and per kernel class), calibrates a
stage and a new device, evaluates honestly, transfers across devices, never crashes on an unknown op
type, round-trips through JSON, and the shipped file is valid."""

from __future__ import annotations

import functools
import json
from dataclasses import replace
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.errors import DeviceError
from devices.predictor import (
    DEFAULT_OVERHEAD_S,
    MAX_DEVICE_MEASUREMENTS,
    LatencyPredictor,
    NodeSample,
    OpCoefficients,
    error_summary,
    held_out_device,
    kernel_class,
    leave_one_model_out,
    op_type_of,
    cold_share,
    in_run,
    predict_node_time_s,
    roofline_features,
    roofline_time_s,
    weight_reuse,
    shipped_predictor,
)
from devices.lookup import load_device
from devices.predictor.evaluation import calibration_models, run_weights
from devices.predictor.model import CACHE_BYTES
from devices.profiles import DeviceProfile

REFERENCE = DeviceProfile("ref", peak_flops=1e11, memory_bandwidth_bytes_per_s=1e10, memory_bytes=2**30, threads=2)
TRUE = {
    "Conv": OpCoefficients(compute=2.0, activations=1.5, params=0.5, overhead_s=4e-6, samples=0),
    "Relu": OpCoefficients(compute=0.0, activations=3.0, params=0.0, overhead_s=2e-6, samples=0),
}


def synthetic_samples(seed: int, per_op: int = 40) -> list[NodeSample]:
    """Nodes whose times follow TRUE exactly on REFERENCE (its features, `roofline_features`: a node
    onnxruntime would not split does its work at one thread's rate), with features over three decades."""
    rng = np.random.default_rng(seed)
    samples = []
    for op_type, truth in TRUE.items():
        for _ in range(per_op):
            flops = int(10 ** rng.uniform(4, 8))
            param_bytes = int(10 ** rng.uniform(2, 6)) if op_type == "Conv" else 0
            bytes_moved = int(10 ** rng.uniform(3, 7)) + param_bytes
            features = roofline_features(flops, bytes_moved, param_bytes, REFERENCE, REFERENCE, kernel=op_type)
            time_s = float(truth.as_vector()[:4] @ features[:4])
            samples.append(NodeSample(op_type, flops, bytes_moved, param_bytes, time_s))
    return samples


@pytest.mark.parametrize("seed", [0, 1])
def test_fit_recovers_known_coefficients(seed: int) -> None:
    predictor = LatencyPredictor.fit(synthetic_samples(seed), REFERENCE, shrinkage=0.0)
    for op_type, truth in TRUE.items():
        fitted = predictor.op_types[op_type]
        np.testing.assert_allclose(fitted.as_vector(), truth.as_vector(), rtol=1e-4, atol=1e-10)
        assert fitted.samples == 40


def test_default_shrinkage_still_predicts_exact_data_closely() -> None:
    samples = synthetic_samples(2)
    predictor = LatencyPredictor.fit(samples, REFERENCE)
    errors = [abs(predictor.predict(s.op_type, s.flops, s.bytes_moved, s.param_bytes, REFERENCE) - s.time_s) / s.time_s
              for s in samples]
    assert np.median(errors) < 0.02


def test_prediction_scales_with_the_device() -> None:
    predictor = LatencyPredictor.fit(synthetic_samples(0), REFERENCE, shrinkage=0.0)
    twice = DeviceProfile("twice", 2e11, 2e10, 2**30, threads=2)
    for op_type in TRUE:
        # Every term halves: compute and memory by the figures, the fixed cost by the per-thread speed.
        assert predictor.predict(op_type, 10**6, 10**5, 10**3, twice) == pytest.approx(
            predictor.predict(op_type, 10**6, 10**5, 10**3, REFERENCE) / 2)
    more_threads = DeviceProfile("wide", 2e11, 1e10, 2**30, threads=4)  # same per-thread speed
    conv = predictor.op_types["Conv"]
    expected = conv.compute * 1e6 / 2e11 + conv.overhead_s
    assert predictor.predict("Conv", 10**6, 0, 0, more_threads) == pytest.approx(expected)


def test_unknown_op_type_uses_the_pooled_model_and_never_crashes() -> None:
    predictor = LatencyPredictor.fit(synthetic_samples(0), REFERENCE)
    assert predictor.pooled is not None
    seconds = predictor.predict("MyCustomOp", 10**6, 10**5, 0, REFERENCE)
    features = np.array([1e6 / 1e11, 1e5 / 1e10, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    assert seconds == pytest.approx(float(features @ predictor.pooled.as_vector()))
    assert seconds > 0


def test_unfitted_predictor_falls_back_to_the_plain_roofline() -> None:
    predictor = LatencyPredictor(REFERENCE)
    assert predictor.predict("Anything", 10**9, 10**3, 0, REFERENCE) == pytest.approx(
        roofline_time_s(10**9, 10**3, REFERENCE) + DEFAULT_OVERHEAD_S)
    assert roofline_time_s(10**9, 10**3, REFERENCE) == pytest.approx(1e9 / 1e11)  # compute-bound
    assert roofline_time_s(10, 10**9, REFERENCE) == pytest.approx(1e9 / 1e10)  # memory-bound


def test_fused_type_takes_its_head_factors_and_every_fixed_cost() -> None:
    predictor = LatencyPredictor.fit(synthetic_samples(0), REFERENCE, shrinkage=0.0)
    conv, relu = predictor.op_types["Conv"], predictor.op_types["Relu"]
    fused = predictor.predict("Conv+Relu", 10**6, 10**5, 10**3, REFERENCE)
    alone = predictor.predict("Conv", 10**6, 10**5, 10**3, REFERENCE)
    assert fused == pytest.approx(alone + relu.overhead_s)
    assert conv.overhead_s < fused


@settings(max_examples=30, deadline=None)
@given(op_type=st.text(min_size=1, max_size=12), flops=st.integers(0, 10**12),
       activation_bytes=st.integers(0, 10**10), param_bytes=st.integers(0, 10**9))
def test_predictions_are_finite_and_non_negative(op_type: str, flops: int, activation_bytes: int,
                                                 param_bytes: int) -> None:
    predictor = _fitted()
    seconds = predictor.predict(op_type, flops, activation_bytes + param_bytes, param_bytes, REFERENCE)
    assert np.isfinite(seconds) and seconds >= 0


@functools.cache
def _fitted() -> LatencyPredictor:
    return LatencyPredictor.fit(synthetic_samples(0), REFERENCE)


def test_untimed_samples_are_ignored_and_empty_fits_refused() -> None:
    samples = synthetic_samples(0) + [NodeSample("Conv", 10**9, 10**9, 0, 0.0)]
    assert LatencyPredictor.fit(samples, REFERENCE).op_types["Conv"].samples == 40
    with pytest.raises(DeviceError, match="at least one timed node"):
        LatencyPredictor.fit([NodeSample("Conv", 1, 1, 0, 0.0)], REFERENCE)


def test_json_round_trip(tmp_path: Path) -> None:
    predictor = LatencyPredictor.fit(synthetic_samples(0), REFERENCE, fitted_on={"models": ["x"]})
    path = tmp_path / "predictor.json"
    predictor.save(path)
    loaded = LatencyPredictor.load(path)
    assert loaded.op_types == predictor.op_types and loaded.pooled == predictor.pooled
    assert loaded.reference == REFERENCE and loaded.fitted_on == {"models": ["x"]}


@pytest.mark.parametrize("corrupt", [
    lambda d: d.update(format="something/else"),
    lambda d: d["op_types"]["Conv"].pop("compute"),
    lambda d: d["op_types"]["Conv"].update(compute=-1.0),
    lambda d: d["op_types"]["Conv"].update(compute="fast"),
    lambda d: d.pop("reference"),
])
def test_bad_predictor_files_raise_device_error(tmp_path: Path, corrupt) -> None:  # type: ignore[no-untyped-def]
    data = LatencyPredictor.fit(synthetic_samples(0), REFERENCE).to_dict()
    corrupt(data)
    path = tmp_path / "predictor.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DeviceError):
        LatencyPredictor.load(path)


def test_leave_one_model_out_is_exact_on_noise_free_data() -> None:
    by_model = {"a": synthetic_samples(0, 20), "b": synthetic_samples(1, 20), "c": synthetic_samples(2, 20)}
    results = leave_one_model_out(by_model, REFERENCE)
    assert [r.model for r in results] == ["a", "b", "c"]
    for result in results:
        assert len(result.node_relative_errors) == 40
        assert result.model_relative_error < 0.02
    with pytest.raises(DeviceError, match="at least two models"):
        leave_one_model_out({"a": by_model["a"]}, REFERENCE)


def test_shipped_predictor_covers_the_common_ops_and_plans_catalogue_devices() -> None:
    predictor = shipped_predictor()
    assert {"Conv", "Gemm", "MatMul", "Relu", "Add"} <= set(predictor.op_types)
    rpi, cloud = load_device("rpi4"), load_device("cloud-server")
    conv_on_rpi = predict_node_time_s("Conv", 10**8, 10**6, 10**5, rpi)
    conv_on_cloud = predict_node_time_s("Conv", 10**8, 10**6, 10**5, cloud)
    assert conv_on_rpi > conv_on_cloud > 0
    assert predict_node_time_s("NotAnOnnxOp", 10**6, 10**4, 0, rpi) > 0


def test_cli_estimate_ranks_devices_and_rejects_unknown_ones(tmp_path: Path,
                                                            bundled_models: Mapping[str, Path]) -> None:
    from typer.testing import CliRunner

    from edgecloud.cli.app import app

    slow = DeviceProfile("slow-board", peak_flops=1e9, memory_bandwidth_bytes_per_s=1e9, memory_bytes=2**30, threads=1)
    slow.save(tmp_path / "slow.json")
    runner = CliRunner()
    result = runner.invoke(app, ["predictor", "estimate", str(bundled_models["mlp"]), "-d", "cloud-server",
                                 "-d", str(tmp_path / "slow.json")])
    assert result.exit_code == 0, result.output
    assert "cloud-server" in result.output and "slow-board" in result.output
    result = runner.invoke(app, ["predictor", "estimate", "mlp", "-d", "pi-zero"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: unknown device 'pi-zero': use one of cloud-server, edge-server, jetson-nano, rpi4, host or a JSON file."]


# --- kernel classes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("op_type", "attributes", "shapes", "constants", "expected"), [
    ("Conv", {"group": 32}, [(1, 32, 8, 8), (32, 1, 3, 3)], [False, True], "Conv/depthwise"),
    ("Conv", {"group": 32, "strides": [2, 2]}, [(1, 32, 8, 8), (32, 1, 3, 3)], [False, True], "Conv/depthwise-strided"),
    ("Conv", {"group": 32, "strides": [1, 1]}, [(1, 32, 8, 8), (32, 1, 7, 7)], [False, True], "Conv/depthwise"),
    ("Conv", {"group": 4}, [(1, 32, 8, 8), (32, 8, 3, 3)], [False, True], "Conv/grouped"),
    ("Conv", {}, [(1, 32, 8, 8), (64, 32, 1, 1)], [False, True], "Conv/pointwise"),
    ("Conv", {"group": 1}, [(1, 32, 8, 8), (64, 32, 3, 3)], [False, True], "Conv/dense"),
    ("Conv", {}, [(1, 32, 8, 8), None], [False, False], "Conv/dense"),
    ("ConvTranspose", {"group": 8}, [(1, 8, 4, 4), (8, 1, 2, 2)], [False, True], "ConvTranspose/depthwise"),
    ("MatMul", {}, [(1, 16, 32), (32, 32)], [False, True], "MatMul/weights"),
    ("MatMul", {}, [(1, 2, 16, 16), (1, 2, 16, 16)], [False, False], "MatMul/activations"),
    ("Gemm", {}, [(1, 32), (10, 32), (10,)], [False, True, True], "Gemm/weights"),
    ("Relu", {}, [(1, 32)], [False], "Relu"),
])
def test_kernel_class_tells_apart_what_shares_an_op_type(op_type, attributes, shapes, constants,  # type: ignore[no-untyped-def]
                                                         expected) -> None:
    kernel = kernel_class(op_type, attributes, shapes, constants)
    assert kernel == expected
    assert op_type_of(kernel) == op_type


# A depthwise Conv: dearer per FLOP, a fixed cost per channel (onnxruntime loops over the groups), and
# its im2col: a cost per column-buffer row and per element copied.
DEPTHWISE = OpCoefficients(compute=12.0, activations=2.5, params=0.5, overhead_s=3e-6, samples=0, per_group_s=0.1e-6,
                           per_row_s=5e-9, per_element_s=0.3e-9)


def _timed(sample: NodeSample, truth: OpCoefficients, device: DeviceProfile = REFERENCE) -> NodeSample:
    features = roofline_features(sample.flops, sample.bytes_moved, sample.param_bytes, device, REFERENCE, sample.groups,
                                 sample.im2col, sample.cold_share, sample.kernel_class)
    return replace(sample, time_s=float(features @ truth.as_vector()))


def depthwise_and_dense(seed: int) -> list[NodeSample]:
    """Conv nodes of two kernel classes with different true costs (depthwise 6x dearer per FLOP)."""
    rng = np.random.default_rng(seed)
    samples = []
    for kernel, truth in (("Conv/dense", TRUE["Conv"]), ("Conv/depthwise", DEPTHWISE)):
        for _ in range(30):
            flops, params = int(10 ** rng.uniform(5, 8)), int(10 ** rng.uniform(2, 5))
            depthwise = kernel == "Conv/depthwise"
            groups = int(2 ** rng.integers(3, 10)) if depthwise else 1
            rows, elements = (int(10 ** rng.uniform(3, 5)), int(10 ** rng.uniform(4, 7))) if depthwise else (0, 0)
            node = NodeSample("Conv", flops, int(10 ** rng.uniform(4, 6)) + params, params, 0.0, kernel, groups, rows,
                              elements)
            samples.append(_timed(node, truth))
    return samples


def test_kernel_classes_recover_each_variant_where_the_op_type_alone_cannot() -> None:
    samples = depthwise_and_dense(0)
    predictor = LatencyPredictor.fit(samples, REFERENCE, shrinkage=0.0)
    np.testing.assert_allclose(predictor.op_types["Conv/depthwise"].as_vector(), DEPTHWISE.as_vector(), rtol=1e-4)
    np.testing.assert_allclose(predictor.op_types["Conv/dense"].as_vector(), TRUE["Conv"].as_vector(), rtol=1e-4)
    op_type_only = LatencyPredictor.fit([NodeSample(s.op_type, s.flops, s.bytes_moved, s.param_bytes, s.time_s)
                                         for s in samples], REFERENCE, shrinkage=0.0)

    def worst(p: LatencyPredictor) -> float:
        return max(abs(p.predict(s.op_type, s.flops, s.bytes_moved, s.param_bytes, REFERENCE, s.kernel, s.groups,
                                 s.im2col) - s.time_s)
                   / s.time_s for s in samples)

    assert worst(predictor) < 1e-3 < 0.2 < worst(op_type_only)


def test_an_unseen_kernel_class_falls_back_to_its_op_type() -> None:
    predictor = LatencyPredictor.fit(synthetic_samples(0), REFERENCE)
    assert predictor.predict("Conv", 10**6, 10**5, 10**3, REFERENCE, kernel="Conv/grouped") == pytest.approx(
        predictor.predict("Conv", 10**6, 10**5, 10**3, REFERENCE))


def test_an_unseen_refinement_falls_back_to_the_class_it_refines() -> None:
    # A predictor fitted before "Conv/depthwise-strided" existed prices one as a depthwise Conv, not as a Conv.
    predictor = LatencyPredictor.fit(depthwise_and_dense(0), REFERENCE, shrinkage=0.0)
    strided = predictor.predict("Conv", 10**6, 10**5, 10**3, REFERENCE, "Conv/depthwise-strided", 64)
    assert strided == pytest.approx(predictor.predict("Conv", 10**6, 10**5, 10**3, REFERENCE, "Conv/depthwise", 64))
    assert strided != pytest.approx(predictor.predict("Conv", 10**6, 10**5, 10**3, REFERENCE, "Conv/dense", 64))
    # Fitted on strided samples too, the refinement gets its own coefficients.
    samples = depthwise_and_dense(1)
    refined = [replace(s, kernel="Conv/depthwise-strided", time_s=3 * s.time_s) for s in samples
               if s.kernel == "Conv/depthwise"]
    both = LatencyPredictor.fit(samples + refined, REFERENCE, shrinkage=0.0)
    assert "Conv/depthwise-strided" in both.op_types
    s = refined[0]
    assert both.predict(s.op_type, s.flops, s.bytes_moved, s.param_bytes, REFERENCE, s.kernel, s.groups) == pytest.approx(
        s.time_s, rel=0.05)


# --- stage and device calibration -------------------------------------------------------------------


def stages_of(samples: list[NodeSample], size: int) -> list[list[NodeSample]]:
    return [samples[i:i + size] for i in range(0, len(samples), size)]


def small_stages(seed: int, count: int) -> list[list[NodeSample]]:
    """Runs of 1 to 30 nodes, big and small, so that work, per-node and per-run costs are all visible."""
    rng = np.random.default_rng(seed)
    stages = []
    for _ in range(count):
        nodes = []
        for _ in range(int(rng.integers(1, 31))):
            flops = int(10 ** rng.uniform(2, 7))
            nodes.append(NodeSample("Conv", flops, int(10 ** rng.uniform(2, 6)), 0, 0.0))
        stages.append(nodes)
    return stages


def test_stage_calibration_recovers_work_and_fixed_scales_and_a_per_run_cost() -> None:
    predictor = LatencyPredictor.fit(synthetic_samples(0), REFERENCE, shrinkage=0.0)
    stages = small_stages(1, 12)
    truth = []
    for nodes in stages:
        parts = predictor.stage_parts(nodes, REFERENCE)
        truth.append((nodes, 0.8 * parts.work_s + 0.4 * parts.fixed_s + 30e-6))
    calibrated = predictor.with_stage_calibration(truth)
    assert (calibrated.stage.work_scale, calibrated.stage.fixed_scale) == pytest.approx((0.8, 0.4), rel=1e-2)
    assert calibrated.stage.per_run_s == pytest.approx(30e-6, rel=2e-2)
    for nodes, seconds in truth:
        assert calibrated.predict_stage_s(nodes, REFERENCE) == pytest.approx(seconds, rel=1e-3)
    # A node within a run carries the scales, the per-run cost belongs to the run only.
    node = stages[0][0]
    parts = predictor.node_parts(node.op_type, node.flops, node.bytes_moved, node.param_bytes, REFERENCE)
    assert calibrated.predict(node.op_type, node.flops, node.bytes_moved, node.param_bytes, REFERENCE) == pytest.approx(
        calibrated.stage.work_scale * parts.work_s + calibrated.stage.fixed_scale * parts.fixed_s)
    with pytest.raises(DeviceError, match="positive time"):
        predictor.with_stage_calibration([(stages[0], 0.0)])


SLOW = DeviceProfile("slow", peak_flops=5e10, memory_bandwidth_bytes_per_s=5e9, memory_bytes=2**30, threads=1)


def test_device_calibration_recovers_the_scales_from_at_most_ten_runs() -> None:
    predictor = LatencyPredictor.fit(synthetic_samples(0), REFERENCE, shrinkage=0.0)
    runs = []
    for nodes in small_stages(3, MAX_DEVICE_MEASUREMENTS):
        parts = predictor.stage_parts(nodes, SLOW)
        runs.append((nodes, 3.0 * parts.work_s + 1.5 * parts.fixed_s))
    calibrated = predictor.with_device_calibration(SLOW, runs)
    scales = calibrated.devices["slow"]
    # The work scale is well determined; the fixed one, a small share of each run, gives a little to the
    # weak pull towards one common scale that keeps ill-posed calibrations sane.
    assert scales.work_scale == pytest.approx(3.0, rel=2e-2) and scales.fixed_scale == pytest.approx(1.5, rel=0.15)
    assert scales.measurements == MAX_DEVICE_MEASUREMENTS
    unseen = small_stages(4, 1)[0]
    parts = predictor.stage_parts(unseen, SLOW)
    assert calibrated.predict_stage_s(unseen, SLOW) == pytest.approx(3.0 * parts.work_s + 1.5 * parts.fixed_s, rel=2e-2)
    # Other devices are untouched, and one run gives one common scale.
    assert calibrated.predict_stage_s(unseen, REFERENCE) == pytest.approx(predictor.predict_stage_s(unseen, REFERENCE))
    one = predictor.with_device_calibration(SLOW, [(runs[0][0], 2 * predictor.predict_stage_s(runs[0][0], SLOW))])
    assert one.devices["slow"].work_scale == one.devices["slow"].fixed_scale == pytest.approx(2.0)
    with pytest.raises(DeviceError, match="1 to 10 measured runs"):
        predictor.with_device_calibration(SLOW, runs + runs[:1])


# --- honest evaluation ------------------------------------------------------------------------------


def test_error_summary_reports_the_fields_figures() -> None:
    summary = error_summary([0.01, 0.04, 0.06, 0.09, 0.3])
    assert summary["within_5pct"] == pytest.approx(0.4) and summary["within_10pct"] == pytest.approx(0.8)
    assert summary["median"] == pytest.approx(0.06) and summary["count"] == 5
    assert summary["p90"] == pytest.approx(np.percentile([0.01, 0.04, 0.06, 0.09, 0.3], 90))
    with pytest.raises(DeviceError):
        error_summary([])


def _models() -> dict[str, list[NodeSample]]:
    return {name: synthetic_samples(seed, 10) for seed, name in enumerate("abcdefghijkl")}


def test_a_held_out_models_own_whole_run_never_enters_its_fit() -> None:
    models = _models()
    latencies = {name: sum(s.time_s for s in group) * 1.1 for name, group in models.items()}
    honest = {r.model: r.predicted_total_s for r in leave_one_model_out(models, REFERENCE, latencies)}
    lied = {r.model: r.predicted_total_s for r in leave_one_model_out(models, REFERENCE, latencies | {"a": 1.0})}
    assert lied["a"] == pytest.approx(honest["a"])  # its own absurd time changes nothing for it
    assert lied["b"] != pytest.approx(honest["b"])  # but it is in every other model's fit
    assert all(abs(honest[n] - latencies[n]) / latencies[n] < 0.02 for n in models)


def test_held_out_device_calibrates_on_ten_other_models_only() -> None:
    models = _models()
    assert calibration_models(list(models), "c") == [n for n in models if n != "c"][:MAX_DEVICE_MEASUREMENTS]
    reference_s = {name: sum(s.time_s for s in group) for name, group in models.items()}
    device_s = {name: 2.5 * seconds for name, seconds in reference_s.items()}
    # A device 2.5x as slow at everything: as many threads as the reference, so that the same kernels split.
    slow = replace(SLOW, threads=REFERENCE.threads)
    results = held_out_device(models, REFERENCE, reference_s, slow, device_s)
    for name, result in results.items():
        assert result.measured_s == device_s[name]
        assert result.few_shot_s == pytest.approx(result.measured_s, rel=0.02)
        assert result.profiled_s == pytest.approx(result.measured_s, rel=0.02)
    # The held-out model's time on the device is never used: changing it changes none of its predictions.
    again = held_out_device(models, REFERENCE, reference_s, slow, device_s | {"a": 99.0})
    assert (again["a"].few_shot_s, again["a"].profiled_s, again["a"].figures_only_s) == pytest.approx(
        (results["a"].few_shot_s, results["a"].profiled_s, results["a"].figures_only_s))
    # The profiled setting is anchored on the model's reference run: twice that run, twice the prediction.
    anchored = held_out_device(models, REFERENCE, reference_s | {"a": 2 * reference_s["a"]}, slow, device_s)
    assert anchored["a"].profiled_s == pytest.approx(2 * results["a"].profiled_s)


def test_json_round_trip_keeps_the_calibrations(tmp_path: Path) -> None:
    predictor = LatencyPredictor.fit(depthwise_and_dense(0), REFERENCE)
    stages = stages_of(depthwise_and_dense(1), 6)
    predictor = predictor.with_stage_calibration([(nodes, 2 * sum(s.time_s for s in nodes)) for nodes in stages])
    predictor = predictor.with_device_calibration(SLOW, [(nodes, 5 * sum(s.time_s for s in nodes)) for nodes in stages[:4]])
    path = tmp_path / "predictor.json"
    predictor.save(path)
    loaded = LatencyPredictor.load(path)
    assert loaded.stage == predictor.stage and loaded.devices == predictor.devices
    assert loaded.op_types == predictor.op_types
    data = json.loads(path.read_text())
    data["devices"]["slow"]["work_scale"] = -1.0
    path.write_text(json.dumps(data))
    with pytest.raises(DeviceError, match="non-negative"):
        LatencyPredictor.load(path)


# --- fitted on whole runs, and the ratio calibration of a device ----------------------------------------

TRACE_INFLATION_S = 2e-6  # what onnxruntime's trace adds to every kernel (about 2 µs per node here)


def inflated_runs(seed: int, count: int) -> tuple[list[list[NodeSample]], list[float]]:
    """Stages whose nodes carry trace times (true time + a fixed inflation per node) and whose runs
    take the true time: the sum of nodes, plus a per-run cost of 10 µs."""
    samples = synthetic_samples(seed, 5 * count)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(samples))
    cuts = np.sort(rng.choice(np.arange(1, len(samples)), count - 1, replace=False))
    stages, runs_s = [], []
    for chunk in np.split(order, cuts):  # runs of 1 to dozens of nodes: per-node and per-run costs apart
        nodes = [samples[i] for i in chunk]
        runs_s.append(sum(s.time_s for s in nodes) + 10e-6)
        stages.append([NodeSample(s.op_type, s.flops, s.bytes_moved, s.param_bytes, s.time_s + TRACE_INFLATION_S)
                       for s in nodes])
    return stages, runs_s


def test_the_run_fit_learns_what_a_run_costs_where_the_trace_inflates_every_node() -> None:
    stages, runs_s = inflated_runs(0, 24)
    trace_fit = LatencyPredictor.fit([s for nodes in stages for s in nodes], REFERENCE)
    by_stage = trace_fit.with_stage_calibration(list(zip(stages, runs_s, strict=True)))
    by_runs = trace_fit.with_run_fit(list(zip(stages, runs_s, strict=True)))
    unseen, unseen_s = inflated_runs(1, 8)
    errors = {name: [abs(p.predict_stage_s(nodes, REFERENCE) - s) / s for nodes, s in zip(unseen, unseen_s, strict=True)]
              for name, p in (("stage", by_stage), ("runs", by_runs))}
    assert max(errors["runs"]) < 0.03
    assert max(errors["runs"]) < max(errors["stage"])
    # The per-run cost is the run fit's stage calibration; it and the refitted coefficients round-trip.
    assert by_runs.stage.work_scale == by_runs.stage.fixed_scale == 1.0
    assert by_runs.stage.per_run_s == pytest.approx(10e-6, rel=0.3)
    assert LatencyPredictor.from_dict(json.loads(json.dumps(by_runs.to_dict()))).op_types == by_runs.op_types


def test_the_single_kernel_runs_together_weigh_as_much_as_one_model_s_stages() -> None:
    # Three models of 8 stages, and 72 single-kernel runs of the same nodes that run 1.5x slower (as a
    # kernel alone may): with every run weighing 1 the kernels outvote the models' own stages.
    stages, runs_s = inflated_runs(0, 24)
    kernels = [(nodes, 1.5 * seconds) for nodes, seconds in zip(stages, runs_s, strict=True)] * 3
    weights = run_weights(len(stages), len(kernels), 3)
    assert weights[:24] == [1.0] * 24 and sum(weights[24:]) == pytest.approx(8.0)
    assert run_weights(24, 0, 3) == [1.0] * 24
    trace_fit = LatencyPredictor.fit([s for nodes in stages for s in nodes], REFERENCE)
    runs = list(zip(stages, runs_s, strict=True)) + kernels
    balanced, equal = trace_fit.with_run_fit(runs, weights=weights), trace_fit.with_run_fit(runs)
    assert trace_fit.with_run_fit(runs, weights=[1.0] * len(runs)).op_types == equal.op_types

    def median_error(predictor: LatencyPredictor) -> float:
        return float(np.median([abs(predictor.predict_stage_s(nodes, REFERENCE) - s) / s
                                for nodes, s in zip(stages, runs_s, strict=True)]))

    assert median_error(balanced) < 0.1 < median_error(equal)


def test_a_run_s_weight_counts_as_often_as_the_run_is_repeated() -> None:
    stages, runs_s = inflated_runs(2, 12)
    runs = list(zip(stages, [s * (1.3 if i % 2 else 1.0) for i, s in enumerate(runs_s)], strict=True))
    trace_fit = LatencyPredictor.fit([s for nodes in stages for s in nodes], REFERENCE)
    doubled = trace_fit.with_run_fit(runs + runs[:3])
    weighted = trace_fit.with_run_fit(runs, weights=[2.0] * 3 + [1.0] * (len(runs) - 3))
    for name, coefficients in doubled.op_types.items():
        np.testing.assert_allclose(weighted.op_types[name].as_vector(), coefficients.as_vector(), rtol=1e-6, atol=1e-12)
    assert weighted.stage.per_run_s == pytest.approx(doubled.stage.per_run_s, rel=1e-6)
    for bad in ([1.0], [-1.0] * len(runs), [0.0] * len(runs)):
        with pytest.raises(DeviceError, match="run weights must be"):
            trace_fit.with_run_fit(runs, weights=bad)
    assert run_weights(0, 5, 3) == [1.0] * 5


def test_a_ratio_calibration_cancels_the_reference_prediction_s_own_error() -> None:
    # Every run takes 3x its work and 1x its fixed cost on SLOW, relative to what REFERENCE really ran;
    # the predictor misprices the reference by a different factor per run (what a held-out model suffers).
    predictor = LatencyPredictor.fit(synthetic_samples(0), REFERENCE, shrinkage=0.0)
    stages = small_stages(5, MAX_DEVICE_MEASUREMENTS + 1)
    rng = np.random.default_rng(5)
    reference_s, device_s = [], []
    for nodes in stages:
        parts, miss = predictor.stage_parts(nodes, REFERENCE), rng.uniform(0.6, 1.6)
        reference_s.append(miss * (parts.work_s + parts.fixed_s))
        device_s.append(miss * (3.0 * parts.work_s + 1.0 * parts.fixed_s))
    slow = DeviceProfile("slow", REFERENCE.peak_flops, REFERENCE.memory_bandwidth_bytes_per_s, 2**30, REFERENCE.threads)
    shots = list(zip(stages[:-1], device_s[:-1], strict=True))
    ratio = predictor.with_device_calibration(slow, shots, reference_s[:-1])
    plain = predictor.with_device_calibration(slow, shots)
    target, target_ref_s, target_s = stages[-1], reference_s[-1], device_s[-1]

    def profiled_error(calibrated: LatencyPredictor) -> float:
        predicted = target_ref_s * calibrated.predict_stage_s(target, slow) / predictor.predict_stage_s(target, REFERENCE)
        return abs(predicted - target_s) / target_s

    assert profiled_error(ratio) < 0.02
    assert profiled_error(ratio) < profiled_error(plain)
    with pytest.raises(DeviceError, match="one positive reference time per measured run"):
        predictor.with_device_calibration(slow, shots, reference_s[:2])


def test_a_device_calibration_learns_the_device_s_own_cost_per_kernel_dispatched(tmp_path: Path) -> None:
    # Two threads under a one-CPU quota: every kernel dispatched costs a wake-up the reference never paid,
    # whatever the predictor's own fixed costs say; runs of many small nodes suffer most.
    predictor = LatencyPredictor.fit(synthetic_samples(0), REFERENCE, shrinkage=0.0)
    # Runs of Conv nodes (4 µs fixed each) and runs of Relu nodes (2 µs), so that a per-node cost is not
    # the predictor's fixed cost under another name.
    rng = np.random.default_rng(7)
    stages = [[NodeSample(("Conv", "Relu")[i % 2], int(10 ** rng.uniform(2, 5)), int(10 ** rng.uniform(2, 4)), 0, 0.0)
               for _ in range(int(rng.integers(1, 40)))] for i in range(MAX_DEVICE_MEASUREMENTS + 1)]
    device_s = [1.2 * predictor.predict_stage_s(nodes, SLOW) + 3e-6 * len(nodes) for nodes in stages]
    calibrated = predictor.with_device_calibration(SLOW, list(zip(stages[:-1], device_s[:-1], strict=True)))
    assert calibrated.devices["slow"].per_node_s == pytest.approx(3e-6, rel=0.05)
    assert calibrated.predict_stage_s(stages[-1], SLOW) == pytest.approx(device_s[-1], rel=0.02)
    path = tmp_path / "predictor.json"
    calibrated.save(path)
    assert LatencyPredictor.load(path).devices == calibrated.devices


def test_cold_share_is_zero_while_a_runs_weights_fit_in_cache_and_grows_beyond() -> None:
    small = [NodeSample("Conv", 10**6, 10**5 + 10**5, 10**5, 0.0)] * 3
    big = [NodeSample("Conv", 10**6, 10**7 + 10**5, 10**7, 0.0)] * 3
    assert cold_share(small) == 0.0 and cold_share([]) == 0.0
    assert cold_share(big) == pytest.approx(1 - CACHE_BYTES / 3e7)
    assert {s.cold_share for s in in_run(big)} == {cold_share(big)}


def test_the_run_fit_learns_one_cold_weights_factor_for_every_class() -> None:
    """Runs priced with an extra factor on weights that do not fit in cache: single kernels (hot) tell
    the classes' own costs, many-node runs of dense Convs the factor; a held-out run of pointwise Convs
    (seen only hot, alone) is then priced with it."""
    truth = {"Conv/dense": TRUE["Conv"], "Conv/pointwise": replace(TRUE["Conv"], compute=4.0)}
    cold_factor = 3.0
    rng = np.random.default_rng(0)

    def node(kernel: str) -> NodeSample:
        params = int(10 ** rng.uniform(5, 6.5))
        return NodeSample("Conv", int(10 ** rng.uniform(5, 7)), params + int(10 ** rng.uniform(4, 5)), params, 0.0, kernel)

    def run_s(nodes: list[NodeSample]) -> float:
        return sum(float(roofline_features(n.flops, n.bytes_moved, n.param_bytes, REFERENCE, REFERENCE, cold=n.cold_share,
                                           kernel=n.kernel_class)
                         @ replace(truth[n.kernel], cold_params=cold_factor).as_vector()) for n in in_run(nodes)) + 5e-6

    kernels = [[node(kernel)] for kernel in truth for _ in range(20)]
    models = [[node("Conv/dense") for _ in range(12)] for _ in range(6)]
    runs = [(nodes, run_s(nodes)) for nodes in kernels + models]
    trace = LatencyPredictor.fit([replace(n, time_s=s / len(nodes)) for nodes, s in runs for n in nodes], REFERENCE)
    fitted = trace.with_run_fit(runs)
    assert fitted.op_types["Conv/pointwise"].cold_params == pytest.approx(cold_factor, rel=0.05)
    held_out = [node("Conv/pointwise") for _ in range(12)]
    assert cold_share(held_out) > 0.5
    assert fitted.predict_stage_s(held_out, REFERENCE) == pytest.approx(run_s(held_out), rel=0.05)
    without = replace(fitted, op_types={k: replace(c, cold_params=0.0) for k, c in fitted.op_types.items()})
    assert abs(without.predict_stage_s(held_out, REFERENCE) / run_s(held_out) - 1) > 0.2


def test_weight_reuse_is_a_gemms_output_pixels_or_rows() -> None:
    # A pointwise Conv of 160 -> 960 channels on a 2x2 plane: each weight in 4 multiply-adds.
    weights = 160 * 960
    assert weight_reuse(2 * weights * 4, 4 * weights) == pytest.approx(4.0)
    assert weight_reuse(2 * weights * 49, 4 * weights) == pytest.approx(49.0)
    assert weight_reuse(10**6, 0) == 1.0 and weight_reuse(1, 4 * weights) == 1.0  # no weights; at least once


def test_the_run_fit_learns_how_streamed_weights_cost_more_at_low_reuse() -> None:
    """Runs whose cold weights cost more the fewer pixels share them (a GEMM cannot hide the stream
    behind arithmetic): models of high- and of low-reuse dense Convs pin both cold factors; a held-out
    run of low-reuse pointwise Convs is then priced within 5 %, and without the reuse term it is not."""
    truth = {"Conv/dense": TRUE["Conv"], "Conv/pointwise": replace(TRUE["Conv"], compute=4.0)}
    factors = {"cold_params": 0.5, "cold_reuse": 8.0}
    rng = np.random.default_rng(1)

    def node(kernel: str, reuse: float) -> NodeSample:
        params = int(10 ** rng.uniform(5.5, 6.5))
        return NodeSample("Conv", int(params / 2 * reuse), params + int(10 ** rng.uniform(4, 5)), params, 0.0, kernel)

    def run_s(nodes: list[NodeSample]) -> float:
        return sum(float(roofline_features(n.flops, n.bytes_moved, n.param_bytes, REFERENCE, REFERENCE, cold=n.cold_share,
                                           kernel=n.kernel_class)
                         @ replace(truth[n.kernel], **factors).as_vector()) for n in in_run(nodes)) + 5e-6

    kernels = [[node(kernel, float(rng.choice([4, 49, 196])))] for kernel in truth for _ in range(20)]
    models = [[node("Conv/dense", reuse) for _ in range(12)] for reuse in (4, 9, 49, 196) for _ in range(2)]
    runs = [(nodes, run_s(nodes)) for nodes in kernels + models]
    trace = LatencyPredictor.fit([replace(n, time_s=s / len(nodes)) for nodes, s in runs for n in nodes], REFERENCE)
    fitted = trace.with_run_fit(runs)
    coefficients = fitted.op_types["Conv/pointwise"]
    assert coefficients.cold_reuse == pytest.approx(factors["cold_reuse"], rel=0.05)
    # The plain factor trades with each class's own weight term (both price param_bytes): looser.
    assert coefficients.cold_params == pytest.approx(factors["cold_params"], rel=0.2)
    held_out = [node("Conv/pointwise", 4) for _ in range(12)]
    assert fitted.predict_stage_s(held_out, REFERENCE) == pytest.approx(run_s(held_out), rel=0.05)
    without = replace(fitted, op_types={k: replace(c, cold_reuse=0.0) for k, c in fitted.op_types.items()})
    assert abs(without.predict_stage_s(held_out, REFERENCE) / run_s(held_out) - 1) > 0.2
    path_dict = LatencyPredictor.from_dict(fitted.to_dict())
    assert path_dict.op_types["Conv/pointwise"].cold_reuse == coefficients.cold_reuse


def test_onnxruntime_s_own_rules_tell_which_kernels_run_on_more_than_one_thread() -> None:
    from devices.predictor.kernels import parallel_threads

    # MLAS: a GEMM splits past 64 Ki multiply-adds per thread, over at most 16 threads; a depthwise
    # Conv over its channels; a fused layer by its first member's rule.
    assert parallel_threads("Conv/dense", 2 * 60_000, 2) == 1
    assert parallel_threads("Conv/dense", 2 * 70_000, 2) == 2
    assert parallel_threads("Conv+BatchNormalization+Relu", 2 * 60_000, 2) == 1
    assert parallel_threads("MatMul/weights", 2 * 10**9, 8) == 8
    assert parallel_threads("Conv/dense", 2 * 10**9, 80) == 16
    assert parallel_threads("Conv/depthwise", 1_000, 4) == 4
    # Eigen's cost model: a Relu of 2.375 cycles an output element needs 210,000 cycles for a second
    # thread, then runs in blocks of at least 40,000 cycles over every thread.
    assert parallel_threads("Relu", 88_000, 2) == 1
    assert parallel_threads("Relu", 89_000, 2) == 2
    assert parallel_threads("Add", 89_000, 2) == 2  # per output element, whatever its inputs
    assert parallel_threads("Relu", 100_000, 8) == 5
    assert parallel_threads("Relu", 10**6, 80) == 59
    assert parallel_threads("LeakyRelu", 10_000, 2) == 2  # 25 compute cycles an element
    # Unknown rules and one thread change nothing.
    assert parallel_threads("Transpose", 0, 2) == 2
    assert parallel_threads("Conv/dense", 10**9, 1) == 1


def test_a_kernel_too_small_to_split_does_its_work_at_one_thread_s_rate() -> None:
    two = DeviceProfile("two", REFERENCE.peak_flops, REFERENCE.memory_bandwidth_bytes_per_s, 2**30, 2)
    small, big = 1_000, 1_000_000  # Relu elements: below and above Eigen's threshold on 2 threads
    per_element = [roofline_features(n, 8 * n, 0, two, two, kernel="Relu")[:2] / n for n in (small, big)]
    np.testing.assert_allclose(per_element[0], 2 * per_element[1])
    # Without a kernel class (and at one thread) the features are the plain roofline's.
    one = replace(two, threads=1)
    np.testing.assert_allclose(roofline_features(small, 8 * small, 0, one, one, kernel="Relu"),
                               roofline_features(small, 8 * small, 0, one, one))
    np.testing.assert_allclose(roofline_features(small, 8 * small, 0, two, two)[:2] / small, per_element[1])
