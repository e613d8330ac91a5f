"""The compact placement ILP for the `latency` and `throughput` objectives.

Variables: x[v,k] (node v on device k, binary) and y[t,k,l] (tensor t sent from k to l, continuous in
[0, 1]; integral at every optimum once x is). Unlike the textbook form there is no p[t,l] ("t is present
on l") variable and no 3-term linearisation: one covering row per (consumer c, destination l)

    sum_{k != l} y[t,k,l] + x[producer,l] >= x[c,l]        (graph outputs: the sink with right side 1)

says "if c runs on l, t was produced on l or sent there", and y[t,k,l] <= x[producer,k] (only needed when
t could reach l from two or more devices) says "it is sent from where it was produced". With binary x the
cheapest y is exactly 1 per (tensor, destination device != home), so the send-once cost is modelled
exactly. With two devices and no memory limit the LP relaxation is the s-t cut LP (integral), and with
more devices it cuts off fractional points the textbook rows admit. Variables and rows that pins make
trivial are never created (y only where the origin and destination are possible).
"""

from __future__ import annotations

import numpy as np

from partitioner.costs import CostArrays
from partitioner.mip import Mip, MipBuilder
from partitioner.objective import throughput_s, transfers


class PlacementModel:
    """Builds the MIP for one cost graph; maps a solution back to a placement and a placement to a start."""

    def __init__(self, arrays: CostArrays, objective: str) -> None:
        self.arrays = arrays
        self.objective = objective
        n, d = arrays.n_nodes, arrays.n_devices
        allowed = np.ones((n, d), dtype=bool)
        pinned = np.flatnonzero(arrays.pin >= 0)
        allowed[pinned] = False
        allowed[pinned, arrays.pin[pinned]] = True
        self.allowed = allowed
        producer = arrays.producer
        home_allowed = np.zeros((arrays.n_tensors, d), dtype=bool)
        has_producer = producer >= 0
        home_allowed[has_producer] = allowed[producer[has_producer]]
        home_allowed[~has_producer, arrays.source] = True
        dest_possible = np.zeros((arrays.n_tensors, d), dtype=bool)
        np.logical_or.at(dest_possible, arrays.use_tensor, allowed[arrays.use_node])
        dest_possible[arrays.is_output, arrays.sink] = True

        builder = MipBuilder()
        latency = objective == "latency"
        x_cost = np.where(allowed, arrays.time_s, 0.0).ravel() if latency else np.zeros(n * d)
        x_lower = np.zeros((n, d))
        x_lower[pinned, arrays.pin[pinned]] = 1.0
        self.x_cols = builder.add_cols(x_cost, x_lower.ravel(), allowed.ravel().astype(float), integer=True).reshape(n, d)

        exists = home_allowed[:, :, None] & dest_possible[:, None, :] & ~np.eye(d, dtype=bool)[None]
        t_idx, k_idx, l_idx = np.nonzero(exists)
        y_cost = arrays.transfer_s[t_idx, k_idx, l_idx] if latency else np.zeros(t_idx.size)
        y_cols = builder.add_cols(y_cost, 0.0, 1.0, integer=False)
        self.y_index = np.full((arrays.n_tensors, d, d), -1, dtype=np.int64)
        self.y_index[t_idx, k_idx, l_idx] = y_cols
        self.y_keys = (t_idx, k_idx, l_idx)

        # Each node on one device.
        rows = np.repeat(np.arange(n), d)
        builder.add_rows(rows, self.x_cols.ravel(), 1.0, 1.0, 1.0, n)

        # Coverage: consumer c of t on l  =>  t produced on l or sent to l.
        use_rows, dest = np.nonzero(allowed[arrays.use_node])
        tensor = arrays.use_tensor[use_rows]
        consumer = arrays.use_node[use_rows]
        prod = producer[tensor]
        keep = ~((prod < 0) & (dest == arrays.source))
        tensor, consumer, prod, dest = tensor[keep], consumer[keep], prod[keep], dest[keep]
        self._add_coverage_rows(builder, tensor, prod, dest, minus_x=self.x_cols[consumer, dest], rhs=0.0)
        outputs = np.flatnonzero(arrays.is_output)
        outputs = outputs[~((producer[outputs] < 0) & (arrays.source == arrays.sink))]
        self._add_coverage_rows(builder, outputs, producer[outputs], np.full(outputs.size, arrays.sink), minus_x=None, rhs=1.0)

        # Sent from where it was produced (only when more than one origin could serve the destination).
        origins = exists.sum(axis=1)  # (T, d): how many k can send t to l
        needs_link = (origins[t_idx, l_idx] > 1) & (producer[t_idx] >= 0)
        sel = np.flatnonzero(needs_link)
        count = sel.size
        rows = np.repeat(np.arange(count), 2)
        cols = np.column_stack([y_cols[sel], self.x_cols[producer[t_idx[sel]], k_idx[sel]]]).ravel()
        builder.add_rows(rows, cols, np.tile([1.0, -1.0], count), -np.inf, 0.0, count)

        # Memory limits.
        for k in np.flatnonzero(np.isfinite(arrays.memory_limit_bytes)):
            builder.add_rows(np.zeros(n, dtype=np.int64), self.x_cols[:, k], arrays.memory_bytes, -np.inf,
                             arrays.memory_limit_bytes[k], 1)

        if not latency:
            self.z_col = int(builder.add_cols(np.ones(1), 0.0, np.inf, integer=False)[0])
            for k in range(d):  # each device's compute per request
                builder.add_rows(np.zeros(n + 1, dtype=np.int64), np.append(self.x_cols[:, k], self.z_col),
                                 np.append(arrays.time_s[:, k], -1.0), -np.inf, 0.0, 1)
            for k in range(d):  # each directed link's transfers per request
                for l in range(d):
                    on_link = np.flatnonzero((k_idx == k) & (l_idx == l))
                    if on_link.size:
                        builder.add_rows(np.zeros(on_link.size + 1, dtype=np.int64),
                                         np.append(y_cols[on_link], self.z_col),
                                         np.append(arrays.transfer_s[t_idx[on_link], k, l], -1.0), -np.inf, 0.0, 1)
        self.mip: Mip = builder.build()

    def _add_coverage_rows(self, builder: MipBuilder, tensor: np.ndarray, prod: np.ndarray, dest: np.ndarray,
                           minus_x: np.ndarray | None, rhs: float) -> None:
        count = tensor.size
        if count == 0:
            return
        y_of = self.y_index[tensor, :, dest]  # (R, d): every origin k that can send t to dest
        r_y, k_y = np.nonzero(y_of >= 0)
        rows = [r_y]
        cols = [y_of[r_y, k_y]]
        coefs = [np.ones(r_y.size)]
        with_producer = np.flatnonzero(prod >= 0)
        rows.append(with_producer)
        cols.append(self.x_cols[prod[with_producer], dest[with_producer]])
        coefs.append(np.ones(with_producer.size))
        if minus_x is not None:
            rows.append(np.arange(count))
            cols.append(minus_x)
            coefs.append(-np.ones(count))
        builder.add_rows(np.concatenate(rows), np.concatenate(cols), np.concatenate(coefs), rhs, np.inf, count)

    def placement_of(self, values: np.ndarray) -> np.ndarray:
        return values[self.x_cols].argmax(axis=1)

    def start_from(self, placement: np.ndarray) -> np.ndarray:
        """Column values of a feasible placement (the warm start): x one-hot, y = the sends it causes."""
        values = np.zeros(self.mip.cost.size)
        values[self.x_cols[np.arange(self.arrays.n_nodes), placement]] = 1.0
        sends = transfers(self.arrays, placement)
        values[self.y_index[sends.tensor, sends.from_device, sends.to_device]] = 1.0
        if self.objective != "latency":
            values[self.z_col] = throughput_s(self.arrays, placement)
        return values
