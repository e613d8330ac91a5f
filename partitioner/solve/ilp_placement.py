"""The placement ILP for the `latency` and `throughput` objectives, in a tight (local-marginal) form.

Variables: x[v,k] (node v on device k, binary). For every (tensor t, consumer c) pair with a producer p,
a joint-placement table z[t,c,k,l] >= 0 whose row sums are x[p,k] and column sums x[c,l]; with binary x
it is exactly x[p,k] * x[c,l], so z[t,c,k,l] (k != l) says "t goes from k to l for c". A tensor with one
consumer that is not a graph output pays its transfer on z directly. Any other tensor (several
consumers, or a graph output) gets y[t,k,l] >= z[t,c,k,l] for each consumer, so it pays once per
destination device, not once per consumer: the send-once semantics, exactly. Graph inputs live on the
source: y[t,source,l] >= x[c,l]; outputs reach the sink: y[t,k,sink] >= x[p,k].

Why this form: the textbook linearisation (y >= x + p - 1) has a weak LP relaxation, so the solver
branches a lot; the marginal tables make the relaxation exact on tree-like parts of the graph, and on
DNN-like DAGs the LP optimum is usually integral. `partitioner.solve.optimal` then certifies optimality from the
LP alone (rounded placement's recomputed cost == LP bound) and only falls back to branch and bound when
that certificate fails. Variables that pins rule out are never created.
"""

from __future__ import annotations

import numpy as np

from partitioner.costs.cost_graph import CostArrays
from partitioner.costs.objective import Objective, objective_named, transfers
from partitioner.errors import PartitionerError
from partitioner.solve.mip import Mip, MipBuilder


def add_memory_limits(builder: MipBuilder, arrays: CostArrays, x_cols: np.ndarray) -> None:
    """One row per device with a (binding) limit: the memory of the nodes placed there fits under it."""
    for k in np.flatnonzero(np.isfinite(arrays.memory_limit_bytes)):
        builder.add_rows(np.zeros(arrays.n_nodes, dtype=np.int64), x_cols[:, k], arrays.memory_bytes, -np.inf,
                         arrays.memory_limit_bytes[k], 1)


