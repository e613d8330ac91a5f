"""Baselines: Neurosurgeon's cut equals trying every cut, DADS' min-cut is exact with send-once costs,
all-on-one respects pins and memory, brute force agrees with itself across objectives."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, given, settings

from cost_graph_strategies import cost_graphs
from partitioner.solve.baselines import (all_on_one, baselines, brute_force, brute_force_makespan, chain_order,
                                   dads_min_cut, linear_extensions, neurosurgeon)
from partitioner.costs.cost_graph import CostGraph, to_arrays
from partitioner.costs.objective import infeasibility, latency_s, schedule_makespan_s
from test_costs import fan_out_graph

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(cost_graphs(max_nodes=10))
def test_neurosurgeon_is_the_best_feasible_cut_of_the_chain_order(graph) -> None:
    arrays = to_arrays(graph)
    order = chain_order(arrays)
    assert sorted(order.tolist()) == list(range(arrays.n_nodes))
    position = np.argsort(order)
    for t, c in zip(arrays.use_tensor, arrays.use_node):  # a topological order
        assert arrays.producer[t] < 0 or position[arrays.producer[t]] < position[c]
    for b in range(arrays.n_devices):
        if b == arrays.source:
            continue
        cuts = [np.where(position < i, arrays.source, b) for i in range(arrays.n_nodes + 1)]
        feasible = [latency_s(arrays, c) for c in cuts if infeasibility(arrays, c) is None]
        chosen = neurosurgeon(arrays, arrays.source, b)
        if not feasible:
            assert chosen is None
            continue
        assert infeasibility(arrays, chosen) is None
        assert math.isclose(latency_s(arrays, chosen), min(feasible), rel_tol=1e-9, abs_tol=1e-12)


@SETTINGS
@given(cost_graphs(max_nodes=10, devices=(3,), memory=False, pins=False))
def test_dads_min_cut_is_optimal_over_two_of_three_devices(graph) -> None:
    arrays = to_arrays(graph)
    a = arrays.source
    b = (a + 1) % 3
    cut = dads_min_cut(arrays, a, b)
    best = min(latency_s(arrays, np.where(np.array(bits) == 0, a, b)) for bits in np.ndindex(*([2] * arrays.n_nodes)))
    assert math.isclose(latency_s(arrays, cut), best, rel_tol=1e-9, abs_tol=1e-9)


def _weight_chain_graph(layers: int) -> CostGraph:
    """x (1 MB) -> c0 -> ... -> c{n-1} -> output (1 kB activations); each c_i also reads a 4 MB weight
    built by a node w_i that reads no graph input (as old exported models build weights at run time).
    The edge is slow, the cloud fast: the best cut runs c0 on the edge, the rest in the cloud."""
    nodes = {f"c{i}": {"time_s": {"edge": 0.010, "cloud": 0.001}} for i in range(layers)}
    nodes.update({f"w{i}": {"time_s": {"edge": 0.0, "cloud": 0.0}} for i in range(layers)})
    tensors = {"x": {"bytes": 1_000_000, "producer": None, "consumers": ["c0"]}}
    for i in range(layers):
        tensors[f"a{i}"] = {"bytes": 1000, "producer": f"c{i}", "consumers": [f"c{i + 1}"] if i + 1 < layers else [],
                            "output": i + 1 == layers}
        tensors[f"weight{i}"] = {"bytes": 4_000_000, "producer": f"w{i}", "consumers": [f"c{i}"]}
    return CostGraph.from_dict({
        "format": "edgecloud.costgraph/1", "devices": {"edge": {}, "cloud": {}},
        "links": [{"from": "edge", "to": "cloud", "bandwidth_bps": 10e6, "latency_s": 0.001}],
        "source": "edge", "sink": "edge", "nodes": nodes, "tensors": tensors})


def test_neurosurgeon_cuts_the_compute_chain_and_keeps_weights_with_their_layers() -> None:
    """Weight builders listed first used to be cut off from their layers: their 4 MB weights crossed
    the 10 Mbit/s link (3.2 s each) although no single cut of the network needs that."""
    arrays = to_arrays(_weight_chain_graph(6))
    order = [arrays.node_names[v] for v in chain_order(arrays)]
    assert order == [name for i in range(6) for name in (f"w{i}", f"c{i}")]
    chosen = neurosurgeon(arrays, 0, 1)
    assert sorted(arrays.node_names[v] for v in np.flatnonzero(chosen == 0)) == ["c0", "w0"]
    # c0 on the edge (10 ms), five layers in the cloud (5 ms), 1 kB up and 1 kB back
    assert math.isclose(latency_s(arrays, chosen), 0.010 + 0.005 + 2 * (8000 / 10e6 + 0.001))
    assert not any(t.startswith("weight") for t in (arrays.tensor_names[i] for i in _sent(arrays, chosen)))


def _sent(arrays, placement) -> list[int]:
    from partitioner.costs.objective import transfers

    return transfers(arrays, placement).tensor.tolist()


def test_dads_counts_a_multi_consumer_tensor_once() -> None:
    """Per-edge min-cut would pay the 1.5 s tensor three times and keep b, c, d on the edge."""
    arrays = to_arrays(CostGraph.from_dict(fan_out_graph()))
    cut = dads_min_cut(arrays, 0, 1)
    assert math.isclose(latency_s(arrays, cut), brute_force(arrays, "latency")[1])


def test_all_on_one_respects_pins_and_memory() -> None:
    data = fan_out_graph()
    data["nodes"]["a"]["pin"] = "edge"
    arrays = to_arrays(CostGraph.from_dict(data))
    assert all_on_one(arrays, 1) is None
    assert (all_on_one(arrays, 0) == 0).all()
    names = [b.name for b in baselines(arrays, "latency")]
    assert names == ["all-edge", "all-cloud", "neurosurgeon", "dads-mincut"]


def test_brute_force_makespan_runs_branches_in_parallel() -> None:
    """b, c, d each take 1 s anywhere; links are free: two devices finish the three in 2 s, not 3."""
    data = fan_out_graph()
    data["links"][0].update(bandwidth_bps=1e12, latency_s=0.0)
    for name in "bcd":
        data["nodes"][name]["time_s"] = {"edge": 1.0, "cloud": 1.0}
    data["nodes"]["a"]["time_s"] = {"edge": 0.0, "cloud": 0.0}
    arrays = to_arrays(CostGraph.from_dict(data))
    assert len(linear_extensions(arrays)) == 6  # a first, then b, c, d in any order
    placement, makespan = brute_force_makespan(arrays)
    assert math.isclose(makespan, 2.0, rel_tol=1e-9)
    assert math.isclose(schedule_makespan_s(arrays, np.zeros(4, dtype=np.int64), list(range(4)))[0], 3.0)
    assert len(set(placement.tolist())) == 2


def test_small_plans_report_brute_force_beside_the_ilp_and_large_ones_do_not() -> None:
    from bench.synthetic_dags import synthetic_cost_graph
    from partitioner.plan.make_plan import plan_cost_graph

    for objective in ("latency", "throughput"):
        plan = plan_cost_graph(CostGraph.from_dict(fan_out_graph()), objective)
        assert math.isclose(plan.baselines["brute-force"], plan.predicted_s, rel_tol=1e-9)
    assert "brute-force" not in plan_cost_graph(CostGraph.from_dict(fan_out_graph()), "makespan").baselines
    assert "brute-force" not in plan_cost_graph(synthetic_cost_graph(40, 2, seed=1)).baselines
