"""What a given placement costs: the one definition every solver, baseline and test recomputes against.

A placement is an int array (node index in `CostArrays` order -> device index). The objectives:
- latency: all compute times on their devices plus every transfer (layers run one after another), plus
  the client's hops (`CostArrays.fixed_s`, the same for every placement);
- throughput: the busiest resource's seconds per request in a pipelined stream, where the resources are
  each device (its compute) and each directed link (the transfers it carries, full duplex);
- makespan: one request, independent branches in parallel on different devices, one node at a time per
  device, a consumer starting once its inputs have arrived (`schedule_makespan_s`), plus the client's hops.
The client's hops are no pipeline resource of ours (the client's own link), so throughput leaves them out.
Each is one `Objective` record in `OBJECTIVES`, the registry every solver, baseline and command reads:
what a name means is decided here once, and a name not in it is refused before any work starts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from partitioner.costs.cost_graph import CostArrays
from partitioner.errors import PartitionerError

# How the optimum is found: "sum" and "bottleneck" are `partitioner.solve.ilp_placement`'s model (the sum of
# every second, or the busiest resource's), "schedule" is `partitioner.solve.ilp_makespan`'s.
Formulation = Literal["sum", "bottleneck", "schedule"]


@dataclass(frozen=True)
class Transfers:
    """Every send a placement causes: tensor index, from device, to device, seconds."""

    tensor: np.ndarray
    from_device: np.ndarray
    to_device: np.ndarray
    seconds: np.ndarray


def home_devices(arrays: CostArrays, placement: np.ndarray) -> np.ndarray:
    """The device each tensor is produced on (graph inputs: the source)."""
    return np.where(arrays.producer >= 0, placement[np.maximum(arrays.producer, 0)], arrays.source)


def transfers(arrays: CostArrays, placement: np.ndarray) -> Transfers:
    """Sends once per (tensor, destination device other than where it was produced)."""
    d = arrays.n_devices
    home = home_devices(arrays, placement)
    needed = np.concatenate([
        arrays.use_tensor * d + placement[arrays.use_node],
        np.flatnonzero(arrays.is_output) * d + arrays.sink,
    ])
    needed = np.unique(needed)
    tensor, to_device = needed // d, needed % d
    keep = home[tensor] != to_device
    tensor, to_device = tensor[keep], to_device[keep]
    from_device = home[tensor]
    return Transfers(tensor, from_device, to_device, arrays.transfer_s[tensor, from_device, to_device])


def compute_s_per_device(arrays: CostArrays, placement: np.ndarray) -> np.ndarray:
    per_node = arrays.time_s[np.arange(arrays.n_nodes), placement]
    return np.bincount(placement, weights=per_node, minlength=arrays.n_devices)


def link_busy_s(arrays: CostArrays, placement: np.ndarray) -> np.ndarray:
    """(d, d) seconds of transfers per directed link per request."""
    sends = transfers(arrays, placement)
    d = arrays.n_devices
    busy = np.bincount(sends.from_device * d + sends.to_device, weights=sends.seconds, minlength=d * d)
    return busy.reshape(d, d)


def latency_s(arrays: CostArrays, placement: np.ndarray) -> float:
    return float(compute_s_per_device(arrays, placement).sum() + transfers(arrays, placement).seconds.sum()
                 + arrays.fixed_s)


def throughput_s(arrays: CostArrays, placement: np.ndarray) -> float:
    return float(max(compute_s_per_device(arrays, placement).max(), link_busy_s(arrays, placement).max()))


def infeasibility(arrays: CostArrays, placement: np.ndarray) -> str | None:
    """Why `placement` breaks a pin or a memory limit, or None when it is feasible."""
    pinned = arrays.pin >= 0
    wrong = np.flatnonzero(pinned & (arrays.pin != placement))
    if wrong.size:
        return f"node {arrays.node_names[wrong[0]]!r} is pinned to {arrays.device_names[arrays.pin[wrong[0]]]!r}"
    used = np.bincount(placement, weights=arrays.memory_bytes, minlength=arrays.n_devices)
    over = np.flatnonzero(used > arrays.memory_limit_bytes * (1 + 1e-9))
    if over.size:
        k = over[0]
        return f"device {arrays.device_names[k]!r} would hold {used[k]:.0f} bytes over its {arrays.memory_limit_bytes[k]:.0f}-byte limit"
    return None


def schedule_makespan_s(arrays: CostArrays, placement: np.ndarray, order: list[int]) -> tuple[float, np.ndarray]:
    """Earliest-start schedule when each device runs its nodes in the sequence they appear in `order`
    (a topological order); returns (makespan, start times). Every optimal schedule is of this form for
    the order of its start times, so minimising over orders gives the placement's optimal makespan."""
    n = arrays.n_nodes
    ready_s = np.zeros(n)
    for tensor, consumer in zip(arrays.use_tensor, arrays.use_node):
        producer = arrays.producer[tensor]
        if producer < 0:
            ready_s[consumer] = max(ready_s[consumer], arrays.transfer_s[tensor, arrays.source, placement[consumer]])
    start_s = np.zeros(n)
    finish_s = np.zeros(n)
    device_free_s = np.zeros(arrays.n_devices)
    inputs_of: list[list[int]] = [[] for _ in range(n)]
    for tensor, consumer in zip(arrays.use_tensor, arrays.use_node):
        if arrays.producer[tensor] >= 0:
            inputs_of[consumer].append(int(tensor))
    for node in order:
        device = placement[node]
        ready = max(ready_s[node], device_free_s[device])
        for tensor in inputs_of[node]:
            producer = arrays.producer[tensor]
            ready = max(ready, finish_s[producer] + arrays.transfer_s[tensor, placement[producer], device])
        start_s[node] = ready
        finish_s[node] = ready + arrays.time_s[node, device]
        device_free_s[device] = finish_s[node]
    makespan = float(finish_s.max()) if n else 0.0
    for tensor in np.flatnonzero(arrays.is_output):
        producer = arrays.producer[tensor]
        if producer >= 0:
            arrival = finish_s[producer] + arrays.transfer_s[tensor, placement[producer], arrays.sink]
        else:
            arrival = arrays.transfer_s[tensor, arrays.source, arrays.sink]
        makespan = max(makespan, float(arrival))
    return makespan + arrays.fixed_s, start_s


