"""Per-kernel-class latency model with roofline features, fitted on measured profiles, so that a device
that is not at hand can be planned for from its DeviceProfile (and, better, a few measurements on it).

For a node of kernel class k (`devices.predictor.kernels`) on device D the model is

    work  = n_D * (a_k * flops / peak_flops(D) + b_k * activation_bytes / bandwidth(D) + p_k * param_bytes / bandwidth(D)
            + q_k * cold_share * param_bytes / bandwidth(D) + z_k * cold_share * param_bytes / bandwidth(D) / reuse)
    fixed = (c_k + g_k * (groups - 1) + r_k * im2col_rows + e_k * im2col_elements) * overhead_scale(D)
    t     = u_D * s_w * work + v_D * s_f * fixed + w_D * overhead_scale(D)    (a node within a run)
    run   = sum(t) + v_D * h * overhead_scale(D)                               (a stage or the whole model)

with n_D = threads(D) / the threads onnxruntime splits the node over on D (`kernels.parallel_threads`:
a kernel too small to split does its work at one thread's share of the device), and
non-negative coefficients: a, b, p, q dimensionless inefficiency factors (q: weights that come from
memory, not cache: `cold_share` is the share of a run's weights that cannot stay in CACHE_BYTES, so a
kernel run alone with its 600 kB of weights hot in cache is not priced as the same kernel inside a model
that streams 45 MB of weights through it every run), c_k seconds of fixed per-kernel
cost on the reference device, g_k seconds per extra group (onnxruntime loops over a grouped Conv's
groups; r_k, e_k seconds per row and per element of a grouped Conv's im2col, the serial copy that is
most of a depthwise Conv's time, `partitioner.graph.kernel_classes.layer_im2col`); overhead_scale(D) =
(peak_flops / threads of the reference) / (peak_flops / threads of D), since fixed cost is serial work. s_w, s_f and h are the *stage calibration*: one session run of many nodes (as
the agents run a stage) is not the sum of the nodes' profiled kernel times, which the trace inflates
(about 2 µs a node here). `with_run_fit` goes further and refits every coefficient on whole runs (prefix
stages of models, `devices.stages`; single-kernel models, `devices.microbench`), the trace's values as the
prior; s_w = s_f = 1 then and h is the fitted per-run cost. u_D, v_D and w_D are the *device calibration*:
the scales of the work and of the fixed costs on a new device and its own cost per kernel dispatched,
fitted on at most a few whole-stage measurements there (HELP's few-shot setting); u = v = 1, w = 0 for a
device never measured, whose figures alone then carry it.

Fitting: one pooled model over every node, then each op type's model shrunk towards the pooled one, then
each kernel class's shrunk towards its op type's (hierarchical: a class seen a few times borrows from its
op type). A fused layer type ("Conv+BatchNormalization+Relu") not fitted as a whole takes its first
member's factors plus every member's fixed cost. A predictor never fitted falls back to the plain
roofline, max(compute, memory time), plus DEFAULT_OVERHEAD_S.

Every fit is weighted by 1/t (relative error): the planner compares placements that differ by whole
layers, small ones included. bench/predictor_error.py measures the error on held-out models and devices.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from devices.errors import DeviceError
from devices.json_files import read_json_file, write_json_file
from devices.predictor.kernels import FUSED_SEPARATOR, lineage, parallel_threads
from devices.profiles import DeviceProfile

PREDICTOR_FORMAT = "edgecloud.predictor/3"  # /3: work at the threads onnxruntime splits a node over
DEFAULT_SHRINKAGE = 0.1
DEFAULT_OVERHEAD_S = 5e-6  # fixed cost per kernel of a predictor that was never fitted
_TIME_FLOOR_S = 1e-6  # onnxruntime's trace has microsecond resolution: no sample weighs more than this
# Units of the unknowns in a fit (fixed costs in microseconds), so that all columns are of order one.
# Per im2col row and element: nanoseconds.
FEATURE_UNITS = np.array([1.0, 1.0, 1.0, _TIME_FLOOR_S, _TIME_FLOOR_S, 1e-9, 1e-9, 1.0, 1.0])
# Which features are work (scaled by a device's throughput) and which fixed cost (serial).
_WORK = np.array([True, True, True, False, False, False, False, True, True])
_SHARED = 2  # the last features (weights from memory, plain and per reuse): one factor for every class
# The cache a run's weights compete for between two runs of the same node: this host's L2 per core
# (2 MiB; a Raspberry Pi 4's shared L2 is 1 MiB). Measured here, 1 thread: a 3x3 Conv with 590 kB of
# weights takes 225 µs run alone and 350 µs inside ResNet-18 (45 MB of weights a run); a pointwise Conv
# with 615 kB, 20 µs alone against 120-190 µs inside MobileNetV2.
CACHE_BYTES = 2 * 1024 * 1024
MAX_DEVICE_MEASUREMENTS = 10  # the few-shot budget of a device calibration
DEFAULT_RUN_FIT_STRENGTH = 0.001  # pull of the run fit towards the profiled coefficients (the trace inflates
# every kernel, so it is a weak prior: on the 14:10 measurements 0.001 / 0.01 / 0.1 held 9 / 8 / 6 of 12
# models within ±10 % at 1 thread and 8 / 7 / 7 at 2, leave-one-model-out; chosen on those, say so)
DEVICE_PULL = 1e-4  # pull of a device calibration towards one common scale


@dataclass(frozen=True)
class NodeSample:
    """One node: its roofline features (from the layer DAG), its kernel class and its measured time
    (ignored where the sample is only predicted)."""

    op_type: str
    flops: int
    bytes_moved: int  # input + output activation bytes + parameter bytes
    param_bytes: int
    time_s: float
    kernel: str = ""  # kernel class ("Conv/depthwise"); empty: the op type
    groups: int = 1  # inner kernel calls: a grouped or depthwise Conv's groups (one loop per channel)
    im2col_rows: int = 0  # a Conv's column-buffer copies (`partitioner.graph.kernel_classes.layer_im2col`)
    im2col_elements: int = 0  # and the elements they copy
    cold_share: float = 0.0  # share of its weights read from memory in its run (`in_run`), not cache

    @property
    def kernel_class(self) -> str:
        return self.kernel or self.op_type

    @property
    def im2col(self) -> tuple[int, int]:
        return self.im2col_rows, self.im2col_elements


@dataclass(frozen=True)
class OpCoefficients:
    """Fitted coefficients of one op type or kernel class (see the module docstring)."""

    compute: float
    activations: float
    params: float
    overhead_s: float
    samples: int
    per_group_s: float = 0.0  # fixed cost of each group after the first (reference seconds)
    per_row_s: float = 0.0  # of each im2col row (reference seconds; serial work)
    per_element_s: float = 0.0  # of each im2col element
    cold_params: float = 0.0  # factor of the weight bytes that come from memory (`cold_share`)
    cold_reuse: float = 0.0  # factor of those bytes divided by their reuse (`weight_reuse`)

    def as_vector(self) -> np.ndarray:
        return np.array([self.compute, self.activations, self.params, self.overhead_s, self.per_group_s,
                         self.per_row_s, self.per_element_s, self.cold_params, self.cold_reuse])


@dataclass(frozen=True)
class StageCalibration:
    """Whole run vs its nodes: t_run = work_scale * sum(work) + fixed_scale * sum(fixed) + per_run_s (the
    per-run term in reference seconds, scaled by overhead_scale on another device)."""

    work_scale: float = 1.0
    fixed_scale: float = 1.0
    per_run_s: float = 0.0
    stages: int = 0  # how many measured runs it was fitted on


@dataclass(frozen=True)
class DeviceCalibration:
    """A new device's scales of the predicted work and fixed costs, from a few measurements there."""

    work_scale: float
    fixed_scale: float
    measurements: int
    per_node_s: float = 0.0  # the device's own cost per kernel dispatched (reference seconds, overhead-scaled)