class PlacementModel:
    """Builds the MIP for one cost graph; maps a solution back to a placement and a placement to a start."""

    def __init__(self, arrays: CostArrays, objective: str | Objective) -> None:
        objective = objective_named(objective)
        if objective.formulation not in ("sum", "bottleneck"):
            raise PartitionerError(f"the placement model solves sums and bottlenecks, not {objective.name!r}.")
        self.arrays = arrays
        self.objective = objective
        n, d = arrays.n_nodes, arrays.n_devices
        latency = objective.formulation == "sum"
        allowed = arrays.allowed()
        pinned = np.flatnonzero(arrays.pin >= 0)
        producer = arrays.producer
        builder = MipBuilder()

        x_lower = np.zeros((n, d))
        x_lower[pinned, arrays.pin[pinned]] = 1.0
        x_cost = arrays.time_s.ravel() if latency else np.zeros(n * d)
        self.x_cols = builder.add_cols(x_cost, x_lower.ravel(), allowed.ravel().astype(float), integer=True).reshape(n, d)
        builder.add_rows(np.repeat(np.arange(n), d), self.x_cols.ravel(), 1.0, 1.0, 1.0, n)

        consumers_per_tensor = np.bincount(arrays.use_tensor, minlength=arrays.n_tensors)
        simple = (consumers_per_tensor == 1) & ~arrays.is_output & (producer >= 0)
        off_diagonal = ~np.eye(d, dtype=bool)

        # Joint tables z for (tensor, consumer) pairs with a producer node.
        with_producer = np.flatnonzero(producer[arrays.use_tensor] >= 0)
        u_tensor = arrays.use_tensor[with_producer]
        u_prod, u_cons = producer[u_tensor], arrays.use_node[with_producer]
        exists = allowed[u_prod][:, :, None] & allowed[u_cons][:, None, :]
        u_idx, k_idx, l_idx = np.nonzero(exists)
        pays = simple[u_tensor[u_idx]] & (k_idx != l_idx)
        z_cost = np.where(pays, arrays.transfer_s[u_tensor[u_idx], k_idx, l_idx], 0.0) if latency else np.zeros(u_idx.size)
        z_cols = builder.add_cols(z_cost, 0.0, 1.0, integer=False)
        self.z_index = np.full(exists.shape, -1, dtype=np.int64)
        self.z_index[u_idx, k_idx, l_idx] = z_cols
        self.z_uses = (u_tensor, u_prod, u_cons)
        for side_node, side_key in ((u_prod, k_idx), (u_cons, l_idx)):
            groups = np.unique(u_idx * d + side_key, return_inverse=True)
            group_keys, group_of = groups[0], groups[1]
            count = group_keys.size
            g_use, g_dev = group_keys // d, group_keys % d
            rows = np.concatenate([group_of, np.arange(count)])
            cols = np.concatenate([z_cols, self.x_cols[side_node[g_use], g_dev]])
            coefs = np.concatenate([np.ones(z_cols.size), -np.ones(count)])
            builder.add_rows(rows, cols, coefs, 0.0, 0.0, count)

        # Send-once variables y for every tensor that is not simple.
        home_allowed = np.zeros((arrays.n_tensors, d), dtype=bool)
        has_producer = producer >= 0
        home_allowed[has_producer] = allowed[producer[has_producer]]
        home_allowed[~has_producer, arrays.source] = True
        dest_possible = np.zeros((arrays.n_tensors, d), dtype=bool)
        np.logical_or.at(dest_possible, arrays.use_tensor, allowed[arrays.use_node])
        dest_possible[arrays.is_output, arrays.sink] = True
        y_exists = home_allowed[:, :, None] & dest_possible[:, None, :] & off_diagonal[None] & ~simple[:, None, None]
        t_idx, yk_idx, yl_idx = np.nonzero(y_exists)
        y_cost = arrays.transfer_s[t_idx, yk_idx, yl_idx] if latency else np.zeros(t_idx.size)
        # A graph input that is also a graph output always travels source -> sink.
        y_lower = (producer[t_idx] < 0) & arrays.is_output[t_idx] & (yl_idx == arrays.sink)
        y_cols = builder.add_cols(y_cost, y_lower.astype(float), 1.0, integer=False)
        self.y_index = np.full((arrays.n_tensors, d, d), -1, dtype=np.int64)
        self.y_index[t_idx, yk_idx, yl_idx] = y_cols

        # y[t,k,l] >= z[t,c,k,l] for tensors with a producer and several consumers or an output.
        link = ~simple[u_tensor[u_idx]] & (k_idx != l_idx)
        self._add_at_least(builder, self.y_index[u_tensor[u_idx[link]], k_idx[link], l_idx[link]], z_cols[link])
        # Graph inputs: y[t,source,l] >= x[c,l].
        from_input = np.flatnonzero(producer[arrays.use_tensor] < 0)
        in_use, in_dev = np.nonzero(allowed[arrays.use_node[from_input]] & (np.arange(d) != arrays.source)[None])
        in_tensor, in_cons = arrays.use_tensor[from_input[in_use]], arrays.use_node[from_input[in_use]]
        self._add_at_least(builder, self.y_index[in_tensor, arrays.source, in_dev], self.x_cols[in_cons, in_dev])
        # Graph outputs: y[t,k,sink] >= x[p,k].
        outputs = np.flatnonzero(arrays.is_output)
        out_node = outputs[producer[outputs] >= 0]
        o_t, o_k = np.nonzero(home_allowed[out_node] & (np.arange(d) != arrays.sink)[None])
        self._add_at_least(builder, self.y_index[out_node[o_t], o_k, arrays.sink], self.x_cols[producer[out_node[o_t]], o_k])

        add_memory_limits(builder, arrays, self.x_cols)

        if not latency:
            self.bottleneck_col = int(builder.add_cols(np.ones(1), 0.0, np.inf, integer=False)[0])
            for k in range(d):  # each device's compute per request
                builder.add_rows(np.zeros(n + 1, dtype=np.int64), np.append(self.x_cols[:, k], self.bottleneck_col),
                                 np.append(arrays.time_s[:, k], -1.0), -np.inf, 0.0, 1)
            pay_z = np.flatnonzero(pays)
            for k in range(d):  # each directed link's transfers per request
                for l in range(d):
                    on_z = pay_z[(k_idx[pay_z] == k) & (l_idx[pay_z] == l)]
                    on_y = np.flatnonzero((yk_idx == k) & (yl_idx == l))
                    cols = np.concatenate([z_cols[on_z], y_cols[on_y], [self.bottleneck_col]])
                    coefs = np.concatenate([arrays.transfer_s[u_tensor[u_idx[on_z]], k, l],
                                            arrays.transfer_s[t_idx[on_y], k, l], [-1.0]])
                    if cols.size > 1:
                        builder.add_rows(np.zeros(cols.size, dtype=np.int64), cols, coefs, -np.inf, 0.0, 1)
        self.mip: Mip = builder.build()

    @staticmethod
    def _add_at_least(builder: MipBuilder, big: np.ndarray, small: np.ndarray) -> None:
        """Rows big[i] - small[i] >= 0."""
        count = big.size
        builder.add_rows(np.repeat(np.arange(count), 2), np.column_stack([big, small]).ravel(),
                         np.tile([1.0, -1.0], count), 0.0, np.inf, count)

    def placement_of(self, values: np.ndarray) -> np.ndarray:
        return values[self.x_cols].argmax(axis=1)

    def start_from(self, placement: np.ndarray) -> np.ndarray:
        """Column values of a feasible placement (a warm start): x one-hot, z its joint tables, y its sends."""
        values = np.zeros(self.mip.cost.size)
        values[self.x_cols[np.arange(self.arrays.n_nodes), placement]] = 1.0
        u_tensor, u_prod, u_cons = self.z_uses
        values[self.z_index[np.arange(u_tensor.size), placement[u_prod], placement[u_cons]]] = 1.0
        sends = transfers(self.arrays, placement)
        ys = self.y_index[sends.tensor, sends.from_device, sends.to_device]
        values[ys[ys >= 0]] = 1.0
        if self.objective.formulation == "bottleneck":
            values[self.bottleneck_col] = self.objective.evaluate(self.arrays, placement)
        return values
