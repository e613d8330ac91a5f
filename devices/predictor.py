"""Per-op-type latency model with roofline features, fitted on measured profiles, so that a device that
is not at hand can be planned for from its DeviceProfile alone.

For a node of op type `op` on device D the model is

    t = a_op * flops / peak_flops(D)
      + b_op * activation_bytes / bandwidth(D)
      + p_op * param_bytes / bandwidth(D)
      + c_op * overhead_scale(D)

with non-negative coefficients (a, b, p are dimensionless inefficiency factors, c_op seconds of fixed
per-kernel cost on the reference device the model was fitted on). Because the features are already
divided by the device's figures, the coefficients transfer: a device twice as fast in FLOP/s halves
the compute term. The fixed cost is serial work, so it scales with the per-thread speed:
overhead_scale(D) = (peak_flops / threads of the reference) / (peak_flops / threads of D).

Fitting: first one pooled model over every op type (non-negative least squares), then each op
type's own model, shrunk towards the pooled one. Op types the fit never saw use the pooled model (a
roofline sum with fitted efficiency factors and a default fixed cost); a predictor never fitted falls
back to the plain roofline, max(compute, memory time), plus DEFAULT_OVERHEAD_S. A fused layer type
("Conv+BatchNormalization+Relu") not fitted as a whole takes its first (dominant) member's factors
plus every member's fixed cost.

Both fits are weighted by 1/t (relative error): the planner compares placements that differ by whole
layers, small ones included. bench/predictor_error.py measures the error on held-out models.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from devices.errors import DeviceError
from devices.json_files import read_json_file, write_json_file
from devices.profiles import PREDICTOR_FILE, DeviceProfile, catalogue_path

PREDICTOR_FORMAT = "edgecloud.predictor/1"
FUSED_SEPARATOR = "+"
DEFAULT_SHRINKAGE = 0.1  # chosen by the leave-one-model-out error (bench/predictor_error.py)
DEFAULT_OVERHEAD_S = 5e-6  # fixed cost per kernel of a predictor that was never fitted
_TIME_FLOOR_S = 1e-6  # onnxruntime's trace has microsecond resolution: no sample weighs more than this


@dataclass(frozen=True)
class NodeSample:
    """One measured node: its roofline features (from the layer DAG) and its time."""

    op_type: str
    flops: int
    bytes_moved: int  # input + output activation bytes + parameter bytes
    param_bytes: int
    time_s: float


@dataclass(frozen=True)
class OpCoefficients:
    """Fitted coefficients of one op type (see the module docstring)."""

    compute: float
    activations: float
    params: float
    overhead_s: float
    samples: int

    def as_vector(self) -> np.ndarray:
        return np.array([self.compute, self.activations, self.params, self.overhead_s])


def _overhead_scale(reference: DeviceProfile, device: DeviceProfile) -> float:
    return (reference.peak_flops / reference.threads) / (device.peak_flops / device.threads)


def roofline_features(flops: int, bytes_moved: int, param_bytes: int, device: DeviceProfile,
                      reference: DeviceProfile) -> np.ndarray:
    """[compute time, activation time, parameter time, fixed-cost scale] of a node on `device`."""
    bandwidth = device.memory_bandwidth_bytes_per_s
    activation_bytes = max(bytes_moved - param_bytes, 0)
    return np.array([flops / device.peak_flops, activation_bytes / bandwidth, param_bytes / bandwidth,
                     _overhead_scale(reference, device)])


def roofline_time_s(flops: int, bytes_moved: int, device: DeviceProfile) -> float:
    """The plain roofline bound: whichever of compute and memory traffic takes longer."""
    return max(flops / device.peak_flops, bytes_moved / device.memory_bandwidth_bytes_per_s)


def _fit_group(group: list[NodeSample], reference: DeviceProfile, prior: OpCoefficients | None,
               shrinkage: float) -> OpCoefficients:
    """Non-negative least squares on relative error, plus `shrinkage` * squared distance to `prior`
    (the factors as they are, the fixed cost in microseconds).

    Why shrink: an op type seen only in one regime (Concat of a few int64 shape values) tells nothing
    about another (Concat of image tensors); without the prior its factors explode when extrapolated.
    """
    from scipy.optimize import nnls

    features = np.array([roofline_features(s.flops, s.bytes_moved, s.param_bytes, reference, reference)
                         for s in group])
    times = np.array([s.time_s for s in group])
    weights = 1.0 / np.maximum(times, _TIME_FLOOR_S)
    rows, targets = features * weights[:, None], times * weights
    # Unknowns in units of `scale` (fixed cost in microseconds) so that all columns are of order one.
    scale = np.array([1.0, 1.0, 1.0, _TIME_FLOOR_S])
    rows = rows * scale
    if prior is not None and shrinkage > 0:
        penalty = np.sqrt(shrinkage)
        rows = np.vstack([rows, penalty * np.eye(4)])
        targets = np.concatenate([targets, penalty * prior.as_vector() / scale])
    solution, _ = nnls(rows, targets)
    a, b, p, c = solution * scale
    return OpCoefficients(float(a), float(b), float(p), float(c), len(group))


def _coefficients_from_dict(data: dict[str, Any]) -> OpCoefficients:
    return OpCoefficients(compute=float(data["compute"]), activations=float(data["activations"]),
                          params=float(data["params"]), overhead_s=float(data["overhead_s"]),
                          samples=int(data["samples"]))


@dataclass
class LatencyPredictor:
    """Coefficients per op type, the pooled coefficients for op types never seen, and the device the
    measurements came from (the fixed costs are in its seconds)."""

    reference: DeviceProfile
    op_types: dict[str, OpCoefficients] = field(default_factory=dict)
    pooled: OpCoefficients | None = None
    fitted_on: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fit(cls, samples: Iterable[NodeSample], reference: DeviceProfile,
            fitted_on: dict[str, Any] | None = None, shrinkage: float = DEFAULT_SHRINKAGE) -> LatencyPredictor:
        """Fit the pooled model on every sample, then each op type's model shrunk towards the pooled
        one; untimed (0 s) samples are ignored."""
        timed = [s for s in samples if s.time_s > 0]
        if not timed:
            raise DeviceError("the predictor needs at least one timed node to fit.")
        pooled = _fit_group(timed, reference, prior=None, shrinkage=0.0)
        by_op: dict[str, list[NodeSample]] = {}
        for sample in timed:
            by_op.setdefault(sample.op_type, []).append(sample)
        op_types = {op_type: _fit_group(group, reference, pooled, shrinkage)
                    for op_type, group in sorted(by_op.items())}
        return cls(reference, op_types, pooled, dict(fitted_on or {}))

    def predict(self, op_type: str, flops: int, bytes_moved: int, param_bytes: int,
                device: DeviceProfile) -> float:
        """Seconds the node takes on `device`."""
        features = roofline_features(flops, bytes_moved, param_bytes, device, self.reference)
        coefficients = self._coefficients_of(op_type)
        if coefficients is None:
            return roofline_time_s(flops, bytes_moved, device) + DEFAULT_OVERHEAD_S * features[3]
        return float(features @ coefficients.as_vector())

    def _coefficients_of(self, op_type: str) -> OpCoefficients | None:
        """The op type's own fit; for a fused type its first member's factors with every member's fixed
        cost; else the pooled fit; None when nothing was fitted at all."""
        if op_type in self.op_types:
            return self.op_types[op_type]
        members = op_type.split(FUSED_SEPARATOR)
        head = self.op_types.get(members[0], self.pooled)
        if len(members) == 1 or head is None:
            return head
        overhead_s = sum(self.op_types.get(m, head).overhead_s for m in members[1:])
        return replace(head, overhead_s=head.overhead_s + overhead_s)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PREDICTOR_FORMAT,
            "model": "t = compute*flops/peak_flops + activations*activation_bytes/bw + params*param_bytes/bw"
                     " + overhead_s*(reference flops per thread / device flops per thread)",
            "reference": self.reference.to_dict(),
            "fitted_on": self.fitted_on,
            "pooled": asdict(self.pooled) if self.pooled else None,
            "op_types": {name: asdict(coefficients) for name, coefficients in sorted(self.op_types.items())},
        }

    @classmethod
    def from_dict(cls, data: Any, origin: str = "predictor") -> LatencyPredictor:
        if not isinstance(data, dict) or data.get("format") != PREDICTOR_FORMAT:
            raise DeviceError(f"{origin} is not an edgecloud predictor (expected \"format\": \"{PREDICTOR_FORMAT}\").")
        try:
            op_types = {str(name): _coefficients_from_dict(c) for name, c in data["op_types"].items()}
            pooled = _coefficients_from_dict(data["pooled"]) if data.get("pooled") is not None else None
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise DeviceError(f"{origin}: malformed coefficients ({type(error).__name__}: {error}).") from None
        every = [*op_types.values(), *([pooled] if pooled else [])]
        if any(not (value >= 0 and math.isfinite(value)) for c in every for value in c.as_vector()):
            raise DeviceError(f"{origin}: coefficients must be finite and non-negative.")
        reference = DeviceProfile.from_dict(data.get("reference"), origin=f"{origin} reference")
        return cls(reference, op_types, pooled, dict(data.get("fitted_on", {})))

    def save(self, path: str | Path) -> None:
        write_json_file(path, self.to_dict(), "predictor")

    @classmethod
    def load(cls, path: str | Path) -> LatencyPredictor:
        return cls.from_dict(read_json_file(path, "predictor", expected_format=PREDICTOR_FORMAT), origin=str(path))


def shipped_predictor_path() -> Path:
    return catalogue_path(PREDICTOR_FILE)


@cache
def shipped_predictor() -> LatencyPredictor:
    """The predictor fitted on this project's bundled models (`edgecloud predictor fit`)."""
    return LatencyPredictor.load(shipped_predictor_path())


