"""Thread scaling: which kernels onnxruntime splits over its intra-op threads, and a few-shot Amdahl
calibration of a device with another thread count or a slower core.

Why: measured here, a model's 1-thread / 2-thread time ranges from 0.68 (BERT, ViT: their tiny kernels
each pay a wake-up of the parked second thread, thread spinning being off) to 1.58 (ResNet-18: its big
Convs are split over both threads). One scale of the work and one of the fixed costs (a
`DeviceCalibration`) cannot move both from the reference's thread count to one thread: which part of a
run is split is a property of its kernels (class and shape), not of the device.

So the reference host is fitted twice, the same way (`devices.predictor.fit_on_runs`): at 1 thread and
at its T_ref threads. Per node, per kernel class and shape, the difference of the two fits is what
splitting does: its work shrinks (dW = work_T - work_1 <= 0 where onnxruntime splits the kernel) and its
fixed cost grows (dF = fixed_T - fixed_1: waking and joining the workers). A run's features are
[P_1, dW, dF] (sums over its nodes, the per-run costs in P_1 and dF); on a device with T threads whose
one thread runs s times as long as the reference's, Amdahl's law (a split kernel's work over T threads)
gives

    t = s * P_1 + s * (1 - 1/T) / (1 - 1/T_ref) * dW + s * [T > 1] * dF

A few-shot calibration fits the three factors (x, y, z) of t = x * P_1 + y * dW + z * dF on at most
MAX_DEVICE_MEASUREMENTS runs there, pulled weakly towards that Amdahl prior: y / x is the device's
effective parallelism (a CPU quota below its thread count makes the split work no faster), z / x its cost
of splitting a kernel.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from devices.errors import DeviceError
from devices.predictor.model import _TIME_FLOOR_S, MAX_DEVICE_MEASUREMENTS, LatencyPredictor, NodeSample, relative_nnls
from devices.profiles import DeviceProfile

AMDAHL_PULL = 1e-3  # pull of a calibration towards its Amdahl prior (relative units: each run weighs 1)


@dataclass(frozen=True)
class ThreadFeatures:
    """A run's prediction on the reference at 1 thread and what its T_ref threads change (seconds)."""

    single_s: float  # P_1: every node and the per-run cost, at 1 thread
    split_work_s: float  # dW: the change of its work (negative where kernels are split over the threads)
    split_fixed_s: float  # dF: the change of its fixed costs (waking and joining the threads)

    def as_vector(self) -> np.ndarray:
        return np.array([self.single_s, self.split_work_s, self.split_fixed_s])


@dataclass(frozen=True)
class AmdahlCalibration:
    """A device's factors of [P_1, dW, dF] (`ThreadFeatures`)."""

    single: float
    split_work: float
    split_fixed: float
    measurements: int = 0  # runs it was fitted on (0: the Amdahl prior from the figures alone)

    def as_vector(self) -> np.ndarray:
        return np.array([self.single, self.split_work, self.split_fixed])

    def predict_s(self, features: ThreadFeatures) -> float:
        return max(float(self.as_vector() @ features.as_vector()), 0.0)


def _parts_s(predictor: LatencyPredictor, nodes: Sequence[NodeSample]) -> tuple[float, float]:
    parts = predictor.stage_parts(nodes, predictor.reference)
    return parts.work_s, parts.fixed_s


@dataclass(frozen=True)
class ThreadScaling:
    """The reference host fitted at 1 thread (`single`) and at its own thread count (`parallel`)."""

    single: LatencyPredictor
    parallel: LatencyPredictor

    def __post_init__(self) -> None:
        if self.single.reference.threads != 1 or self.parallel.reference.threads < 2:
            raise DeviceError("thread scaling needs a fit at 1 thread and one at 2 or more threads.")

    def features(self, nodes: Iterable[NodeSample]) -> ThreadFeatures:
        """[P_1, dW, dF] of one run of `nodes` on the reference (per-run costs in P_1 and dF)."""
        nodes = list(nodes)
        work_1, fixed_1 = _parts_s(self.single, nodes)
        work_t, fixed_t = _parts_s(self.parallel, nodes)
        return ThreadFeatures(work_1 + fixed_1, work_t - work_1, fixed_t - fixed_1)

    def prior(self, device: DeviceProfile) -> AmdahlCalibration:
        """Amdahl's law from `device`'s figures: its one thread's speed relative to the reference's one
        thread (peak FLOP/s per thread), its split work over its threads, the cost of splitting paid
        whenever it has more than one."""
        one = self.single.reference
        speed = (one.peak_flops / one.threads) / (device.peak_flops / device.threads)
        threads = self.parallel.reference.threads
        return AmdahlCalibration(speed, speed * (1 - 1 / device.threads) / (1 - 1 / threads),
                                 speed * float(device.threads > 1))

    def calibrate(self, device: DeviceProfile, runs: Sequence[tuple[Sequence[NodeSample], float]],
                  anchors_s: Sequence[float] | None = None) -> AmdahlCalibration:
        """The factors fitted on at most MAX_DEVICE_MEASUREMENTS runs on `device` (nodes, seconds there),
        non-negative, weakly pulled towards `prior(device)` (scaled to the runs' median ratio).

        `anchors_s`: the same runs' measured seconds on the reference (at its thread count); then each
        run's features are scaled by measured / predicted reference time, so that the reference
        prediction's own error cancels (HELP's few-shot setting, a model profiled on the reference)."""
        if not 1 <= len(runs) <= MAX_DEVICE_MEASUREMENTS:
            raise DeviceError(f"a device calibration takes 1 to {MAX_DEVICE_MEASUREMENTS} measured runs, "
                              f"got {len(runs)}.")
        if anchors_s is not None and (len(anchors_s) != len(runs) or not all(a > 0 for a in anchors_s)):
            raise DeviceError("a ratio calibration needs one positive reference time per measured run.")
        targets = np.array([seconds for _, seconds in runs])
        if not np.all(targets > 0):
            raise DeviceError("a device calibration needs measured runs with positive times.")
        rows = np.array([self.features(nodes).as_vector() for nodes, _ in runs])
        if anchors_s is not None:
            rows *= (np.array(anchors_s) / np.maximum(rows.sum(axis=1), _TIME_FLOOR_S))[:, None]
        prior = self.prior(device).as_vector()
        # The figures rarely know a device's speed within 2x (a CPU quota is invisible to a FLOP count):
        # the prior's shape is Amdahl's, its scale the runs' own.
        prior *= float(np.median(targets / np.maximum(rows @ prior, _TIME_FLOOR_S)))
        solution = relative_nnls(rows, targets, prior, AMDAHL_PULL)
        return AmdahlCalibration(*(float(x) for x in solution), measurements=len(runs))