@dataclass(frozen=True)
class StageParts:
    """A stage's prediction split into the part that scales with the device's throughput and the
    serial fixed costs, before device calibration (what a device calibration is fitted on)."""

    work_s: float
    fixed_s: float
    nodes: int = 0  # kernels dispatched (what a device's per-node cost multiplies)


def _overhead_scale(reference: DeviceProfile, device: DeviceProfile) -> float:
    return (reference.peak_flops / reference.threads) / (device.peak_flops / device.threads)


def cold_share(nodes: Iterable[NodeSample], cache_bytes: int = CACHE_BYTES) -> float:
    """The share of a run's weights that cannot stay in `cache_bytes` between two runs of it: each
    node's weights are evicted by the others' (a cyclic sweep through more than the cache)."""
    weights = sum(node.param_bytes for node in nodes)
    return max(0.0, 1.0 - cache_bytes / weights) if weights > 0 else 0.0


def in_run(nodes: Iterable[NodeSample]) -> list[NodeSample]:
    """The nodes as run together in one session run: each with the run's `cold_share`."""
    nodes = list(nodes)
    share = cold_share(nodes)
    return [replace(node, cold_share=share) for node in nodes]


def weight_reuse(flops: int, param_bytes: int) -> float:
    """How many multiply-adds each weight takes part in per run (at least 1): a Conv's or a MatMul's
    output pixels or rows (flops = 2 * weights * reuse, 4 bytes a weight). Why it matters: a GEMM
    streams its weights once, so the time the stream is not hidden behind arithmetic grows as the reuse
    falls. Measured here, 1 thread: MobileNetV2's last pointwise Convs (0.6-1.6 MB of weights on 2x2
    planes, reuse 4) take 3-6 GB/s of weights inside the model, ResNet-18's 3x3 Convs (reuse 49-784)
    cost little more than their FLOPs."""
    return max(2.0 * flops / param_bytes, 1.0) if param_bytes > 0 else 1.0


