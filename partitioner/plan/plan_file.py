"""The placement plan (`edgecloud.plan/1`): what runs where, what it is predicted to cost, and why.

`placement` is keyed by EVERY ONNX node id (a fused layer expanded to its members) so that the split
stage can cut the model without the layer DAG; `layers` keeps the planner's own (possibly fused) nodes.
`model` is stored relative to the plan file's folder so that a plan and its model move together.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from devices.errors import DeviceError
from devices.json_files import read_json_file, write_json_file
from devices.profiles import LinkKey, LinkProfile, links_from_list, links_to_list
from partitioner.costs.cost_graph import CostArrays, CostGraph, client_hops_s
from partitioner.costs.objective import compute_s_per_device, transfers
from partitioner.errors import PartitionerError
from partitioner.graph.model_identity import file_sha256
from partitioner.solve.baselines import Baseline
from partitioner.solve.optimal import Solution

PLAN_FORMAT = "edgecloud.plan/1"


@dataclass
class Plan:
    model: str | None  # absolute (or as given) path of the ONNX model; None for cost-graph plans
    objective: str
    devices: dict[str, dict[str, Any]]
    links: dict[LinkKey, LinkProfile]  # as in the cost graph (the agents' link emulation reads them too)
    source: str
    sink: str
    placement: dict[str, str]  # ONNX node id (or cost-graph node) -> device
    predicted_s: float
    breakdown: dict[str, dict[str, float]]
    crossing_tensors: list[dict[str, Any]]
    baselines: dict[str, float | None]
    solver: dict[str, Any]
    layers: dict[str, str] = field(default_factory=dict)  # planner node -> device
    schedule_s: dict[str, float] | None = None  # makespan plans: start time per planner node
    model_sha256: str | None = None  # of the model file planned: a split of another model is refused

    @property
    def model_path(self) -> Path | None:
        return None if self.model is None else Path(self.model)

    def to_dict(self, relative_to: Path | None = None) -> dict[str, Any]:
        model = self.model
        if model is not None and relative_to is not None:
            model = os.path.relpath(Path(model).resolve(), relative_to.resolve())
        data = {
            "format": PLAN_FORMAT, "model": model, "objective": self.objective, "devices": self.devices,
            "links": links_to_list(self.links), "source": self.source, "sink": self.sink, "placement": self.placement,
            "predicted_s": self.predicted_s, "breakdown": self.breakdown, "crossing_tensors": self.crossing_tensors,
            "baselines": self.baselines, "solver": self.solver, "layers": self.layers,
        }
        if self.schedule_s is not None:
            data["schedule_s"] = self.schedule_s
        if self.model_sha256 is not None:
            data["model_sha256"] = self.model_sha256
        return data

    def save(self, path: str | Path) -> None:
        path = Path(path)
        write_json_file(path, self.to_dict(relative_to=path.parent), "plan", error=PartitionerError)

    def speedups(self) -> dict[str, float | None]:
        """How many times slower each baseline is than the plan."""
        return {name: (None if value is None or self.predicted_s <= 0 else value / self.predicted_s)
                for name, value in self.baselines.items()}


def load_plan(path: str | Path) -> Plan:
    """Read a plan file; the model path is resolved against the plan's folder."""
    path = Path(path)
    data = read_json_file(path, "plan", expected_format=PLAN_FORMAT, error=PartitionerError,
                          wrong_kind_hint="; make a plan with `edgecloud plan MODEL -o plan.json`")
    return plan_from_dict(data, path.parent, f"plan file {path}")


def plan_from_dict(data: Any, folder: Path, origin: str) -> Plan:
    """A plan from its JSON form (a plan file's, or one interval of a plan set's), checked; a relative
    model path is resolved against `folder`. Errors name `origin`."""
    try:
        model = data["model"]
        if model is not None and not Path(model).is_absolute():
            model = str((folder / model).resolve())
        links = links_from_list(data["links"], "its links")
        plan = Plan(model=model, objective=data["objective"], devices=dict(data["devices"]), links=links,
                    source=data["source"], sink=data["sink"], placement=dict(data["placement"]),
                    predicted_s=float(data["predicted_s"]), breakdown=data["breakdown"],
                    crossing_tensors=list(data["crossing_tensors"]), baselines=dict(data["baselines"]),
                    solver=dict(data["solver"]), layers=dict(data.get("layers", {})), schedule_s=data.get("schedule_s"),
                    model_sha256=data.get("model_sha256"))
    except DeviceError as error:  # the sentence names the link
        raise PartitionerError(f"{origin} is malformed ({str(error).rstrip('.')}).") from None
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as error:
        raise PartitionerError(f"{origin} is malformed ({type(error).__name__}: {error}).") from None
    # Agents are started per listed device: a node placed on another would wait for one nobody starts.
    named = [("the source", plan.source), ("the sink", plan.sink)]
    named += [(f"node {node!r}", device) for node, device in plan.placement.items()]
    named += [("a link", end) for ends in plan.links for end in ends]
    for what, device in named:
        if not isinstance(device, str) or device not in plan.devices:
            raise PartitionerError(f"{origin}: {what} names the device {device!r}, which is not one of its "
                                   f"devices ({', '.join(plan.devices) or 'none'}).")
    return plan


def build_plan(graph: CostGraph, arrays: CostArrays, solution: Solution, baselines: list[Baseline], objective: str) -> Plan:
    """Describe `solution` of `graph` as a plan: placement per ONNX node, cost breakdown, crossings."""
    names = arrays.device_names
    placement = solution.placement
    layers = {node: names[placement[i]] for i, node in enumerate(arrays.node_names)}
    onnx_placement: dict[str, str] = {}
    for node, device in layers.items():
        for member in graph.nodes[node].members or [node]:
            onnx_placement[member] = device
    sends = transfers(arrays, placement)
    transfer_s: dict[str, float] = {}
    crossing = []
    for t, k, l, seconds in zip(sends.tensor, sends.from_device, sends.to_device, sends.seconds):
        key = f"{names[k]}->{names[l]}"
        transfer_s[key] = transfer_s.get(key, 0.0) + float(seconds)
        crossing.append({"tensor": arrays.tensor_names[t], "from": names[k], "to": names[l],
                         "bytes": int(arrays.tensor_bytes[t]), "seconds": float(seconds)})
    request_s, answer_s = client_hops_s(graph)
    if request_s or answer_s:  # priced only with a client link; the same for every placement
        transfer_s[f"client->{graph.source}"] = request_s
        transfer_s[f"{graph.sink}->client"] = answer_s
    compute = compute_s_per_device(arrays, placement)
    schedule = None
    if solution.start_s is not None:
        schedule = {node: float(solution.start_s[i]) for i, node in enumerate(arrays.node_names)}
    gap = solution.gap if np.isfinite(solution.gap) else None
    return Plan(
        model=graph.model, objective=objective, devices=graph.devices, links=dict(graph.links), source=graph.source,
        sink=graph.sink, placement=onnx_placement, predicted_s=float(solution.objective_s),
        breakdown={"compute_s": {name: float(compute[k]) for k, name in enumerate(names)}, "transfer_s": transfer_s},
        crossing_tensors=crossing, baselines={b.name: b.objective_s for b in baselines},
        solver={"name": solution.solver, "method": solution.method, "status": solution.status,
                "time_s": solution.time_s, "gap": gap, **({"note": solution.note} if solution.note else {})},
        layers=layers, schedule_s=schedule,
        model_sha256=graph.model_sha256 or (
            file_sha256(graph.model) if graph.model is not None and Path(graph.model).is_file() else None),
    )
