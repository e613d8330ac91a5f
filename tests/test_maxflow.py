"""The scaled compiled max-flow finds cuts exactly as small as networkx's pure-Python one, also where
capacities exceed int32 (where scipy alone silently wraps them)."""

from __future__ import annotations

import networkx as nx
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from partitioner.solve.maxflow import INFINITE, min_cut_source_side


@st.composite
def flow_graphs(draw):  # type: ignore[no-untyped-def]
    n = draw(st.integers(2, 9))
    pairs = [(u, v) for u in range(n) for v in range(n) if u != v]
    chosen = draw(st.lists(st.sampled_from(pairs), min_size=1, max_size=24, unique=True))
    big = draw(st.sampled_from([10, 2**31, 2**45]))
    capacities = [draw(st.integers(0, big)) for _ in chosen]
    infinite = draw(st.lists(st.booleans(), min_size=len(chosen), max_size=len(chosen)))
    # keep one finite cut: no infinite edge into the sink
    capacities = [INFINITE if inf and v != n - 1 else c for (u, v), c, inf in zip(chosen, capacities, infinite)]
    return n, chosen, capacities


def _cut_value(chosen, capacities, side) -> int:
    return sum(c for (u, v), c in zip(chosen, capacities) if side[u] and not side[v])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flow_graphs())
def test_min_cut_equals_networkx_exactly(graph) -> None:
    n, chosen, capacities = graph
    reference = nx.DiGraph()
    reference.add_nodes_from(range(n))
    for (u, v), c in zip(chosen, capacities):
        reference.add_edge(u, v, **({} if c == INFINITE else {"capacity": c}))  # no capacity: infinite
    try:
        expected, _ = nx.minimum_cut(reference, 0, n - 1)
    except nx.NetworkXUnbounded:
        return
    side = min_cut_source_side(n, np.array([u for u, _ in chosen]), np.array([v for _, v in chosen]),
                               np.array(capacities), 0, n - 1)
    assert side[0] and not side[n - 1]
    assert not any(c == INFINITE and side[u] and not side[v] for (u, v), c in zip(chosen, capacities))
    assert _cut_value(chosen, capacities, side) == expected


def test_capacities_beyond_int32_are_not_wrapped() -> None:
    """0 -> 1 -> 2 with 3e12 and 1e12: scipy alone reports a flow of 0 (int32 wrap-around)."""
    side = min_cut_source_side(3, np.array([0, 1]), np.array([1, 2]), np.array([3 * 10**12, 10**12]), 0, 2)
    assert side.tolist() == [True, True, False]