def roofline_features(flops: int, bytes_moved: int, param_bytes: int, device: DeviceProfile,
                      reference: DeviceProfile, groups: int = 1, im2col: tuple[int, int] = (0, 0),
                      cold: float = 0.0, kernel: str = "") -> np.ndarray:
    """[compute time, activation time, parameter time, fixed-cost scale, that scale per extra group, per
    im2col row, per im2col element, time of the weights read from memory (share `cold`), that time over
    the weights' reuse (`weight_reuse`)] of a node on
    `device`. The per-group term is why a depthwise Conv is
    dear: onnxruntime loops over its channels, a fixed cost each; the im2col terms are that loop's body,
    one thread's copy (a depthwise Conv's one-row GEMM costs less than building its columns), so they
    scale like the fixed costs, with one thread's speed. The work terms are at the share of `device`'s
    threads that onnxruntime splits a node of class `kernel` over (`parallel_threads`; all of them for
    a class without a known rule, or no `kernel`)."""
    activation_bytes = max(bytes_moved - param_bytes, 0)
    unsplit = device.threads / parallel_threads(kernel, flops, device.threads) if kernel else 1.0
    bandwidth = device.memory_bandwidth_bytes_per_s / unsplit
    scale = _overhead_scale(reference, device)
    return np.array([flops * unsplit / device.peak_flops, activation_bytes / bandwidth, param_bytes / bandwidth,
                     scale, max(groups - 1, 0) * scale, im2col[0] * scale, im2col[1] * scale,
                     cold * param_bytes / bandwidth, cold * param_bytes / bandwidth / weight_reuse(flops, param_bytes)])


def roofline_time_s(flops: int, bytes_moved: int, device: DeviceProfile) -> float:
    """The plain roofline bound: whichever of compute and memory traffic takes longer."""
    return max(flops / device.peak_flops, bytes_moved / device.memory_bandwidth_bytes_per_s)


def relative_nnls(rows: np.ndarray, targets: np.ndarray, prior: np.ndarray | None = None,
                  penalty: float | np.ndarray = 0.0, row_weights: np.ndarray | None = None) -> np.ndarray:
    """Non-negative x minimising sum w_j ((rows x - t) / t)^2 + sum penalty_i (x_i - prior_i)^2 (t floored;
    `penalty` one weight for all unknowns or one per unknown; w the `row_weights`, 1 when omitted)."""
    from scipy.optimize import nnls

    weights = 1.0 / np.maximum(targets, _TIME_FLOOR_S)
    if row_weights is not None:
        weights = weights * np.sqrt(np.asarray(row_weights, dtype=float))
    a, b = rows * weights[:, None], targets * weights
    roots = np.sqrt(np.broadcast_to(np.asarray(penalty, dtype=float), (rows.shape[1],)))
    if prior is not None and np.any(roots > 0):
        a = np.vstack([a, np.diag(roots)])
        b = np.concatenate([b, roots * prior])
    solution, _ = nnls(a, b)
    return solution


