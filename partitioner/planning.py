"""One call from a cost graph to a plan: baselines first (they warm-start the solver), then the optimum."""

from __future__ import annotations

import logging

from partitioner.baselines import baselines
from partitioner.costs import CostGraph, to_arrays
from partitioner.ilp import solve
from partitioner.plan import Plan, build_plan

log = logging.getLogger(__name__)


def plan_cost_graph(graph: CostGraph, objective: str = "latency", solver: str = "highs",
                    time_limit_s: float | None = None) -> Plan:
    """The optimal plan of `graph` under `objective`, with every baseline's figure beside it."""
    arrays = to_arrays(graph)
    found = baselines(arrays, objective)
    feasible = [b for b in found if b.placement is not None]
    best = min(feasible, key=lambda b: b.objective_s) if feasible else None
    solution = solve(arrays, objective, solver, time_limit_s, warm_start=best.placement if best else None)
    if best is not None and solution.objective_s > best.objective_s:
        # Only possible when a time limit stopped the solver before it found something better.
        log.warning("solver stopped at %.6g s, above baseline %s (%.6g s)", solution.objective_s, best.name, best.objective_s)
    return build_plan(graph, arrays, solution, found, objective)
