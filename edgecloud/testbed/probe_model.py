"""A one-node model (Relu on a [1, n] float32 tensor) and its plan: the smallest real request an agent
path can carry, so that what a hop costs through real agents (executor hand-off, stage run, trace,
the client's bookkeeping) is measured apart from any model (`edgecloud testbed`'s calibration,
bench/agent_hop.py)."""

from __future__ import annotations

import json
from pathlib import Path

DEVICES: tuple[str, ...] = ("edge", "cloud")


def write_relu_plan(size_bytes: int, folder: Path, device: str = "cloud") -> Path:
    """Write relu.onnx and plan.json into `folder`: the node on `device`, source and sink the edge (on
    the cloud every request makes four hops of one size: client -> edge -> cloud -> edge -> client; on
    the edge, two: client -> edge -> client)."""
    import onnx
    from onnx import TensorProto, helper

    elements = max(1, size_bytes // 4)
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["output"], name="relu")], "relu",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, elements])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, elements])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(folder / "relu.onnx"))
    plan = {"format": "edgecloud.plan/1", "model": str(folder / "relu.onnx"), "objective": "latency",
            "devices": {name: {} for name in DEVICES},
            "links": [{"from": "edge", "to": "cloud", "bandwidth_bps": 1e9, "latency_s": 0.0}],
            "source": "edge", "sink": "edge", "placement": {"relu": device}, "predicted_s": 0.0,
            "breakdown": {"compute_s": {name: 0.0 for name in DEVICES}, "transfer_s": {}}, "crossing_tensors": [],
            "baselines": {}, "solver": {"name": "given", "status": "given", "time_s": 0.0, "gap": 0.0}}
    (folder / "plan.json").write_text(json.dumps(plan))
    return folder / "plan.json"
