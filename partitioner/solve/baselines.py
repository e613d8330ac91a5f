"""The classic placements reported beside every plan, and brute force for small graphs.

- all-<device>: everything on one device;
- neurosurgeon: the best single cut of the compute graph's chain (`chain_order`), prefix on the source
  device and suffix on one other device (Neurosurgeon's chain view of the network), over every other
  device;
- dads-mincut: DADS' min-cut between the source device and each other device (`partitioner.solve.mincut`);
- brute-force: every placement, vectorised; reported for latency and throughput plans of graphs with at
  most BRUTE_FORCE_REPORT_MAX_PLACEMENTS placements, where it shows the ILP's optimum is the true one.
The other baselines choose their placement for latency, as the originals do; all are scored under the
plan's objective. Each is a feasible placement, so the ILP's optimum can never be worse than any of them.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

import numpy as np

from partitioner.costs.cost_graph import CostArrays
from partitioner.costs.objective import Objective, infeasibility, latency_s, objective_named, schedule_makespan_s
from partitioner.errors import PartitionerError
from partitioner.solve.mincut import min_cut_placement

BRUTE_FORCE_MAX_PLACEMENTS = 3**13
BRUTE_FORCE_REPORT_MAX_PLACEMENTS = 4096  # beside a plan: a few milliseconds at most
_BRUTE_FORCE_FORMULATIONS = ("sum", "bottleneck")  # vectorised over placements; a schedule also needs orders


@dataclass(frozen=True)
class Baseline:
    name: str
    placement: np.ndarray | None  # None: no feasible placement of this kind
    objective_s: float | None


def all_on_one(arrays: CostArrays, device: int) -> np.ndarray | None:
    placement = np.full(arrays.n_nodes, device, dtype=np.int64)
    return placement if infeasibility(arrays, placement) is None else None


def chain_order(arrays: CostArrays) -> np.ndarray:
    """The node order Neurosurgeon cuts: the compute graph's topological order (nodes that read a graph
    input, directly or through other nodes), each other node (one that builds weights or constants
    from nothing) placed just before the first node that needs it.

    Why not any topological order: in one where every weight builder comes first, each cut leaves the
    weights of the suffix on the source device and ships them over the link with the activations, a
    chain no network is (seen as 19 s against 1.2 s on AlexNet at 10 Mbit/s)."""
    n = arrays.n_nodes
    predecessors = arrays.predecessors
    computes = np.zeros(n, dtype=bool)
    computes[arrays.use_node[arrays.producer[arrays.use_tensor] < 0]] = True  # reads a graph input
    for v in range(n):  # nodes are in a topological order already
        computes[v] = computes[v] or any(computes[p] for p in predecessors[v])
    placed = np.zeros(n, dtype=bool)
    order: list[int] = []

    def place(root: int) -> None:
        """Post-order walk of the unplaced ancestors of `root` (iterative: weight chains can be long)."""
        stack = [(root, iter(predecessors[root]))]
        while stack:
            node, pending = stack[-1]
            following = next((p for p in pending if not placed[p]), None)
            if following is None:
                stack.pop()
                if not placed[node]:
                    placed[node] = True
                    order.append(node)
            else:
                stack.append((following, iter(predecessors[following])))

    for v in np.flatnonzero(computes):
        place(int(v))
    for v in np.flatnonzero(~computes):
        place(int(v))
    return np.array(order, dtype=np.int64)


def reordered(arrays: CostArrays, order: np.ndarray) -> CostArrays:
    """The same graph with its nodes listed in `order` (a topological order): node i is order[i]."""
    position = np.empty(arrays.n_nodes, dtype=np.int64)
    position[order] = np.arange(arrays.n_nodes)
    producer = np.where(arrays.producer >= 0, position[np.maximum(arrays.producer, 0)], -1)
    return replace(arrays, node_names=[arrays.node_names[v] for v in order], time_s=arrays.time_s[order],
                   memory_bytes=arrays.memory_bytes[order], pin=arrays.pin[order], producer=producer,
                   use_node=position[arrays.use_node])


def neurosurgeon(arrays: CostArrays, a: int, b: int) -> np.ndarray | None:
    """Best latency over the n+1 cuts of `chain_order` (its first i nodes on a, the rest on b)."""
    order = chain_order(arrays)
    chosen = _best_cut_in_node_order(reordered(arrays, order), a, b)
    if chosen is None:
        return None
    placement = np.empty(arrays.n_nodes, dtype=np.int64)
    placement[order] = chosen
    return placement


def _best_cut_in_node_order(arrays: CostArrays, a: int, b: int) -> np.ndarray | None:
    """Best latency over the n+1 cuts of the arrays' own node order (first i nodes on a, rest on b)."""
    n = arrays.n_nodes
    cuts = np.arange(n + 1)
    cost = np.concatenate([[0.0], np.cumsum(arrays.time_s[:, a])])
    cost += np.concatenate([np.cumsum(arrays.time_s[::-1, b])[::-1], [0.0]])
    delta = np.zeros(n + 2)

    def pay(low: np.ndarray, high: np.ndarray, seconds: np.ndarray) -> None:
        """Add seconds to every cut i with low <= i <= high."""
        valid = low <= high
        np.add.at(delta, low[valid], seconds[valid])
        np.add.at(delta, high[valid] + 1, -seconds[valid])

    first = np.full(arrays.n_tensors, n + 1)
    last = np.full(arrays.n_tensors, -1)
    np.minimum.at(first, arrays.use_tensor, arrays.use_node)
    np.maximum.at(last, arrays.use_tensor, arrays.use_node)
    has_users = last >= 0
    producer, sink = arrays.producer, arrays.sink
    made = producer >= 0
    # Produced on a (i > P): sent to b while some consumer is at a position >= i.
    sel = made & has_users
    pay(producer[sel] + 1, last[sel], arrays.transfer_s[sel, a, b])
    out = made & arrays.is_output
    if sink == b:
        # an output produced on a always goes to b; merge with the consumer interval (send once).
        tail_low = np.where(has_users, np.maximum(last + 1, producer + 1), producer + 1)
        pay(tail_low[out], np.full(out.sum(), n), arrays.transfer_s[out, a, b])
    else:  # produced on a: a->sink (nothing when the sink is a); produced on b (i <= P): b->sink
        pay(producer[out] + 1, np.full(out.sum(), n), arrays.transfer_s[out, a, sink])
        pay(np.zeros(out.sum(), dtype=np.int64), producer[out], arrays.transfer_s[out, b, sink])
    # Graph inputs live on the source; one is sent once to each other device holding a consumer, or the
    # sink when it is also a graph output (then for every cut).
    inputs = ~made & (has_users | arrays.is_output)
    home, to_sink = arrays.source, arrays.is_output
    everywhere_n = np.full(inputs.sum(), n)
    if home != a:  # some consumer on a (i > first), or a is the sink
        low = np.where(to_sink & (sink == a), 0, first + 1)
        pay(low[inputs], everywhere_n, arrays.transfer_s[inputs, home, a])
    if home != b:  # some consumer on b (i <= last), or b is the sink
        high = np.where(to_sink & (sink == b), n, last)
        pay(np.zeros(inputs.sum(), dtype=np.int64), high[inputs], arrays.transfer_s[inputs, home, b])
    if sink not in (a, b) and home != sink:
        passed_through = inputs & to_sink
        pay(np.zeros(passed_through.sum(), dtype=np.int64), np.full(passed_through.sum(), n),
            arrays.transfer_s[passed_through, home, sink])
    cost += np.cumsum(delta)[: n + 1]

    feasible = np.ones(n + 1, dtype=bool)
    positions = np.arange(n)
    for v in positions[arrays.pin >= 0]:
        pin = arrays.pin[v]
        feasible &= (cuts > v) if pin == a else (cuts <= v) if pin == b else False
    memory_a = np.concatenate([[0.0], np.cumsum(arrays.memory_bytes)])
    feasible &= memory_a <= arrays.memory_limit_bytes[a] * (1 + 1e-9)
    feasible &= (memory_a[-1] - memory_a) <= arrays.memory_limit_bytes[b] * (1 + 1e-9)
    if not feasible.any():
        return None
    best = int(np.flatnonzero(feasible)[np.argmin(cost[feasible])])
    return np.where(positions < best, a, b).astype(np.int64)