def predict_node_time_s(op_type: str, flops: int, bytes_moved: int, param_bytes: int,
                        device: DeviceProfile) -> float:
    """Seconds a node takes on `device`, from the shipped per-op-type model."""
    return shipped_predictor().predict(op_type, flops, bytes_moved, param_bytes, device)


@dataclass(frozen=True)
class HeldOutResult:
    """How well a predictor fitted without one model predicts that model."""

    model: str
    node_relative_errors: list[float]  # |predicted - measured| / measured, timed nodes only
    measured_total_s: float  # sum of measured node times
    predicted_total_s: float

    @property
    def model_relative_error(self) -> float:
        return abs(self.predicted_total_s - self.measured_total_s) / self.measured_total_s


def relative_errors(predicted_s: Iterable[float], samples: Iterable[NodeSample]) -> list[float]:
    """|predicted - measured| / measured for every timed sample."""
    return [abs(p - s.time_s) / s.time_s for p, s in zip(predicted_s, samples, strict=True) if s.time_s > 0]


def leave_one_model_out(samples_by_model: Mapping[str, list[NodeSample]],
                        reference: DeviceProfile) -> list[HeldOutResult]:
    """Fit on every model but one, predict the one held out on `reference`, for each model in turn."""
    if len(samples_by_model) < 2:
        raise DeviceError("leave-one-model-out needs samples of at least two models.")
    results = []
    for held_out, test in samples_by_model.items():
        train = [s for name, group in samples_by_model.items() if name != held_out for s in group]
        predictor = LatencyPredictor.fit(train, reference)
        predicted = [predictor.predict(s.op_type, s.flops, s.bytes_moved, s.param_bytes, reference) for s in test]
        results.append(HeldOutResult(
            model=held_out,
            node_relative_errors=relative_errors(predicted, test),
            measured_total_s=sum(s.time_s for s in test),
            predicted_total_s=float(sum(predicted)),
        ))
    return results
