"""Exact minimum s-t cut on int64 capacities with scipy's compiled max-flow, which only takes int32.

Why not networkx: its max-flow is pure Python (0.7 s per cut on a 2,000-node, 3-device cost graph,
the bulk of a whole `edgecloud plan`). scipy's `maximum_flow` is compiled but silently wraps capacities
above 2**31 (picosecond capacities reach 1e13), and rounding them to fit would change which cut is
minimal. So the flow is built by capacity scaling, which stays exact:

1. shift every capacity right by k bits so that the whole graph fits in int32, and solve;
2. step down s bits at a time until no shift is left: multiply the flow by 2**s (feasible for the
   capacities shifted s bits less, which are at least 2**s times the previous ones) and add a max flow
   of the residual graph. The previous minimum cut was saturated and each of its edges gained under
   2**s units, so the residual max flow is below edges * 2**s: residual capacities clamped to that
   bound give the same max flow, and fit in int32 (s is chosen so). One or two steps suffice.
The result is a maximum flow of the exact capacities; the source side of a minimum cut is what the
source still reaches in its residual graph.
"""

from __future__ import annotations

import numpy as np

from partitioner.errors import PartitionerError

INFINITE = -1  # capacity of an edge no minimum cut may cross
_INT32_HEADROOM = 2**30  # below int32's 2**31 - 1, so that sums scipy forms cannot overflow


def min_cut_source_side(n_nodes: int, tails: np.ndarray, heads: np.ndarray, capacities: np.ndarray,
                        source: int, sink: int) -> np.ndarray:
    """Bool per node: on the source side of a minimum source-sink cut of the directed graph whose edge
    i goes tails[i] -> heads[i] with int64 capacity capacities[i] >= 0, or INFINITE (parallel edges add
    up). Some cut must be finite; the finite capacities may add up to at most 2**61, and a
    pair of nodes carries at most one infinite edge."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import breadth_first_order, maximum_flow

    tails, heads = np.asarray(tails, dtype=np.int64), np.asarray(heads, dtype=np.int64)
    capacities = np.asarray(capacities, dtype=np.int64)
    infinite = capacities == INFINITE
    finite_total = int(capacities[~infinite].sum(dtype=object)) if capacities.size else 0
    if finite_total >= 2**61:
        raise PartitionerError("the cut's capacities are too large to add up exactly in 64 bits")
    # No finite cut exceeds the sum of all finite capacities: one unit more stands for infinity, and any
    # number of them on one pair still fits.
    capacities = np.where(infinite, finite_total + 1, capacities)
    # Every directed pair in both directions, once each, sorted by key: flows live on these pairs.
    keys = np.concatenate([tails * n_nodes + heads, heads * n_nodes + tails])
    pair_keys, inverse = np.unique(keys, return_inverse=True)
    capacity = np.zeros(pair_keys.size, dtype=np.int64)
    np.add.at(capacity, inverse[: tails.size], capacities)
    np.minimum(capacity, finite_total + 1, out=capacity)
    u, v = pair_keys // n_nodes, pair_keys % n_nodes
    reverse = np.searchsorted(pair_keys, v * n_nodes + u)
    flow = np.zeros(pair_keys.size, dtype=np.int64)  # net flow u -> v; flow[reverse] == -flow

    def augment(residual_cap: np.ndarray) -> np.ndarray:
        graph = csr_matrix((residual_cap.astype(np.int32), (u, v)), shape=(n_nodes, n_nodes))
        result = maximum_flow(graph, source, sink, method="dinic").flow.tocoo()
        added = np.zeros(pair_keys.size, dtype=np.int64)
        added[np.searchsorted(pair_keys, result.row.astype(np.int64) * n_nodes + result.col)] = result.data
        return added

    if source != sink and pair_keys.size:
        shift = max(0, (finite_total + 1).bit_length() - _INT32_HEADROOM.bit_length() + 1)
        flow = augment(capacity >> shift)
        # Per step of `step_bits`, each pair gains under 2**step_bits units: the residual max flow stays
        # below pairs * 2**step_bits, which int32 holds.
        step_bits = max(1, _INT32_HEADROOM.bit_length() - 1 - pair_keys.size.bit_length())
        while shift > 0:
            step = min(step_bits, shift)
            shift -= step
            flow <<= step
            bound = pair_keys.size * ((1 << step) - 1)
            residual = np.clip((capacity >> shift) - flow, 0, bound)
            flow += augment(residual)
    residual = capacity - flow
    assert np.all(residual >= 0) and np.all(flow == -flow[reverse]), "max-flow scaling lost feasibility"
    open_edges = residual > 0
    graph = csr_matrix((np.ones(int(open_edges.sum()), dtype=np.int8), (u[open_edges], v[open_edges])),
                       shape=(n_nodes, n_nodes))
    reached = breadth_first_order(graph, source, directed=True, return_predecessors=False)
    side = np.zeros(n_nodes, dtype=bool)
    side[reached] = True
    return side