def _run_weights(weights: Sequence[float] | None, runs: int) -> np.ndarray | None:
    """`weights` checked: one non-negative finite number per run, not all zero (None: every run 1)."""
    if weights is None:
        return None
    array = np.asarray(weights, dtype=float)
    if array.shape != (runs,) or not np.all(np.isfinite(array)) or np.any(array < 0) or not array.sum() > 0:
        raise DeviceError(f"run weights must be {runs} non-negative numbers, not all zero.")
    return array


def _fit_group(group: list[NodeSample], reference: DeviceProfile, prior: OpCoefficients | None,
               shrinkage: float) -> OpCoefficients:
    """Relative-error NNLS plus `shrinkage` * squared distance to `prior` (the factors as they are, the
    fixed cost in microseconds).

    Why shrink: a class seen only in one regime (Concat of a few int64 shape values) tells nothing
    about another (Concat of image tensors); without the prior its factors explode when extrapolated.
    """
    features = np.array([roofline_features(s.flops, s.bytes_moved, s.param_bytes, reference, reference, s.groups,
                                           s.im2col, s.cold_share, s.kernel_class) for s in group])
    times = np.array([s.time_s for s in group])
    solution = relative_nnls(features * FEATURE_UNITS, times,
                             None if prior is None else prior.as_vector() / FEATURE_UNITS, shrinkage)
    return _from_vector(solution * FEATURE_UNITS, len(group))


def _from_vector(vector: np.ndarray, samples: int) -> OpCoefficients:
    """Coefficients from the order of `OpCoefficients.as_vector`."""
    a, b, p, c, g, r, e, q, z = (float(x) for x in vector)
    return OpCoefficients(a, b, p, c, samples, g, r, e, q, z)


def _scaled(coefficients: OpCoefficients, stage: StageCalibration) -> OpCoefficients:
    """Coefficients with a stage calibration's scales folded in (work factors and fixed cost)."""
    scales = np.where(_WORK, stage.work_scale, stage.fixed_scale)
    return _from_vector(coefficients.as_vector() * scales, coefficients.samples)


def _coefficients_from_dict(data: dict[str, Any]) -> OpCoefficients:
    return OpCoefficients(compute=float(data["compute"]), activations=float(data["activations"]),
                          params=float(data["params"]), overhead_s=float(data["overhead_s"]),
                          samples=int(data["samples"]), per_group_s=float(data.get("per_group_s", 0.0)),
                          per_row_s=float(data.get("per_row_s", 0.0)), per_element_s=float(data.get("per_element_s", 0.0)),
                          cold_params=float(data.get("cold_params", 0.0)), cold_reuse=float(data.get("cold_reuse", 0.0)))


def _groups(samples: Iterable[NodeSample], key: Any) -> dict[str, list[NodeSample]]:
    groups: dict[str, list[NodeSample]] = {}
    for sample in samples:
        groups.setdefault(key(sample), []).append(sample)
    return dict(sorted(groups.items()))


def _finite_non_negative(values: Iterable[float]) -> bool:
    return all(value >= 0 and math.isfinite(value) for value in values)


