"""Optimality properties of every exact method against brute force on random small DAGs.

Each shortcut of `partitioner.solve.optimal` (min-cut for two devices, the LP certificate, the marginal MIP
formulation, dropping non-binding memory limits) has to reproduce the brute-force optimum, and every
reported objective has to equal the one recomputed from the returned placement.
"""

from __future__ import annotations

import math
from pathlib import Path
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cost_graph_strategies import cost_graphs
from devices.profiles import LinkProfile
from partitioner.costs.cost_graph import CostGraph, CostNode, CostTensor, to_arrays
from partitioner.costs.objective import infeasibility, latency_s, schedule_makespan_s, throughput_s
from partitioner.errors import InfeasiblePlanError, PartitionerError
from partitioner.plan.make_plan import plan_cost_graph
from partitioner.solve.baselines import brute_force, brute_force_makespan
from partitioner.solve.ilp_placement import PlacementModel
from partitioner.solve.ilp_textbook import solve_textbook_latency
from partitioner.solve.mincut import min_cut_placement
from partitioner.solve.mip import solve_mip
from partitioner.solve.optimal import solve

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7)  # seconds: 0.1 us


def _check_against_brute_force(graph, objective: str) -> None:
    arrays = to_arrays(graph)
    expected = brute_force(arrays, objective)
    evaluate = latency_s if objective == "latency" else throughput_s
    if expected is None:
        with pytest.raises(InfeasiblePlanError):
            solve(arrays, objective)
        return
    solution = solve(arrays, objective)
    assert infeasibility(arrays, solution.placement) is None
    assert close(solution.objective_s, expected[1]), (solution.method, solution.objective_s, expected[1])
    assert close(evaluate(arrays, solution.placement), solution.objective_s)
    assert solution.status == "optimal"
    # The MIP formulation on its own (no min-cut, no LP certificate) reaches the same optimum.
    model = PlacementModel(arrays, objective)
    result = solve_mip(model.mip)
    assert result.status == "optimal"
    assert close(evaluate(arrays, model.placement_of(result.values)), expected[1])


@FAST
@given(cost_graphs())
def test_latency_optimum_equals_brute_force(graph) -> None:
    _check_against_brute_force(graph, "latency")


@FAST
@given(cost_graphs(), st.data())
def test_latency_optimum_equals_brute_force_wherever_the_broker_sits(graph, data) -> None:
    """Pricing the broker's host (two legs per message, the client's hops there and back) keeps every
    exact method exact, with per-message costs on the links as `edgecloud calibrate` writes them."""
    links = {key: replace(link, message_s=data.draw(st.floats(0.0, 0.005)), broker_s=data.draw(st.floats(0.0, 0.002)),
                          burst_bytes=data.draw(st.sampled_from([0.0, 3000.0, 50_000.0])),
                          overhead_bytes=data.draw(st.sampled_from([0.0, 360.0])))
             for key, link in graph.links.items()}
    graph = replace(graph, links=links, broker=data.draw(st.sampled_from(list(graph.devices))),
                    client_link=LinkProfile(1e9, 0.0, message_s=0.001))
    _check_against_brute_force(graph, "latency")


@FAST
@given(cost_graphs())
def test_throughput_optimum_equals_brute_force(graph) -> None:
    _check_against_brute_force(graph, "throughput")


@FAST
@given(cost_graphs(devices=(2,), memory=False))
def test_two_device_min_cut_equals_ilp_and_brute_force(graph) -> None:
    arrays = to_arrays(graph)
    expected = brute_force(arrays, "latency")
    assert expected is not None  # no memory limits, pins within the two devices
    cut = min_cut_placement(arrays, 0, 1)
    assert close(latency_s(arrays, cut), expected[1])
    model = PlacementModel(arrays, "latency")
    relaxed = solve_mip(replace(model.mip, integer=np.zeros_like(model.mip.integer)))
    # two devices, no memory limit: the LP relaxation is the s-t cut LP, so its bound is the optimum
    assert close(float(relaxed.values @ model.mip.cost), expected[1])


@settings(max_examples=15, deadline=None)
@given(cost_graphs(max_nodes=8))
def test_marginal_formulation_matches_textbook(graph) -> None:
    arrays = to_arrays(graph)
    if brute_force(arrays, "latency") is None:
        return
    textbook = solve_textbook_latency(arrays)
    assert close(solve(arrays).objective_s, latency_s(arrays, textbook.placement))


