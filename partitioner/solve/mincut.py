"""DADS' min-cut placement between two devices, with the send-once tensor cost modelled exactly.

Side S of the cut is device `a`, side T device `b`; an edge u->v of capacity w is paid when u is on a
and v on b. Node times are the terminal edges. A tensor with one consumer is a pair of edges between
producer and consumer. A tensor with several consumers would be over-counted that way (DADS' bug on
Inception-style graphs); instead it gets two auxiliary nodes:
- alpha: p->alpha (w_ab) and alpha->c (inf) for each consumer c: any consumer on b pulls alpha to b,
  so w_ab is paid exactly once when p is on a and at least one consumer is on b;
- beta: beta->p (w_ba) and c->beta (inf): w_ba paid once when p is on b and some consumer on a.
A graph output is a consumer fixed on the sink; graph inputs have a producer fixed on the source. Hence
the cut value equals the latency of the placement it induces (tests/test_ilp_properties.py checks
min-cut == ILP == brute force). Memory limits are not expressible: callers use the ILP then.
"""

from __future__ import annotations

import numpy as np

from partitioner.costs.cost_graph import CostArrays
from partitioner.solve.maxflow import INFINITE, min_cut_source_side

SOURCE, SINK = "S", "T"
# Float round-off in capacities picks wrong cut sides (seen with networkx): capacities are integer
# picoseconds, and the max-flow (`partitioner.solve.maxflow`) is exact on them.
TICKS_PER_S = 10**12


def min_cut_placement(arrays: CostArrays, a: int, b: int) -> np.ndarray | None:
    """The latency-optimal placement using only devices a and b (None if a pin forbids it)."""
    pins = arrays.pin[arrays.pin >= 0]
    if np.any((pins != a) & (pins != b)):
        return None
    capacity_ticks: dict[tuple[object, object], int] = {}
    infinite: set[tuple[object, object]] = set()
    # Per node: cost when on a, cost when on b; only their difference becomes a terminal edge (the
    # common part is a constant), which halves the terminal edges and the flow to push.
    on_a_ticks = [0] * arrays.n_nodes
    on_b_ticks = [0] * arrays.n_nodes

    def add(u: object, v: object, capacity_s: float | None) -> None:
        """capacity None = infinite; parallel edges add up."""
        if capacity_s is None:
            infinite.add((u, v))
            return
        capacity = round(capacity_s * TICKS_PER_S)
        if capacity <= 0:
            return
        if u == SOURCE and isinstance(v, int):
            on_b_ticks[v] += capacity
        elif v == SINK and isinstance(u, int):
            on_a_ticks[u] += capacity
        else:
            capacity_ticks[(u, v)] = capacity_ticks.get((u, v), 0) + capacity

    side = {a: SOURCE, b: SINK}
    for v in range(arrays.n_nodes):
        pin = int(arrays.pin[v])
        if pin == a:
            add(SOURCE, v, None)
        elif pin == b:
            add(v, SINK, None)
        add(SOURCE, v, float(arrays.time_s[v, b]))
        add(v, SINK, float(arrays.time_s[v, a]))

    consumers: list[list[object]] = [[] for _ in range(arrays.n_tensors)]
    for t, c in zip(arrays.use_tensor, arrays.use_node):
        consumers[t].append(int(c))
    for t in range(arrays.n_tensors):
        users = consumers[t]
        if arrays.is_output[t]:
            if arrays.sink in side:
                users = users + [side[arrays.sink]]
            elif arrays.producer[t] >= 0:  # a third device as sink: paid from whichever side p is on
                producer = int(arrays.producer[t])
                add(SOURCE, producer, float(arrays.transfer_s[t, b, arrays.sink]))
                add(producer, SINK, float(arrays.transfer_s[t, a, arrays.sink]))
        if not users:
            continue
        producer = int(arrays.producer[t])
        if producer < 0:
            home = arrays.source
            if home in side:  # fixed on one side: only the other direction can be paid
                if home == a:
                    _send_once(add, ("a", t), SOURCE, users, float(arrays.transfer_s[t, a, b]), to_b=True)
                else:
                    _send_once(add, ("b", t), SINK, users, float(arrays.transfer_s[t, b, a]), to_b=False)
            else:  # a third device: paid towards a if some consumer is on a, towards b likewise
                _send_once(add, ("a", t), SOURCE, users, float(arrays.transfer_s[t, home, b]), to_b=True)
                _send_once(add, ("b", t), SINK, users, float(arrays.transfer_s[t, home, a]), to_b=False)
            continue
        _send_once(add, ("a", t), producer, users, float(arrays.transfer_s[t, a, b]), to_b=True)
        _send_once(add, ("b", t), producer, users, float(arrays.transfer_s[t, b, a]), to_b=False)

    for v in range(arrays.n_nodes):
        difference = on_a_ticks[v] - on_b_ticks[v]
        if difference > 0:
            capacity_ticks[(v, SINK)] = capacity_ticks.get((v, SINK), 0) + difference
        elif difference < 0:
            capacity_ticks[(SOURCE, v)] = capacity_ticks.get((SOURCE, v), 0) - difference
    index: dict[object, int] = {SOURCE: 0, SINK: 1, **{v: v + 2 for v in range(arrays.n_nodes)}}
    for end in (end for edge in [*capacity_ticks, *infinite] for end in edge):
        index.setdefault(end, len(index))
    finite = [(u, v, c) for (u, v), c in capacity_ticks.items() if (u, v) not in infinite]
    edges = finite + [(u, v, INFINITE) for u, v in infinite]
    tails = np.array([index[u] for u, _, _ in edges], dtype=np.int64)
    heads = np.array([index[v] for _, v, _ in edges], dtype=np.int64)
    capacities = np.array([c for _, _, c in edges], dtype=np.int64)
    on_source_side = min_cut_source_side(len(index), tails, heads, capacities, index[SOURCE], index[SINK])
    placement = np.where(on_source_side[2:arrays.n_nodes + 2], a, b).astype(np.int64)
    return placement


def _send_once(add, aux: object, origin: object, users: list[object], weight: float, to_b: bool) -> None:
    """Pay `weight` once when `origin` is on one side and any user on the other (see module docstring).

    to_b: paid when origin on a (S side) and a user on b; else when origin on b and a user on a.
    With one user the auxiliary node is unnecessary: a single edge does it."""
    if weight <= 0:
        return
    if len(users) == 1:
        add(*((origin, users[0]) if to_b else (users[0], origin)), weight)
        return
    if to_b:
        add(origin, aux, weight)
        for user in users:
            add(aux, user, None)
    else:
        add(aux, origin, weight)
        for user in users:
            add(user, aux, None)