def dads_min_cut(arrays: CostArrays, a: int, b: int) -> np.ndarray | None:
    placement = min_cut_placement(arrays, a, b)
    if placement is None or infeasibility(arrays, placement) is not None:
        return None
    return placement


def baselines(arrays: CostArrays, objective: str | Objective) -> list[Baseline]:
    """Every baseline, scored under `objective` (None when infeasible under the pins/memory limits)."""
    objective = objective_named(objective)  # an unknown name is refused before any baseline is computed
    found: list[tuple[str, np.ndarray | None]] = []
    for k, name in enumerate(arrays.device_names):
        found.append((f"all-{name}", all_on_one(arrays, k)))
    others = [k for k in range(arrays.n_devices) if k != arrays.source]
    for label, method in (("neurosurgeon", neurosurgeon), ("dads-mincut", dads_min_cut)):
        candidates = [p for p in (method(arrays, arrays.source, b) for b in others) if p is not None]
        found.append((label, min(candidates, key=lambda p: latency_s(arrays, p)) if candidates else None))
    return [Baseline(name, placement, None if placement is None else objective.evaluate(arrays, placement))
            for name, placement in found]


def brute_force_baseline(arrays: CostArrays, objective: str | Objective) -> Baseline | None:
    """The exhaustive optimum as a baseline row, for latency or throughput on graphs small enough to
    enumerate beside a plan (None otherwise)."""
    if objective_named(objective).formulation not in _BRUTE_FORCE_FORMULATIONS or _placement_count(arrays) > BRUTE_FORCE_REPORT_MAX_PLACEMENTS:
        return None
    exhaustive = brute_force(arrays, objective)
    return Baseline("brute-force", None, None) if exhaustive is None else Baseline("brute-force", *exhaustive)


