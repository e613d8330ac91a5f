"""Helpers shared by the split and serving tests: placements and plan files."""

from __future__ import annotations

import json
from pathlib import Path

import onnx

from partitioner.graph.onnx_names import name_nodes_uniquely

DEVICES = ("edge", "cloud")


def node_ids(model_path: Path | str) -> list[str]:
    return name_nodes_uniquely(onnx.load(str(model_path)).graph)


def bouncing_placement(ids: list[str], runs: int) -> dict[str, str]:
    """Consecutive runs of nodes on edge, cloud, edge, cloud...: each device runs several stages."""
    size = -(-len(ids) // runs)
    return {node: DEVICES[position // size % 2] for position, node in enumerate(ids)}


def write_plan(model_path: Path, folder: Path, runs: int = 4) -> Path:
    """A plan file in the documented format (INTERFACES.md) with a bouncing placement."""
    plan = {
        "format": "edgecloud.plan/1", "model": str(model_path), "objective": "latency",
        "devices": {"edge": {}, "cloud": {}},
        "links": [{"from": "edge", "to": "cloud", "bandwidth_bps": 2e7, "latency_s": 0.01}],
        "source": "edge", "sink": "edge", "placement": bouncing_placement(node_ids(model_path), runs),
        "predicted_s": 0.0, "breakdown": {"compute_s": {"edge": 0.0, "cloud": 0.0}, "transfer_s": {}},
        "crossing_tensors": [], "baselines": {}, "solver": {"name": "test", "status": "given", "time_s": 0.0, "gap": 0.0},
    }
    path = folder / "plan.json"
    path.write_text(json.dumps(plan))
    return path