@settings(max_examples=10, deadline=None)
@given(cost_graphs(max_nodes=7))
def test_cbc_through_pulp_reaches_the_same_optimum(graph) -> None:
    arrays = to_arrays(graph)
    expected = brute_force(arrays, "latency")
    if expected is None:
        return
    assert close(solve(arrays, "latency", solver="cbc").objective_s, expected[1])


def _assert_valid_schedule(arrays, placement: np.ndarray, start_s: np.ndarray, makespan_s: float) -> None:
    """Inputs arrive before a node starts, one node at a time per device, the makespan is the last event."""
    eps = 1e-7
    finish_s = start_s + arrays.time_s[np.arange(arrays.n_nodes), placement]
    events = [finish_s.max(initial=0.0)]
    for t, c in zip(arrays.use_tensor, arrays.use_node):
        p = arrays.producer[t]
        ready = arrays.transfer_s[t, arrays.source, placement[c]] if p < 0 else (
            finish_s[p] + arrays.transfer_s[t, placement[p], placement[c]])
        assert start_s[c] >= ready - eps
    for t in np.flatnonzero(arrays.is_output):
        p = arrays.producer[t]
        events.append(arrays.transfer_s[t, arrays.source, arrays.sink] if p < 0 else
                      finish_s[p] + arrays.transfer_s[t, placement[p], arrays.sink])
    for u in range(arrays.n_nodes):
        for v in range(u + 1, arrays.n_nodes):
            if placement[u] == placement[v]:
                assert finish_s[u] <= start_s[v] + eps or finish_s[v] <= start_s[u] + eps
    assert close(max(events), makespan_s)


@settings(max_examples=25, deadline=None)
@given(cost_graphs(max_nodes=6, memory=False))
def test_makespan_equals_brute_force_when_proven(graph) -> None:
    arrays = to_arrays(graph)
    solution = solve(arrays, "makespan", time_limit_s=30)
    expected = brute_force_makespan(arrays)
    assert expected is not None
    _assert_valid_schedule(arrays, solution.placement, solution.start_s, solution.objective_s)
    assert solution.objective_s >= expected[1] - 1e-7
    if solution.status == "optimal":
        assert close(solution.objective_s, expected[1])


@FAST
@given(cost_graphs(max_nodes=10), st.sampled_from(["latency", "throughput"]))
def test_plan_reports_the_objective_of_its_placement(graph, objective) -> None:
    arrays = to_arrays(graph)
    if brute_force(arrays, objective) is None:
        return
    plan = plan_cost_graph(graph, objective)
    index = {name: k for k, name in enumerate(arrays.device_names)}
    placement = np.array([index[plan.placement[name]] for name in arrays.node_names])
    evaluate = latency_s if objective == "latency" else throughput_s
    assert close(plan.predicted_s, evaluate(arrays, placement))
    if objective == "latency":
        compute = sum(plan.breakdown["compute_s"].values())
        transfer = sum(plan.breakdown["transfer_s"].values())
        assert close(compute + transfer, plan.predicted_s)
    for name, value in plan.baselines.items():
        assert value is None or plan.predicted_s <= value * (1 + 1e-9) + 1e-12, name


def test_a_solver_optimum_within_its_tolerance_never_beats_a_better_warm_start() -> None:
    """Hypothesis found it: throughput on a 1e-9 s graph, HiGHS' "optimal" all-cloud (1e-9 s) was kept
    over the all-edge warm start (0 s) because it is optimal within the solver's absolute gap."""
    link = LinkProfile(bandwidth_bps=1e6, latency_s=0.0)
    nodes = {f"v{k}": CostNode(time_s={"edge": 0.0, "cloud": 1e-9 if k == 0 else 0.0}, memory_bytes=0) for k in range(3)}
    tensors = {"in0": CostTensor(bytes=0, producer=None, consumers=list(nodes)),
               **{f"t{k}": CostTensor(bytes=0, producer=f"v{k}", consumers=[], output=True) for k in range(3)}}
    graph = CostGraph(devices={"edge": {}, "cloud": {}}, links={("cloud", "edge"): link}, source="cloud",
                      sink="cloud", nodes=nodes, tensors=tensors)
    plan = plan_cost_graph(graph, "throughput")
    assert plan.predicted_s <= min(v for v in plan.baselines.values() if v is not None)