def _placement_count(arrays: CostArrays) -> int:
    return math.prod(len(arrays.allowed_devices(v)) for v in range(arrays.n_nodes))  # exact: no float overflow


def _all_placements(arrays: CostArrays) -> np.ndarray:
    choices = [arrays.allowed_devices(v) for v in range(arrays.n_nodes)]
    count = _placement_count(arrays)
    if count > BRUTE_FORCE_MAX_PLACEMENTS:
        raise PartitionerError(f"brute force would try {count} placements; it is meant for tiny graphs.")
    grids = np.meshgrid(*[np.array(c) for c in choices], indexing="ij") if choices else []
    return np.stack([g.ravel() for g in grids], axis=1) if choices else np.zeros((1, 0), dtype=np.int64)


def brute_force(arrays: CostArrays, objective: str | Objective) -> tuple[np.ndarray, float] | None:
    """Exhaustive optimum for `latency` or `throughput` (vectorised over all placements); None if infeasible."""
    objective = objective_named(objective)
    if objective.formulation not in _BRUTE_FORCE_FORMULATIONS:
        raise PartitionerError(f"brute force handles latency and throughput, not {objective.name!r}.")
    placements = _all_placements(arrays)
    count, d = placements.shape[0], arrays.n_devices
    rows = np.arange(count)
    compute = np.zeros((count, d))
    for v in range(arrays.n_nodes):
        compute[rows, placements[:, v]] += arrays.time_s[v, placements[:, v]]
    links = np.zeros((count, d, d))
    for t in range(arrays.n_tensors):
        producer = arrays.producer[t]
        home = placements[:, producer] if producer >= 0 else np.full(count, arrays.source)
        needed = np.zeros((count, d), dtype=bool)
        for c in arrays.use_node[arrays.use_tensor == t]:
            needed[rows, placements[:, c]] = True
        if arrays.is_output[t]:
            needed[:, arrays.sink] = True
        needed[rows, home] = False
        for l in range(d):
            links[rows, home, l] += np.where(needed[:, l], arrays.transfer_s[t, home, l], 0.0)
    if objective.formulation == "sum":
        value = compute.sum(axis=1) + links.sum(axis=(1, 2)) + arrays.fixed_s  # as objective.latency_s
    else:  # the busiest resource
        value = np.maximum(compute.max(axis=1), links.reshape(count, -1).max(axis=1))
    memory = np.zeros((count, d))
    for v in range(arrays.n_nodes):
        memory[rows, placements[:, v]] += arrays.memory_bytes[v]
    value = np.where((memory <= arrays.memory_limit_bytes * (1 + 1e-9)).all(axis=1), value, np.inf)
    best = int(np.argmin(value))
    return None if not np.isfinite(value[best]) else (placements[best].astype(np.int64), float(value[best]))


def linear_extensions(arrays: CostArrays) -> list[list[int]]:
    """Every topological order of the DAG (tiny graphs only)."""
    predecessors = [set(p) for p in arrays.predecessors]
    orders: list[list[int]] = []

    def extend(order: list[int], placed: set[int]) -> None:
        if len(order) == arrays.n_nodes:
            orders.append(list(order))
            return
        for v in range(arrays.n_nodes):
            if v not in placed and predecessors[v] <= placed:
                order.append(v)
                placed.add(v)
                extend(order, placed)
                order.pop()
                placed.discard(v)

    extend([], set())
    return orders


def brute_force_makespan(arrays: CostArrays) -> tuple[np.ndarray, float] | None:
    """Exhaustive makespan optimum: every feasible placement x every topological order (<= 7 nodes)."""
    orders = linear_extensions(arrays)
    best: tuple[np.ndarray, float] | None = None
    for choice in itertools.product(*[arrays.allowed_devices(v) for v in range(arrays.n_nodes)]):
        placement = np.array(choice, dtype=np.int64)
        if infeasibility(arrays, placement) is not None:
            continue
        value = min(schedule_makespan_s(arrays, placement, order)[0] for order in orders)
        if best is None or value < best[1]:
            best = (placement, value)
    return best
