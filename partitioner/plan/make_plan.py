"""One call from a cost graph to a plan: baselines first (they warm-start the solver), then the optimum."""

from __future__ import annotations

import logging

import numpy as np

from partitioner.costs.cost_graph import CostGraph, to_arrays
from partitioner.costs.objective import LATENCY, Objective, objective_named
from partitioner.plan.plan_file import Plan, build_plan
from partitioner.solve.baselines import baselines, brute_force_baseline
from partitioner.solve.optimal import solve

log = logging.getLogger(__name__)


def plan_cost_graph(graph: CostGraph, objective: str | Objective = "latency", solver: str = "highs",
                    time_limit_s: float | None = None) -> Plan:
    """The optimal plan of `graph` under `objective`, with every baseline's figure beside it (an unknown
    objective is refused before anything is computed)."""
    objective = objective_named(objective)
    arrays = to_arrays(graph)
    found = baselines(arrays, objective)
    exhaustive = brute_force_baseline(arrays, objective)
    if exhaustive is not None:
        found.append(exhaustive)
    candidates: list[tuple[float, np.ndarray]] = [(b.objective_s, b.placement) for b in found if b.placement is not None]
    if objective is not LATENCY and candidates:
        # Throughput and makespan are solved under a time limit: the latency optimum (one LP, fast) is
        # often a far better incumbent than any baseline, so branch and bound starts from it too.
        # Warm-started by the best baseline for latency, so that even a solver stopped early answers.
        latency_start = min((p for _, p in candidates), key=lambda p: LATENCY.evaluate(arrays, p))
        latency_optimum = solve(arrays, LATENCY, solver, time_limit_s, warm_start=latency_start).placement
        candidates.append((objective.evaluate(arrays, latency_optimum), latency_optimum))
    best_s, best = min(candidates, key=lambda c: c[0]) if candidates else (None, None)
    solution = solve(arrays, objective, solver, time_limit_s, warm_start=best)
    if best_s is not None and solution.objective_s > best_s:
        # Only possible when a time limit stopped the solver before it found something better.
        log.warning("solver stopped at %.6g s, above its warm start (%.6g s)", solution.objective_s, best_s)
    return build_plan(graph, arrays, solution, found, objective.name)
