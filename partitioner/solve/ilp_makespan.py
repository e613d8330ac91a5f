"""The `makespan` ILP: one request, independent branches in parallel on different devices.

x[v,k] binary placement, S[v] start times, C the makespan, o[u,v] binary order of two nodes that no
path orders. Duration D[v] = sum_k t[v,k] x[v,k]. Big-M disjunctive rows:
- precedence through tensor t (p -> c): S[c] >= S[p] + D[p], and for every k != l
  S[c] >= S[p] + D[p] + cost(t,k,l) * (x[p,k] + x[c,l] - 1)   (the transfer delay when p on k, c on l);
- graph inputs: S[c] >= cost(t,source,l) x[c,l]; outputs: C >= S[p] + D[p] + cost(t,k,sink) x[p,k];
- C >= S[v] + D[v];
- memory: sum_v mem[v] x[v,k] <= limit[k], as in the placement ILP;
- no overlap on a device, for unordered u, v and each device k both may use:
  S[v] >= S[u] + D[u] - M (1 - o) - M (2 - x[u,k] - x[v,k]),  S[u] >= S[v] + D[v] - M o - M (2 - ...).
M is a horizon no optimal schedule exceeds (all work and all transfers in sequence). Weak relaxation and
O(n^2) order variables: hard at scale, so `partitioner.solve.optimal` passes a time limit and reports the gap.

Times enter the model in microseconds, rounded to the nanosecond. In seconds, a 1 ns duration is a
coefficient of 1e-9: at HiGHS' feasibility tolerance and zero threshold, where its presolve went wrong
(highspy 1.16 proved "optimal" a schedule twice as long as the real optimum). The rounding moves no
reported figure: `partitioner.solve.optimal` recomputes the makespan of the solver's placement and order exactly.
"""

from __future__ import annotations

import heapq

import numpy as np

from partitioner.costs.cost_graph import CostArrays
from partitioner.solve.ilp_placement import add_memory_limits
from partitioner.solve.mip import Mip, MipBuilder

MICROSECONDS = 1e6  # per second


