"""The latency predictor: kernel classes (`kernels`), the fitted model with its stage and device
calibrations (`model`), its honest evaluation (`evaluation`), and the coefficients shipped in the
catalogue."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from devices.predictor.evaluation import (
    DevicePrediction,
    FitInputs,
    HeldOutResult,
    error_summary,
    fit_on_runs,
    held_out_device,
    held_out_fits,
    leave_one_model_out,
    relative_errors,
)
from devices.predictor.kernels import kernel_class, op_type_of
from devices.predictor.model import (
    DEFAULT_OVERHEAD_S,
    DEFAULT_SHRINKAGE,
    MAX_DEVICE_MEASUREMENTS,
    PREDICTOR_FORMAT,
    DeviceCalibration,
    LatencyPredictor,
    NodeSample,
    OpCoefficients,
    StageCalibration,
    StageParts,
    cold_share,
    in_run,
    roofline_features,
    roofline_time_s,
    weight_reuse,
)
from devices.predictor.threads import AmdahlCalibration, ThreadFeatures, ThreadScaling
from devices.profiles import PREDICTOR_FILE, DeviceProfile, catalogue_path

__all__ = [
    "AmdahlCalibration", "DEFAULT_OVERHEAD_S", "DEFAULT_SHRINKAGE", "MAX_DEVICE_MEASUREMENTS", "PREDICTOR_FORMAT",
    "DeviceCalibration", "DevicePrediction", "FitInputs", "ThreadFeatures", "ThreadScaling", "held_out_fits",
    "HeldOutResult", "LatencyPredictor", "NodeSample", "OpCoefficients", "StageCalibration", "StageParts",
    "cold_share", "error_summary", "fit_on_runs", "held_out_device", "in_run", "kernel_class", "leave_one_model_out", "op_type_of", "predict_node_time_s",
    "relative_errors", "roofline_features", "roofline_time_s", "shipped_predictor", "shipped_predictor_path",
    "weight_reuse",
]


def shipped_predictor_path() -> Path:
    return catalogue_path(PREDICTOR_FILE)


@cache
def shipped_predictor() -> LatencyPredictor:
    """The predictor fitted on this project's bundled and real models (`edgecloud predictor fit`)."""
    return LatencyPredictor.load(shipped_predictor_path())


def predict_node_time_s(op_type: str, flops: int, bytes_moved: int, param_bytes: int,
                        device: DeviceProfile, kernel: str = "", groups: int = 1,
                        im2col: tuple[int, int] = (0, 0), cold: float = 0.0) -> float:
    """Seconds a node takes on `device`, from the shipped model (`kernel`: its class, when known;
    `groups`: a grouped Conv's groups; `im2col`: a Conv's column-buffer rows and elements; `cold`: the
    share of its run's weights that do not fit in cache, `cold_share`)."""
    return shipped_predictor().predict(op_type, flops, bytes_moved, param_bytes, device, kernel, groups, im2col, cold)
