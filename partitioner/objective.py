"""What a given placement costs: the one definition every solver, baseline and test recomputes against.

A placement is an int array (node index in `CostArrays` order -> device index). The objectives:
- latency: all compute times on their devices plus every transfer (layers run one after another);
- throughput: the busiest resource's seconds per request in a pipelined stream, where the resources are
  each device (its compute) and each directed link (the transfers it carries, full duplex);
- makespan: one request, independent branches in parallel on different devices, one node at a time per
  device, a consumer starting once its inputs have arrived (`schedule_makespan_s`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from partitioner.costs import CostArrays

OBJECTIVES = ("latency", "throughput", "makespan")


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
    return float(compute_s_per_device(arrays, placement).sum() + transfers(arrays, placement).seconds.sum())


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
    return makespan, start_s