class MakespanModel:
    def __init__(self, arrays: CostArrays) -> None:
        self.arrays = arrays
        n, d = arrays.n_nodes, arrays.n_devices
        allowed = arrays.allowed()
        pinned = np.flatnonzero(arrays.pin >= 0)
        self.time_us = time_us = np.round(arrays.time_s * MICROSECONDS, 3)
        transfer_us = np.round(arrays.transfer_s * MICROSECONDS, 3)
        worst_delay_us = transfer_us.max(axis=(1, 2))
        # Bounds the fully sequential topological-order schedule of any placement, hence the optimum.
        horizon = float(time_us.max(axis=1).sum() + worst_delay_us[arrays.use_tensor].sum()
                        + worst_delay_us[arrays.is_output].sum())
        builder = MipBuilder()
        x_lower = np.zeros((n, d))
        x_lower[pinned, arrays.pin[pinned]] = 1.0
        self.x_cols = builder.add_cols(np.zeros(n * d), x_lower.ravel(), allowed.ravel().astype(float), integer=True).reshape(n, d)
        self.s_cols = builder.add_cols(np.zeros(n), 0.0, horizon, integer=False)
        direct_outputs = arrays.is_output & (arrays.producer < 0)
        c_lower = float(transfer_us[direct_outputs, arrays.source, arrays.sink].max(initial=0.0))
        self.c_col = int(builder.add_cols(np.ones(1), c_lower, horizon, integer=False)[0])
        builder.add_rows(np.repeat(np.arange(n), d), self.x_cols.ravel(), 1.0, 1.0, 1.0, n)
        add_memory_limits(builder, arrays, self.x_cols)

        def duration(v: int) -> tuple[list[int], list[float]]:
            return list(self.x_cols[v]), list(time_us[v])

        def row(cols: list[int], coefs: list[float], lower: float) -> None:
            builder.add_rows(np.zeros(len(cols), dtype=np.int64), np.array(cols), np.array(coefs), lower, np.inf, 1)

        for t, c in zip(arrays.use_tensor, arrays.use_node):
            p = int(arrays.producer[t])
            if p < 0:
                delays = transfer_us[t, arrays.source]
                row([self.s_cols[c], *self.x_cols[c]], [1.0, *(-delays)], 0.0)
                continue
            d_cols, d_coefs = duration(p)
            base_cols = [self.s_cols[c], self.s_cols[p], *d_cols]
            base_coefs = [1.0, -1.0, *(-np.array(d_coefs))]
            row(base_cols, base_coefs, 0.0)
            for k in np.flatnonzero(allowed[p]):
                for l in np.flatnonzero(allowed[c]):
                    delay = float(transfer_us[t, k, l])
                    if k != l and delay > 0:
                        row(base_cols + [self.x_cols[p, k], self.x_cols[c, l]], base_coefs + [-delay, -delay], -delay)
        for v in range(n):
            d_cols, d_coefs = duration(v)
            row([self.c_col, self.s_cols[v], *d_cols], [1.0, -1.0, *(-np.array(d_coefs))], 0.0)
        for t in np.flatnonzero(arrays.is_output):
            p = int(arrays.producer[t])
            if p < 0:
                continue  # in C's lower bound
            d_cols, d_coefs = duration(p)
            delays = transfer_us[t, :, arrays.sink]
            row([self.c_col, self.s_cols[p], *d_cols, *self.x_cols[p]],
                [1.0, -1.0, *(-np.array(d_coefs)), *(-delays)], 0.0)

        reach = _reachability(arrays)
        self.order_pairs: list[tuple[int, int, int]] = []
        for u in range(n):
            for v in range(u + 1, n):
                if reach[u] >> v & 1 or reach[v] >> u & 1:
                    continue
                shared = np.flatnonzero(allowed[u] & allowed[v])
                if shared.size == 0:
                    continue
                o = int(builder.add_cols(np.zeros(1), 0.0, 1.0, integer=True)[0])
                self.order_pairs.append((u, v, o))
                du_cols, du_coefs = duration(u)
                dv_cols, dv_coefs = duration(v)
                for k in shared:
                    # u before v when o = 1
                    row([self.s_cols[v], self.s_cols[u], *du_cols, o, self.x_cols[u, k], self.x_cols[v, k]],
                        [1.0, -1.0, *(-np.array(du_coefs)), -horizon, -horizon, -horizon], -3 * horizon)
                    row([self.s_cols[u], self.s_cols[v], *dv_cols, o, self.x_cols[u, k], self.x_cols[v, k]],
                        [1.0, -1.0, *(-np.array(dv_coefs)), horizon, -horizon, -horizon], -2 * horizon)
        self.mip: Mip = builder.build()

    def placement_of(self, values: np.ndarray) -> np.ndarray:
        return values[self.x_cols].argmax(axis=1)

    def order_of(self, values: np.ndarray) -> list[int]:
        """A topological order following the solver's schedule, for `schedule_makespan_s`.

        Nodes are taken by the midpoints of their intervals, not their starts: a zero-duration node may
        start when its device's next node does, and the solver's start times carry tolerance noise that
        would order such a tie at random. Intervals that do not overlap have midpoints in their order."""
        starts = values[self.s_cols]
        midpoints = starts + 0.5 * (values[self.x_cols] * self.time_us).sum(axis=1)
        successors = self.arrays.successors
        predecessors_left = [len(p) for p in self.arrays.predecessors]
        ready = [(midpoints[v], v) for v in range(self.arrays.n_nodes) if predecessors_left[v] == 0]
        heapq.heapify(ready)
        order: list[int] = []
        while ready:
            _, v = heapq.heappop(ready)
            order.append(v)
            for s in successors[v]:
                predecessors_left[s] -= 1
                if predecessors_left[s] == 0:
                    heapq.heappush(ready, (midpoints[s], s))
        return order

    def start_from(self, placement: np.ndarray, start_s: np.ndarray, makespan_s: float) -> np.ndarray:
        values = np.zeros(self.mip.cost.size)
        values[self.x_cols[np.arange(self.arrays.n_nodes), placement]] = 1.0
        values[self.s_cols] = start_s * MICROSECONDS
        values[self.c_col] = makespan_s * MICROSECONDS
        for u, v, o in self.order_pairs:
            values[o] = 1.0 if start_s[u] <= start_s[v] else 0.0
        return values


def _reachability(arrays: CostArrays) -> list[int]:
    """Bitset of descendants per node (nodes are in topological order)."""
    reach = [0] * arrays.n_nodes
    for v in reversed(range(arrays.n_nodes)):
        for s in arrays.successors[v]:
            reach[v] |= (1 << s) | reach[s]
    return reach
