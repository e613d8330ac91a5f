"""Optimal placement: picks the fastest exact method for the objective and proves optimality.

- latency: the LP relaxation of the marginal formulation (`partitioner.solve.ilp_placement`). If its
  rounded placement costs exactly the LP bound, that placement is optimal (a certificate: no placement
  can beat the relaxation's bound) and no branch and bound runs; else the MIP is solved, warm-started.
  With two devices and no binding memory limit the relaxation is the s-t cut LP, so the certificate
  always holds (it is the exact min-cut, solved by HiGHS' simplex, faster here than networkx' max-flow);
- throughput: the same formulation as a MIP; makespan: `partitioner.solve.ilp_makespan` with a time limit.
Every solution's objective is recomputed from its placement (`partitioner.costs.objective`), never taken
from the solver, so a reported figure always describes the placement that is returned. A solver that
ends without a usable answer (no solution within the time limit, or an error status such as HiGHS'
"solve error" after it had found the optimum) does not lose what is known: the best feasible placement
among its own and the warm start is returned with status, infinite gap and a `note` saying so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import NoReturn

import numpy as np

from partitioner.costs.cost_graph import CostArrays
from partitioner.costs.objective import Objective, infeasibility, objective_named, schedule_makespan_s
from partitioner.errors import InfeasiblePlanError, PartitionerError
from partitioner.solve.ilp_makespan import MakespanModel
from partitioner.solve.ilp_placement import PlacementModel
from partitioner.solve.mip import SOLVERS, MipResult, solve_mip

log = logging.getLogger(__name__)

CERTIFICATE_RTOL = 1e-9


@dataclass(frozen=True)
class Solution:
    placement: np.ndarray  # device index per node (CostArrays order)
    objective_s: float
    status: str  # "optimal" or "time_limit" (then gap > 0)
    gap: float
    time_s: float
    method: str  # "lp-certificate", "mip", or "warm-start" (the solver's answer was unusable or no better)
    solver: str  # "highs" or "cbc"
    start_s: np.ndarray | None = None  # makespan schedule
    note: str | None = None  # what went wrong when the solver did not deliver, in one sentence


def solve(arrays: CostArrays, objective: str | Objective = "latency", solver: str = "highs",
          time_limit_s: float | None = None, warm_start: np.ndarray | None = None) -> Solution:
    """The optimal placement under `objective`; raises InfeasiblePlanError naming the violated constraint."""
    objective = objective_named(objective)
    if solver not in SOLVERS:
        raise PartitionerError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}.")
    reason = structural_infeasibility(arrays)
    if reason is not None:
        raise InfeasiblePlanError(reason)
    if warm_start is not None and infeasibility(arrays, warm_start) is not None:
        warm_start = None
    started = time.perf_counter()
    if objective.formulation == "schedule":
        return _solve_makespan(arrays, solver, time_limit_s, warm_start, started)
    model = PlacementModel(arrays, objective)
    evaluate = objective.evaluate
    if objective.formulation == "sum" and solver == "highs":
        relaxed = solve_mip(replace(model.mip, integer=np.zeros_like(model.mip.integer)), "highs", time_limit_s,
                            presolve=False)
        if relaxed.status == "optimal" and relaxed.values is not None:  # only an optimal LP bounds the MIP
            bound = float(relaxed.values @ model.mip.cost)
            rounded = model.placement_of(relaxed.values)
            if infeasibility(arrays, rounded) is None:
                value = evaluate(arrays, rounded)
                if value <= bound + CERTIFICATE_RTOL * max(abs(bound), 1e-12):
                    return Solution(rounded, value, "optimal", 0.0, time.perf_counter() - started, "lp-certificate", "highs")
                log.info("LP bound %.9g s, rounded placement %.9g s: no certificate, branch and bound", bound, value)
                if warm_start is None or value < evaluate(arrays, warm_start):
                    warm_start = rounded
    start = model.start_from(warm_start) if warm_start is not None and solver == "highs" else None
    result = solve_mip(model.mip, solver, time_limit_s, start)
    return _finish(arrays, result, model, evaluate, warm_start, started)


def _solve_makespan(arrays: CostArrays, solver: str, time_limit_s: float | None, warm_start: np.ndarray | None,
                    started: float) -> Solution:
    model = MakespanModel(arrays)
    fallback = start = None
    if warm_start is not None:
        makespan, start_s = schedule_makespan_s(arrays, warm_start, list(range(arrays.n_nodes)))
        fallback = _Candidate(makespan, warm_start, "warm-start", start_s)
        if solver == "highs":
            start = model.start_from(warm_start, start_s, makespan)
    # Times are microseconds there (see ilp_makespan): HiGHS' default tolerances suit them, where 1e-9
    # made it flag its own optimum's 7e-9 residuals as a solve error.
    result = solve_mip(model.mip, solver, time_limit_s, start, feasibility_tolerance=None)
    own = None
    if result.values is not None:
        placement = model.placement_of(result.values)
        if infeasibility(arrays, placement) is None:
            makespan, start_s = schedule_makespan_s(arrays, placement, model.order_of(result.values))
            own = _Candidate(makespan, placement, "mip", start_s)
    return _settle(arrays, result, own, fallback, started)


def _finish(arrays: CostArrays, result: MipResult, model: PlacementModel,
            evaluate: Callable[[CostArrays, np.ndarray], float], warm_start: np.ndarray | None,
            started: float) -> Solution:
    own = None
    if result.values is not None:
        placement = model.placement_of(result.values)
        if infeasibility(arrays, placement) is None:
            own = _Candidate(evaluate(arrays, placement), placement, "mip")
    fallback = None if warm_start is None else _Candidate(evaluate(arrays, warm_start), warm_start, "warm-start")
    return _settle(arrays, result, own, fallback, started)


@dataclass(frozen=True)
class _Candidate:
    """A feasible placement and its objective recomputed by `partitioner.costs.objective`."""

    objective_s: float
    placement: np.ndarray
    method: str
    start_s: np.ndarray | None = None


def _settle(arrays: CostArrays, result: MipResult, own: _Candidate | None, fallback: _Candidate | None,
            started: float) -> Solution:
    """The solver's placement when it answered (optimal, or the incumbent at the time limit). When it
    ended without a usable answer (an error status, or no solution in the time limit), the best
    feasible placement known, its own or the warm start, re-scored by our objective, with a note saying
    so; raise only when there is none."""
    if own is not None and result.status in ("optimal", "time_limit"):
        # The solver's optimum is optimal within its gap tolerances, so on tiny objectives (1e-9 s) the
        # warm start can still beat it by the tolerance: keep whichever is better by our own objective.
        kept = fallback if fallback is not None and fallback.objective_s < own.objective_s else own
        return Solution(kept.placement, kept.objective_s, result.status, result.gap, time.perf_counter() - started,
                        kept.method, result.solver, kept.start_s)
    candidates = [candidate for candidate in (own, fallback) if candidate is not None]
    if not candidates:
        _raise_unsolved(arrays, result.status)
    best = min(candidates, key=lambda candidate: candidate.objective_s)
    source = "the solver's own" if best.method == "mip" else "the warm start (best baseline)"
    note = (f"{result.solver} ended with status {result.status} and no proven optimum; kept the best feasible "
            f"placement known, {source}, at {best.objective_s:.6g} s, which may not be optimal")
    log.warning("%s", note)
    return Solution(best.placement, best.objective_s, result.status, float("inf"), time.perf_counter() - started,
                    best.method, result.solver, best.start_s, note)


def _raise_unsolved(arrays: CostArrays, status: str) -> NoReturn:
    if status == "infeasible":
        limits = ", ".join(f"{arrays.device_names[k]} {arrays.memory_limit_bytes[k]:.0f} B"
                           for k in np.flatnonzero(np.isfinite(arrays.memory_limit_bytes)))
        raise InfeasiblePlanError(f"no placement satisfies the memory limits ({limits}) together with the pins.")
    if status == "time_limit":
        raise PartitionerError("the solver found no placement within the time limit; raise the time limit.")
    raise PartitionerError(f"the solver stopped without a placement (status {status}); try --solver cbc.")


def structural_infeasibility(arrays: CostArrays) -> str | None:
    """A readable reason the pins and memory limits cannot all hold, found without a solver (or None)."""
    limits = arrays.memory_limit_bytes * (1 + 1e-9)
    pinned = arrays.pin >= 0
    pinned_bytes = np.bincount(arrays.pin[pinned], weights=arrays.memory_bytes[pinned], minlength=arrays.n_devices)
    for k in np.flatnonzero(pinned_bytes > limits):
        return (f"memory limit of device {arrays.device_names[k]!r} ({arrays.memory_limit_bytes[k]:.0f} bytes) is below "
                f"the {pinned_bytes[k]:.0f} bytes of the nodes pinned to it.")
    for v in np.flatnonzero(~pinned):
        if not (arrays.memory_bytes[v] <= limits).any():
            return (f"node {arrays.node_names[v]!r} needs {arrays.memory_bytes[v]:.0f} bytes, more than the memory "
                    f"limit of every device.")
    total = arrays.memory_bytes.sum()
    if np.isfinite(limits).all() and total > limits.sum():
        return (f"the nodes need {total:.0f} bytes in total but the devices' memory limits add up to "
                f"{arrays.memory_limit_bytes.sum():.0f} bytes.")
    return None