@dataclass
class LatencyPredictor:
    """Coefficients per op type and kernel class, the pooled coefficients for what was never seen, the
    stage and device calibrations, and the device the measurements came from (the fixed costs are in its
    seconds)."""

    reference: DeviceProfile
    op_types: dict[str, OpCoefficients] = field(default_factory=dict)  # op types and kernel classes
    pooled: OpCoefficients | None = None
    fitted_on: dict[str, Any] = field(default_factory=dict)
    stage: StageCalibration = field(default_factory=StageCalibration)
    devices: dict[str, DeviceCalibration] = field(default_factory=dict)  # by device name

    @classmethod
    def fit(cls, samples: Iterable[NodeSample], reference: DeviceProfile,
            fitted_on: dict[str, Any] | None = None, shrinkage: float = DEFAULT_SHRINKAGE) -> LatencyPredictor:
        """Fit pooled, then per op type, then per kernel class (each shrunk towards its parent);
        untimed (0 s) samples are ignored."""
        timed = [s for s in samples if s.time_s > 0]
        if not timed:
            raise DeviceError("the predictor needs at least one timed node to fit.")
        pooled = _fit_group(timed, reference, prior=None, shrinkage=0.0)
        coefficients = {op_type: _fit_group(group, reference, pooled, shrinkage)
                        for op_type, group in _groups(timed, lambda s: s.op_type).items()}
        # Parents before their refinements (sorted: "Conv/depthwise" < "Conv/depthwise-strided").
        for kernel, group in _groups(timed, lambda s: s.kernel_class).items():
            if kernel not in coefficients:
                parent = next(name for name in lineage(kernel)[1:] if name in coefficients)
                coefficients[kernel] = _fit_group(group, reference, coefficients[parent], shrinkage)
        return cls(reference, dict(sorted(coefficients.items())), pooled, dict(fitted_on or {}))

    # --- prediction ------------------------------------------------------------------------------

    def _coefficients_of(self, op_type: str, kernel: str = "") -> OpCoefficients | None:
        """The kernel class's fit, else the op type's; for a fused type its first member's factors with
        every member's fixed cost; else the pooled fit; None when nothing was fitted at all."""
        for name in [*(lineage(kernel) if kernel else []), op_type]:
            if name in self.op_types:
                return self.op_types[name]
        members = op_type.split(FUSED_SEPARATOR)
        head = self.op_types.get(kernel or members[0], self.op_types.get(members[0], self.pooled))
        if len(members) == 1 or head is None:
            return head
        overhead_s = sum(self.op_types.get(m, head).overhead_s for m in members[1:])
        return replace(head, overhead_s=head.overhead_s + overhead_s)

    def node_parts(self, op_type: str, flops: int, bytes_moved: int, param_bytes: int, device: DeviceProfile,
                   kernel: str = "", groups: int = 1, im2col: tuple[int, int] = (0, 0),
                   cold: float = 0.0) -> StageParts:
        """A node's (work, fixed) seconds on `device`, stage calibration in, device calibration not."""
        features = roofline_features(flops, bytes_moved, param_bytes, device, self.reference, groups, im2col, cold,
                                     kernel or op_type)
        coefficients = self._coefficients_of(op_type, kernel)
        if coefficients is None:
            return StageParts(roofline_time_s(flops, bytes_moved, device), DEFAULT_OVERHEAD_S * features[3])
        vector = coefficients.as_vector()
        work_s = float(features[_WORK] @ vector[_WORK])
        fixed_s = float(features[~_WORK] @ vector[~_WORK])
        return StageParts(self.stage.work_scale * work_s, self.stage.fixed_scale * fixed_s)

    def _on_device_s(self, parts: StageParts, device: DeviceProfile) -> float:
        """Parts to seconds on `device`: its calibration's scales and per-node cost, if it has one."""
        calibration = self.devices.get(device.name)
        if calibration is None:
            return parts.work_s + parts.fixed_s
        return (calibration.work_scale * parts.work_s + calibration.fixed_scale * parts.fixed_s
                + calibration.per_node_s * parts.nodes * _overhead_scale(self.reference, device))

    def predict(self, op_type: str, flops: int, bytes_moved: int, param_bytes: int,
                device: DeviceProfile, kernel: str = "", groups: int = 1, im2col: tuple[int, int] = (0, 0),
                cold: float = 0.0) -> float:
        """Seconds the node takes on `device` within a run of many nodes (`im2col`: a Conv's rows and
        elements, `partitioner.graph.kernel_classes.layer_im2col`; `cold`: the run's `cold_share`)."""
        parts = self.node_parts(op_type, flops, bytes_moved, param_bytes, device, kernel, groups, im2col, cold)
        return self._on_device_s(replace(parts, nodes=1), device)

    def stage_parts(self, nodes: Iterable[NodeSample], device: DeviceProfile) -> StageParts:
        """(work, fixed) seconds of one run of `nodes` (their times ignored), device calibration not in."""
        work_s = fixed_s = 0.0
        count = 0
        for node in in_run(nodes):
            parts = self.node_parts(node.op_type, node.flops, node.bytes_moved, node.param_bytes, device, node.kernel,
                                    node.groups, node.im2col, node.cold_share)
            work_s += parts.work_s
            fixed_s += parts.fixed_s
            count += 1
        return StageParts(work_s, fixed_s + self.stage.per_run_s * _overhead_scale(self.reference, device), count)

    def predict_stage_s(self, nodes: Iterable[NodeSample], device: DeviceProfile) -> float:
        """Seconds of one session run of `nodes` on `device` (a stage, or the whole model)."""
        return self._on_device_s(self.stage_parts(nodes, device), device)

    # --- calibration -----------------------------------------------------------------------------

    def with_stage_calibration(self, stages: Sequence[tuple[Sequence[NodeSample], float]],
                               weights: Sequence[float] | None = None) -> LatencyPredictor:
        """A copy whose stage calibration is fitted on measured runs (nodes, seconds of a whole run) on
        the reference device: t = s_w * sum(work) + s_f * sum(fixed) + h, the scales weakly pulled towards
        1 so that a few runs alike cannot send one to zero; `weights` as in `with_run_fit`."""
        base = replace(self, stage=StageCalibration(), devices={})
        rows, targets = [], []
        for nodes, seconds in stages:
            parts = base.stage_parts(nodes, self.reference)
            rows.append([parts.work_s, parts.fixed_s, _TIME_FLOOR_S])
            targets.append(seconds)
        if not rows or not all(t > 0 for t in targets):
            raise DeviceError("a stage calibration needs at least one measured run with a positive time.")
        s_w, s_f, h = relative_nnls(np.array(rows), np.array(targets), np.array([1.0, 1.0, 0.0]),
                                    penalty=np.array([1e-4, 1e-4, 0.0]), row_weights=_run_weights(weights, len(rows)))
        return replace(self, stage=StageCalibration(float(s_w), float(s_f), float(h * _TIME_FLOOR_S), len(rows)))

    def _fitted_key(self, op_type: str, kernel: str = "") -> str | None:
        """The name in `op_types` whose coefficients price this node as they are (kernel class, else op
        type); None for what borrows (a fused type, the pooled fit)."""
        return next((name for name in [*(lineage(kernel) if kernel else []), op_type] if name in self.op_types), None)

    def with_run_fit(self, stages: Sequence[tuple[Sequence[NodeSample], float]],
                     strength: float = DEFAULT_RUN_FIT_STRENGTH,
                     weights: Sequence[float] | None = None) -> LatencyPredictor:
        """A copy whose coefficients are fitted on whole runs (nodes, seconds of one run of them on the
        reference: prefix stages, `devices.stages`; single-kernel models, `devices.microbench`) rather than
        on the profiled kernel times alone.

        Every run is t = sum over its nodes of their coefficients times their roofline features, plus a
        per-run cost; the unknowns are the coefficients of each kernel class and op type the runs use,
        pulled (with `strength`, in the units of `_fit_group`) towards their profiled values scaled by the
        stage calibration: the trace tells a class's shape, the runs its true cost. Coefficients no run
        uses stay at those scaled values, and the stage calibration becomes the fitted per-run cost alone.
        The factors of weights read from memory (`cold_params`, and `cold_reuse` of those bytes over their
        reuse) are one each for every class, fitted unpulled:
        streaming weights is the memory's cost, and a model held out may be the only one whose dense
        Convs stream megabytes (ResNet-18) while another's pointwise ones show the rate.
        `weights`: one per run, of its squared relative error (1 each when omitted)."""
        row_weights = _run_weights(weights, len(stages))
        prior = self.with_stage_calibration(stages, weights)
        keys = sorted({key for nodes, _ in stages for n in nodes
                       if (key := prior._fitted_key(n.op_type, n.kernel)) is not None})
        width = FEATURE_UNITS.size
        own = width - _SHARED  # per-class features; the cold-weights ones go to shared columns instead
        column = {key: own * i for i, key in enumerate(keys)}
        shared = slice(own * len(keys), own * len(keys) + _SHARED)
        rows, targets = [], []
        for nodes, seconds in stages:
            row, offset_s = np.zeros(own * len(keys) + _SHARED + 1), 0.0
            for n in in_run(nodes):
                key = prior._fitted_key(n.op_type, n.kernel)
                if key is None:  # priced by borrowing: its prediction is a fixed part of the run
                    offset_s += prior.predict(n.op_type, n.flops, n.bytes_moved, n.param_bytes, self.reference, n.kernel,
                                              n.groups, n.im2col, n.cold_share)
                    continue
                features = roofline_features(n.flops, n.bytes_moved, n.param_bytes, self.reference, self.reference,
                                             n.groups, n.im2col, n.cold_share, n.kernel_class) * FEATURE_UNITS
                row[column[key]:column[key] + own] += features[:own]
                row[shared] += features[own:]
            row[-1] = _TIME_FLOOR_S
            rows.append(row)
            targets.append(max(seconds - offset_s, _TIME_FLOOR_S))
        start = np.concatenate([(_scaled(self.op_types[key], prior.stage).as_vector() / FEATURE_UNITS)[:own] for key in keys]
                               + [np.zeros(_SHARED), np.array([prior.stage.per_run_s / _TIME_FLOOR_S])])
        penalty = np.full(start.size, strength)
        penalty[shared.start:] = 0.0
        solution = relative_nnls(np.array(rows), np.array(targets), start, penalty, row_weights)
        cold = dict(zip(("cold_params", "cold_reuse"), (float(x) for x in solution[shared] * FEATURE_UNITS[own:]),
                        strict=True))
        refitted = {}
        for key in keys:
            vector = np.concatenate([solution[column[key]:column[key] + own], np.zeros(_SHARED)]) * FEATURE_UNITS
            refitted[key] = replace(_from_vector(vector, self.op_types[key].samples), **cold)
        unused = {key: replace(_scaled(c, prior.stage), **cold) for key, c in self.op_types.items() if key not in column}
        return replace(self, op_types=dict(sorted((refitted | unused).items())),
                       pooled=None if self.pooled is None else replace(_scaled(self.pooled, prior.stage), **cold),
                       stage=StageCalibration(1.0, 1.0, float(solution[-1] * _TIME_FLOOR_S), len(stages)), devices={})

    def with_device_calibration(self, device: DeviceProfile, stages: Sequence[tuple[Sequence[NodeSample], float]],
                                anchors_s: Sequence[float] | None = None) -> LatencyPredictor:
        """A copy calibrated for `device` from at most MAX_DEVICE_MEASUREMENTS measured runs there
        (nodes, seconds): fits the scales of the predicted work and fixed costs. One measurement fixes
        one common scale; two or more fit both (a slower core stretches both, more threads only the work).

        `anchors_s`: the same runs' measured seconds on the reference. Then the fit is of the
        device/reference *ratio* (each run's parts scaled by its measured / predicted reference time),
        which is what a model measured on the reference needs (HELP's few-shot setting): the predicted
        reference time's own error cancels."""
        if not 1 <= len(stages) <= MAX_DEVICE_MEASUREMENTS:
            raise DeviceError(f"a device calibration takes 1 to {MAX_DEVICE_MEASUREMENTS} measured runs, "
                              f"got {len(stages)}.")
        if anchors_s is not None and (len(anchors_s) != len(stages) or not all(a > 0 for a in anchors_s)):
            raise DeviceError("a ratio calibration needs one positive reference time per measured run.")
        base = replace(self, devices={name: c for name, c in self.devices.items() if name != device.name})
        parts = [base.stage_parts(nodes, device) for nodes, _ in stages]
        if anchors_s is not None:
            ratios = [anchor / max(base.predict_stage_s(nodes, self.reference), _TIME_FLOOR_S)
                      for anchor, (nodes, _) in zip(anchors_s, stages, strict=True)]
            parts = [StageParts(p.work_s * r, p.fixed_s * r, p.nodes) for p, r in zip(parts, ratios, strict=True)]
        targets = np.array([seconds for _, seconds in stages])
        if not np.all(targets > 0):
            raise DeviceError("a device calibration needs measured runs with positive times.")
        per_node_s = 0.0
        if len(stages) == 1:
            scale = float(targets[0] / max(parts[0].work_s + parts[0].fixed_s, _TIME_FLOOR_S))
            work_scale = fixed_scale = scale
        else:
            node_scale = _overhead_scale(self.reference, device) * _TIME_FLOOR_S  # the unknown in microseconds
            rows = np.array([[p.work_s, p.fixed_s, p.nodes * node_scale] for p in parts])
            # A weak pull towards one common scale (and no per-node cost) keeps ill-posed runs sane.
            common = float(np.median(targets / np.maximum(rows[:, :2].sum(axis=1), _TIME_FLOOR_S)))
            work_scale, fixed_scale, per_node_us = (float(x) for x in relative_nnls(
                rows, targets, np.array([common, common, 0.0]), DEVICE_PULL))
            per_node_s = per_node_us * _TIME_FLOOR_S
        calibration = DeviceCalibration(work_scale, fixed_scale, len(stages), per_node_s)
        return replace(base, devices={**base.devices, device.name: calibration})

    # --- file format -----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PREDICTOR_FORMAT,
            "model": "node = u*work_scale*split*(compute*flops/peak_flops + activations*activation_bytes/bw"
                     " + params*param_bytes/bw + cold_params*cold_share*param_bytes/bw + cold_reuse*cold_share*param_bytes/bw/weight_reuse)"
                     " with split = device threads / threads onnxruntime runs the node on (devices.predictor.kernels.parallel_threads)"
                     " + v*fixed_scale*(overhead_s + per_group_s*(groups-1) + per_row_s*im2col_rows"
                     " + per_element_s*im2col_elements)*(reference"
                     " flops per thread / device flops per thread) + w*(same scale); stage = sum(node) +"
                     " v*per_run_s*(same scale); u, v, w (per_node_s) per calibrated device (devices), else 1, 1, 0",
            "reference": self.reference.to_dict(),
            "fitted_on": self.fitted_on,
            "pooled": asdict(self.pooled) if self.pooled else None,
            "op_types": {name: asdict(coefficients) for name, coefficients in sorted(self.op_types.items())},
            "stage": asdict(self.stage),
            "devices": {name: asdict(c) for name, c in sorted(self.devices.items())},
        }

    @classmethod
    def from_dict(cls, data: Any, origin: str = "predictor") -> LatencyPredictor:
        if not isinstance(data, dict) or data.get("format") != PREDICTOR_FORMAT:
            raise DeviceError(f"{origin} is not an edgecloud predictor (expected \"format\": \"{PREDICTOR_FORMAT}\").")
        try:
            op_types = {str(name): _coefficients_from_dict(c) for name, c in data["op_types"].items()}
            pooled = _coefficients_from_dict(data["pooled"]) if data.get("pooled") is not None else None
            stage_data = data["stage"]
            stage = StageCalibration(float(stage_data["work_scale"]), float(stage_data["fixed_scale"]),
                                     float(stage_data["per_run_s"]), int(stage_data["stages"]))
            devices = {str(name): DeviceCalibration(float(c["work_scale"]), float(c["fixed_scale"]),
                                                    int(c["measurements"]), float(c.get("per_node_s", 0.0)))
                       for name, c in data.get("devices", {}).items()}
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise DeviceError(f"{origin}: malformed coefficients ({type(error).__name__}: {error}).") from None
        every = [*op_types.values(), *([pooled] if pooled else [])]
        numbers = [*(v for c in every for v in c.as_vector()), stage.work_scale, stage.fixed_scale, stage.per_run_s,
                   *(v for c in devices.values() for v in (c.work_scale, c.fixed_scale, c.per_node_s))]
        if not _finite_non_negative(numbers):
            raise DeviceError(f"{origin}: coefficients must be finite and non-negative.")
        reference = DeviceProfile.from_dict(data.get("reference"), origin=f"{origin} reference")
        return cls(reference, op_types, pooled, dict(data.get("fitted_on", {})), stage, devices)

    def save(self, path: Any) -> None:
        write_json_file(path, self.to_dict(), "predictor")

    @classmethod
    def load(cls, path: Any) -> LatencyPredictor:
        return cls.from_dict(read_json_file(path, "predictor", expected_format=PREDICTOR_FORMAT), origin=str(path))
