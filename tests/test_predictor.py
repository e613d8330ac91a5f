"""The latency predictor: recovers known coefficients, transfers across devices, never crashes on an
unknown op type, round-trips through JSON, and the shipped file is valid."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.errors import DeviceError
from devices.predictor import (
    DEFAULT_OVERHEAD_S,
    LatencyPredictor,
    NodeSample,
    OpCoefficients,
    leave_one_model_out,
    predict_node_time_s,
    roofline_time_s,
    shipped_predictor,
)
from devices.profiles import DeviceProfile
from devices.lookup import load_device

REFERENCE = DeviceProfile("ref", peak_flops=1e11, memory_bandwidth_bytes_per_s=1e10, memory_bytes=2**30, threads=2)
TRUE = {
    "Conv": OpCoefficients(compute=2.0, activations=1.5, params=0.5, overhead_s=4e-6, samples=0),
    "Relu": OpCoefficients(compute=0.0, activations=3.0, params=0.0, overhead_s=2e-6, samples=0),
}


def synthetic_samples(seed: int, per_op: int = 40) -> list[NodeSample]:
    """Nodes whose times follow TRUE exactly on REFERENCE, with features over three decades."""
    rng = np.random.default_rng(seed)
    samples = []
    for op_type, truth in TRUE.items():
        for _ in range(per_op):
            flops = int(10 ** rng.uniform(4, 8))
            param_bytes = int(10 ** rng.uniform(2, 6)) if op_type == "Conv" else 0
            bytes_moved = int(10 ** rng.uniform(3, 7)) + param_bytes
            time_s = (truth.compute * flops / REFERENCE.peak_flops
                      + truth.activations * (bytes_moved - param_bytes) / REFERENCE.memory_bandwidth_bytes_per_s
                      + truth.params * param_bytes / REFERENCE.memory_bandwidth_bytes_per_s
                      + truth.overhead_s)
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
    features = np.array([1e6 / 1e11, 1e5 / 1e10, 0.0, 1.0])
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