@settings(max_examples=25, deadline=None)
@given(cost_graphs(max_nodes=6))
def test_makespan_respects_memory_limits(graph) -> None:
    """The makespan ILP once ignored memory limits and returned placements that break them."""
    arrays = to_arrays(graph)
    expected = brute_force_makespan(arrays)
    if expected is None:
        with pytest.raises(InfeasiblePlanError):
            solve(arrays, "makespan", time_limit_s=30)
        return
    solution = solve(arrays, "makespan", time_limit_s=30)
    assert infeasibility(arrays, solution.placement) is None
    assert solution.objective_s >= expected[1] - 1e-7
    if solution.status == "optimal":
        assert close(solution.objective_s, expected[1])


def test_makespan_names_memory_when_no_placement_fits() -> None:
    """Three 6-byte nodes, two devices of 10 bytes: each node fits, the total fits, no placement does."""
    graph = CostGraph(
        devices={"edge": {"memory_bytes": 10}, "cloud": {"memory_bytes": 10}},
        links={("cloud", "edge"): LinkProfile(2e7, 0.01)}, source="edge", sink="edge",
        nodes={name: CostNode(time_s={"edge": 0.01, "cloud": 0.001}, memory_bytes=6) for name in "abc"},
        tensors={"x": CostTensor(10, None, ["a"], False), "ab": CostTensor(10, "a", ["b"], False),
                 "bc": CostTensor(10, "b", ["c"], False), "y": CostTensor(10, "c", [], True)}).validate()
    for objective in ("latency", "throughput", "makespan"):
        with pytest.raises(InfeasiblePlanError, match="memory limits"):
            plan_cost_graph(graph, objective, time_limit_s=30)


def _thirty_node_graph() -> CostGraph:
    from bench.synthetic_dags import synthetic_cost_graph

    return synthetic_cost_graph(30, 2, seed=0)


def test_a_solver_without_an_answer_keeps_the_best_feasible_placement_known() -> None:
    """HiGHS may end without a usable solution (here: a time limit too short to read the warm start; on
    AlexNet at 100 Mbit/s a 'solve error' after finding the optimum): the plan keeps the best placement
    known, re-scored by our objective, and says what happened instead of advising a longer limit."""
    graph = _thirty_node_graph()
    plan = plan_cost_graph(graph, "makespan", time_limit_s=1e-9)
    assert "no proven optimum" in plan.solver["note"] and plan.solver["gap"] is None
    arrays = to_arrays(graph)
    index = {name: k for k, name in enumerate(arrays.device_names)}
    placement = np.array([index[plan.placement[name]] for name in arrays.node_names])
    assert infeasibility(arrays, placement) is None
    assert plan.predicted_s <= min(value for value in plan.baselines.values() if value is not None) * (1 + 1e-12)
    assert close(plan.predicted_s, schedule_makespan_s(arrays, placement, list(range(arrays.n_nodes)))[0])


def test_a_solver_without_an_answer_and_no_warm_start_says_so_in_one_sentence() -> None:
    arrays = to_arrays(_thirty_node_graph())
    with pytest.raises(PartitionerError, match="no placement within the time limit"):
        solve(arrays, "makespan", time_limit_s=1e-9)


@pytest.mark.slow
def test_makespan_of_alexnet_with_weight_chains_is_solved_not_a_solve_error() -> None:
    """The cost graph of an AlexNet whose weights are built at run time (67 nodes, before constant
    folding), rpi4 + cloud-server at 100 Mbit/s, 10 ms (tests/data; made by `cost_graph_from_model`).
    HiGHS at 1e-9 tolerances reached the warm start's optimum, flagged 7e-9 residuals and ended in
    'solve error' without a solution, so the plan failed whatever the time limit."""
    graph = CostGraph.load(Path(__file__).parent / "data" / "alexnet_weight_chains_100mbit.costgraph.json")
    plan = plan_cost_graph(graph, "makespan", time_limit_s=60)
    assert plan.solver["status"] in ("optimal", "time_limit")
    assert plan.predicted_s <= min(value for value in plan.baselines.values() if value is not None) * (1 + 1e-9)
