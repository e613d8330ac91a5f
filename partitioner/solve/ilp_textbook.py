"""The textbook placement ILP of docs/architecture.md §3, built with PuLP: the reference `ilp_placement`
is benchmarked and tested against (same optimum, see tests/test_ilp_properties.py, bench/solve_time.py).

x[v,k] node v on k; p[t,k] tensor t present on k; y[t,k,l] t sent from k to l, all binary;
p[t,k] >= x[c,k] per consumer c; y[t,k,l] >= x[prod,k] + p[t,l] - 1 - x[prod,l]; latency objective.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np

from partitioner.costs.cost_graph import CostArrays
from partitioner.errors import PartitionerError
from partitioner.solve.mip import SOLVERS


@dataclass(frozen=True)
class TextbookResult:
    placement: np.ndarray
    objective_s: float
    status: str
    time_s: float  # model building + solve, as a PuLP user experiences it


def solve_textbook_latency(arrays: CostArrays, solver: str = "highs", time_limit_s: float | None = None) -> TextbookResult:
    import pulp

    if solver not in SOLVERS:
        raise PartitionerError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}.")
    started = time.perf_counter()
    n, d, n_tensors = arrays.n_nodes, arrays.n_devices, arrays.n_tensors
    problem = pulp.LpProblem("textbook", pulp.LpMinimize)
    x = [[problem.add_variable(f"x_{v}_{k}", 0, 1, pulp.LpBinary) for k in range(d)] for v in range(n)]
    p = [[problem.add_variable(f"p_{t}_{k}", 0, 1, pulp.LpBinary) for k in range(d)] for t in range(n_tensors)]
    y = {(t, k, l): problem.add_variable(f"y_{t}_{k}_{l}", 0, 1, pulp.LpBinary)
         for t in range(n_tensors) for k in range(d) for l in range(d) if k != l}

    def on(t: int, k: int) -> pulp.LpAffineExpression | float:
        producer = int(arrays.producer[t])
        return x[producer][k] if producer >= 0 else float(k == arrays.source)

    problem += (pulp.lpSum(float(arrays.time_s[v, k]) * x[v][k] for v in range(n) for k in range(d))
                + pulp.lpSum(float(arrays.transfer_s[t, k, l]) * var for (t, k, l), var in y.items()))
    for v in range(n):
        problem += pulp.lpSum(x[v]) == 1
        if arrays.pin[v] >= 0:
            problem += x[v][int(arrays.pin[v])] == 1
    for t, c in zip(arrays.use_tensor, arrays.use_node):
        for k in range(d):
            problem += p[t][k] >= x[c][k]
    for t in np.flatnonzero(arrays.is_output):
        problem += p[t][arrays.sink] == 1
    for (t, k, l), var in y.items():
        problem += var >= on(t, k) + p[t][l] - 1 - on(t, l)
    for k in range(d):
        if np.isfinite(arrays.memory_limit_bytes[k]):
            problem += pulp.lpSum(float(arrays.memory_bytes[v]) * x[v][k] for v in range(n)) <= float(arrays.memory_limit_bytes[k])
    with warnings.catch_warnings():  # PuLP 3.3 flags its bundled CBC as deprecated; it is the one installed
        warnings.simplefilter("ignore", DeprecationWarning)
        backend = (pulp.HiGHS(msg=False, timeLimit=time_limit_s) if solver == "highs"
                   else pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit_s))
    problem.solve(backend)
    elapsed = time.perf_counter() - started
    placement = np.array([max(range(d), key=lambda k: x[v][k].varValue or 0.0) for v in range(n)], dtype=np.int64)
    value = float(pulp.value(problem.objective)) + arrays.fixed_s  # the client's hops: a constant, outside the model
    return TextbookResult(placement, value, pulp.LpStatus[problem.status].lower(), elapsed)