def list_schedule_makespan_s(arrays: CostArrays, placement: np.ndarray) -> float:
    """Makespan of the placement's list schedule in the nodes' topological order (how a baseline's
    placement is scored: it comes without an order of its own)."""
    return schedule_makespan_s(arrays, placement, list(range(arrays.n_nodes)))[0]


@dataclass(frozen=True)
class Objective:
    """One objective: its name, how a placement is scored, how the optimum is formulated, and the solver
    time limit it gets when none is given (None: it is solved fast and exactly, no limit needed)."""

    name: str
    evaluate: Callable[[CostArrays, np.ndarray], float]
    formulation: Formulation
    default_time_limit_s: float | None

    def time_limit_s(self, given_s: float | None) -> float | None:
        return self.default_time_limit_s if given_s is None else given_s


LATENCY = Objective("latency", latency_s, "sum", None)
THROUGHPUT = Objective("throughput", throughput_s, "bottleneck", 60.0)
MAKESPAN = Objective("makespan", list_schedule_makespan_s, "schedule", 60.0)
OBJECTIVES: dict[str, Objective] = {objective.name: objective for objective in (LATENCY, THROUGHPUT, MAKESPAN)}


def objective_named(objective: str | Objective) -> Objective:
    """The registered objective of that name (a record is returned as it is); one sentence otherwise."""
    if isinstance(objective, Objective):
        return objective
    found = OBJECTIVES.get(objective)
    if found is None:
        raise PartitionerError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}.")
    return found
