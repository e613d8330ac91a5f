"""Optimal placement: picks the fastest exact method for the objective and proves optimality.

- latency: the LP relaxation of the marginal formulation (`partitioner.ilp_placement`). If its
  rounded placement costs exactly the LP bound, that placement is optimal (a certificate: no placement
  can beat the relaxation's bound) and no branch and bound runs; else the MIP is solved, warm-started.
  With two devices and no binding memory limit the relaxation is the s-t cut LP, so the certificate
  always holds (it is the exact min-cut, solved by HiGHS' simplex, faster here than networkx' max-flow);
- throughput: the same formulation as a MIP; makespan: `partitioner.ilp_makespan` with a time limit.
Every solution's objective is recomputed from its placement (`partitioner.objective`), never taken
from the solver, so a reported figure always describes the placement that is returned.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import NoReturn

import numpy as np

from partitioner.costs import CostArrays
from partitioner.errors import InfeasiblePlanError, PartitionerError
from partitioner.ilp_makespan import MakespanModel
from partitioner.ilp_placement import PlacementModel
from partitioner.mip import SOLVERS, MipResult, solve_mip
from partitioner.objective import OBJECTIVES, infeasibility, latency_s, schedule_makespan_s, throughput_s

log = logging.getLogger(__name__)

CERTIFICATE_RTOL = 1e-9


@dataclass(frozen=True)
class Solution:
    placement: np.ndarray  # device index per node (CostArrays order)
    objective_s: float
    status: str  # "optimal" or "time_limit" (then gap > 0)
    gap: float
    time_s: float
    method: str  # "lp-certificate" or "mip"
    solver: str  # "highs" or "cbc"
    start_s: np.ndarray | None = None  # makespan schedule


def solve(arrays: CostArrays, objective: str = "latency", solver: str = "highs", time_limit_s: float | None = None,
          warm_start: np.ndarray | None = None) -> Solution:
    """The optimal placement under `objective`; raises InfeasiblePlanError naming the violated constraint."""
    if objective not in OBJECTIVES:
        raise PartitionerError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}.")
    if solver not in SOLVERS:
        raise PartitionerError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}.")
    reason = structural_infeasibility(arrays)
    if reason is not None:
        raise InfeasiblePlanError(reason)
    if warm_start is not None and infeasibility(arrays, warm_start) is not None:
        warm_start = None
    started = time.perf_counter()
    if objective == "makespan":
        return _solve_makespan(arrays, solver, time_limit_s, warm_start, started)
    model = PlacementModel(arrays, objective)
    evaluate = latency_s if objective == "latency" else throughput_s
    if objective == "latency" and solver == "highs":
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
    return _finish(arrays, result, model, evaluate, started)


def _solve_makespan(arrays: CostArrays, solver: str, time_limit_s: float | None, warm_start: np.ndarray | None,
                    started: float) -> Solution:
    model = MakespanModel(arrays)
    start = None
    if warm_start is not None and solver == "highs":
        makespan, start_s = schedule_makespan_s(arrays, warm_start, list(range(arrays.n_nodes)))
        start = model.start_from(warm_start, start_s, makespan)
    result = solve_mip(model.mip, solver, time_limit_s, start)
    if result.values is None:
        _raise_unsolved(arrays, result.status)
    placement = model.placement_of(result.values)
    makespan, start_s = schedule_makespan_s(arrays, placement, model.order_of(result.values))
    return Solution(placement, makespan, result.status, result.gap, time.perf_counter() - started, "mip",
                    result.solver, start_s)


def _finish(arrays: CostArrays, result: MipResult, model: PlacementModel,
            evaluate: Callable[[CostArrays, np.ndarray], float], started: float) -> Solution:
    if result.values is None:
        _raise_unsolved(arrays, result.status)
    placement = model.placement_of(result.values)
    return Solution(placement, evaluate(arrays, placement), result.status, result.gap,
                    time.perf_counter() - started, "mip", result.solver)


def _raise_unsolved(arrays: CostArrays, status: str) -> NoReturn:
    if status == "infeasible":
        limits = ", ".join(f"{arrays.device_names[k]} {arrays.memory_limit_bytes[k]:.0f} B"
                           for k in np.flatnonzero(np.isfinite(arrays.memory_limit_bytes)))
        raise InfeasiblePlanError(f"no placement satisfies the memory limits ({limits}) together with the pins.")
    raise PartitionerError(f"the solver stopped without a placement (status {status}); raise the time limit.")


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
