"""An ONNX model to run and seeded inputs to run it on: shared by the per-node profiler
(`devices.profiler`) and the whole-model latency protocol (`devices.latency`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from devices.errors import DeviceError


def load_model(model: Any) -> Any:
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)
    if not path.is_file():
        raise DeviceError(f"ONNX model {path} does not exist.")
    try:
        return onnx.load(str(path))
    except Exception as error:  # onnx raises DecodeError / ValueError / OSError variants
        raise DeviceError(f"cannot read ONNX model {path}: {type(error).__name__}.") from None


def random_inputs(model: Any, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded random feeds for the graph inputs: dynamic dimensions become 1, integer inputs take
    values in {0, 1} so that they are valid indices for Gather-style ops."""
    from onnx import helper

    rng = np.random.default_rng(seed)
    initializers = {init.name for init in model.graph.initializer}
    feeds: dict[str, np.ndarray] = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        if not value.type.HasField("tensor_type"):
            raise DeviceError(f"graph input '{value.name}' is not a tensor; the profiler feeds tensors only.")
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1
                      for d in tensor_type.shape.dim)
        if dtype.kind == "f":
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[value.name] = rng.integers(0, 2, shape).astype(bool)
        elif dtype.kind in "iu":
            feeds[value.name] = rng.integers(0, 2, shape).astype(dtype)
        else:
            raise DeviceError(f"graph input '{value.name}' has type {dtype}, which the profiler cannot generate.")
    return feeds
