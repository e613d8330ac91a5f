"""Thread scaling (`devices.predictor.threads`): which kernels are split over threads, learned from the
reference fitted at 1 and at 2 threads, and an Amdahl calibration of a device with other thread counts."""

from __future__ import annotations

import numpy as np
import pytest

from devices.errors import DeviceError
from devices.predictor import (
    MAX_DEVICE_MEASUREMENTS,
    FitInputs,
    LatencyPredictor,
    NodeSample,
    ThreadScaling,
    held_out_device,
    held_out_fits,
)
from devices.profiles import DeviceProfile

ONE = DeviceProfile("ref", peak_flops=5e10, memory_bandwidth_bytes_per_s=1e10, memory_bytes=2**30, threads=1)
TWO = DeviceProfile("ref", peak_flops=1e11, memory_bandwidth_bytes_per_s=1e10, memory_bytes=2**30, threads=2)
WAKE_S = 5e-6  # what splitting a kernel over the threads costs (waking the parked workers)


def true_time_s(node: NodeSample, threads: int, slowdown: float = 1.0) -> float:
    """The world of the test: a Conv's FLOPs are split over the threads (paying a wake-up), a Relu never
    is; `slowdown`: how much longer one thread of the device takes than one of the reference."""
    if node.op_type == "Conv":
        seconds = 2 * node.flops / ONE.peak_flops / threads + 4e-6 + WAKE_S * (threads > 1)
    else:
        seconds = 3 * node.bytes_moved / ONE.memory_bandwidth_bytes_per_s + 2e-6
    return slowdown * seconds


def nodes(rng: np.random.Generator, op_type: str, count: int) -> list[NodeSample]:
    """Convs big enough for MLAS to split (over 64 Ki multiply-adds a thread), Relus too small for Eigen's
    cost model to (`devices.predictor.kernels.parallel_threads`): the world `true_time_s` describes."""
    flops, moved = ((5.2, 8), (3, 7)) if op_type == "Conv" else ((3, 4.9), (3, 7))
    return [NodeSample(op_type, int(10 ** rng.uniform(*flops)), int(10 ** rng.uniform(*moved)), 0, 0.0)
            for _ in range(count)]


def timed(samples: list[NodeSample], threads: int) -> list[NodeSample]:
    return [NodeSample(s.op_type, s.flops, s.bytes_moved, 0, true_time_s(s, threads)) for s in samples]


def scaling() -> ThreadScaling:
    rng = np.random.default_rng(0)
    samples = nodes(rng, "Conv", 40) + nodes(rng, "Relu", 40)
    return ThreadScaling(LatencyPredictor.fit(timed(samples, 1), ONE, shrinkage=0.0),
                         LatencyPredictor.fit(timed(samples, 2), TWO, shrinkage=0.0))


def runs(seed: int, count: int) -> list[list[NodeSample]]:
    """Runs of Convs only, Relus only, and mixed: whose share of split work differs from run to run."""
    rng = np.random.default_rng(seed)
    return [nodes(rng, "Conv", int(rng.integers(1, 20))) * (i % 3 != 1) + nodes(rng, "Relu", int(rng.integers(1, 20))) * (i % 3 != 0)
            for i in range(count)]


def test_amdahl_calibration_moves_a_prediction_to_other_thread_counts_where_two_scales_cannot() -> None:
    # A device of 4 threads, each 3x slower than the reference's: Convs speed up 4x, Relus not at all.
    device = DeviceProfile("board", peak_flops=4 * ONE.peak_flops / 3, memory_bandwidth_bytes_per_s=5e9,
                           memory_bytes=2**30, threads=4)
    model = scaling()
    stages = runs(1, MAX_DEVICE_MEASUREMENTS + 6)
    measured = [sum(true_time_s(n, 4, slowdown=3.0) for n in run) for run in stages]
    shots = list(zip(stages[:MAX_DEVICE_MEASUREMENTS], measured[:MAX_DEVICE_MEASUREMENTS], strict=True))
    calibration = model.calibrate(device, shots)
    previous = model.parallel.with_device_calibration(device, shots)
    new_errors, previous_errors = [], []
    for run, seconds in zip(stages[MAX_DEVICE_MEASUREMENTS:], measured[MAX_DEVICE_MEASUREMENTS:], strict=True):
        new_errors.append(abs(calibration.predict_s(model.features(run)) - seconds) / seconds)
        previous_errors.append(abs(previous.predict_stage_s(run, device) - seconds) / seconds)
    assert max(new_errors) < 0.02
    assert max(previous_errors) > 0.1  # two scales of the 2-thread fit miss this device's split of the work
    # The device's figures alone (one thread 3x slower, 4 threads) give Amdahl's prior, and it is the truth.
    prior = model.prior(device)
    assert (prior.single, prior.split_work, prior.split_fixed) == pytest.approx((3.0, 4.5, 3.0))
    assert prior.predict_s(model.features(stages[0])) == pytest.approx(measured[0], rel=1e-3)


def test_a_one_thread_device_pays_no_splitting_and_gets_no_speed_up() -> None:
    model = scaling()
    stages = runs(2, MAX_DEVICE_MEASUREMENTS)
    slow = DeviceProfile("slow", ONE.peak_flops / 2, 5e9, 2**30, threads=1)
    calibration = model.calibrate(slow, [(run, sum(true_time_s(n, 1, 2.0) for n in run)) for run in stages])
    assert calibration.single == pytest.approx(2.0, rel=1e-2)
    assert calibration.split_work == pytest.approx(0.0, abs=1e-2) and calibration.split_fixed == pytest.approx(0.0, abs=1e-2)
    with pytest.raises(DeviceError, match="1 to 10 measured runs"):
        model.calibrate(slow, [(run, 1.0) for run in runs(3, MAX_DEVICE_MEASUREMENTS + 1)])
    with pytest.raises(DeviceError, match="a fit at 1 thread"):
        ThreadScaling(model.parallel, model.single)


def test_held_out_fits_keep_each_models_runs_out_of_its_own_thread_scaling() -> None:
    rng = np.random.default_rng(4)
    models = {name: nodes(rng, "Conv", 6) + nodes(rng, "Relu", 6) for name in "abcdefghijkl"}
    stages = {t: {name: [(group, sum(true_time_s(n, t) for n in group))] for name, group in models.items()}
              for t in (1, 2)}
    inputs = {t: FitInputs({name: timed(group, t) for name, group in models.items()}, (ONE, TWO)[t - 1], stages[t])
              for t in (1, 2)}
    device = DeviceProfile("board", peak_flops=ONE.peak_flops, memory_bandwidth_bytes_per_s=1e10,
                           memory_bytes=2**30, threads=1)
    reference_s = {name: runs_[0][1] for name, runs_ in stages[2].items()}
    device_s = {name: 1.5 * runs_[0][1] for name, runs_ in stages[1].items()}

    def predictions(single: FitInputs) -> dict[str, float]:
        fits = held_out_fits(inputs[2], single)
        results = held_out_device(inputs[2].samples_by_model, TWO, reference_s, device, device_s, fits=fits)
        return {name: r.few_shot_s for name, r in results.items()}

    honest = predictions(inputs[1])
    assert all(abs(honest[n] - device_s[n]) / device_s[n] < 0.02 for n in models)
    # Model a's 1-thread runs, absurd, change nothing for a, but enter every other model's fit.
    lied = predictions(FitInputs(inputs[1].samples_by_model, ONE, stages[1] | {"a": [(models["a"], 1.0)]}))
    assert lied["a"] == pytest.approx(honest["a"])
    assert lied["b"] != pytest.approx(honest["b"])
