"""A mixed-integer program as numpy arrays, and the two ways to solve it: HiGHS directly or through PuLP.

The formulations (`ilp_latency`, `ilp_makespan`) build their rows in bulk as coordinate arrays; handing
those to highspy in one `passModel` call avoids PuLP's per-variable Python objects and its model file,
which dominate the textbook solve time. PuLP stays the solver layer for CBC (and for the textbook
formulation kept for comparison in `partitioner.solve.ilp_textbook`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from partitioner.errors import PartitionerError

log = logging.getLogger(__name__)

SOLVERS = ("highs", "cbc")


@dataclass
class MipBuilder:
    """Accumulates columns and rows; `add_rows` takes one block of rows in coordinate form."""

    cost: list[np.ndarray] = field(default_factory=list)
    lower: list[np.ndarray] = field(default_factory=list)
    upper: list[np.ndarray] = field(default_factory=list)
    integer: list[np.ndarray] = field(default_factory=list)
    n_cols: int = 0
    row_of: list[np.ndarray] = field(default_factory=list)
    col_of: list[np.ndarray] = field(default_factory=list)
    coef: list[np.ndarray] = field(default_factory=list)
    row_lower: list[np.ndarray] = field(default_factory=list)
    row_upper: list[np.ndarray] = field(default_factory=list)
    n_rows: int = 0

    def add_cols(self, cost: np.ndarray, lower: np.ndarray | float, upper: np.ndarray | float, integer: bool) -> np.ndarray:
        """Append len(cost) columns; returns their indices."""
        cost = np.asarray(cost, dtype=float)
        count = cost.size
        self.cost.append(cost)
        self.lower.append(np.broadcast_to(np.asarray(lower, dtype=float), count).copy())
        self.upper.append(np.broadcast_to(np.asarray(upper, dtype=float), count).copy())
        self.integer.append(np.full(count, integer))
        first = self.n_cols
        self.n_cols += count
        return np.arange(first, first + count)

    def add_rows(self, row: np.ndarray, col: np.ndarray, coef: np.ndarray, lower: np.ndarray | float,
                 upper: np.ndarray | float, count: int) -> None:
        """`count` rows; entry i puts coef[i] at (first_new_row + row[i], col[i])."""
        if count == 0:
            return
        self.row_of.append(np.asarray(row, dtype=np.int64) + self.n_rows)
        self.col_of.append(np.asarray(col, dtype=np.int64))
        self.coef.append(np.broadcast_to(np.asarray(coef, dtype=float), np.shape(row)).copy())
        self.row_lower.append(np.broadcast_to(np.asarray(lower, dtype=float), count).copy())
        self.row_upper.append(np.broadcast_to(np.asarray(upper, dtype=float), count).copy())
        self.n_rows += count

    def build(self) -> Mip:
        def cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
            return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)

        row, col, coef = cat(self.row_of, np.int64), cat(self.col_of, np.int64), cat(self.coef, float)
        # Sort row-major and add up repeated (row, col) entries: HiGHS rejects duplicates.
        keys, first = np.unique(row * max(self.n_cols, 1) + col, return_index=True)
        order = np.argsort(row * max(self.n_cols, 1) + col, kind="stable")
        coef = np.add.reduceat(coef[order], np.searchsorted((row * max(self.n_cols, 1) + col)[order], keys)) if keys.size else coef
        row, col = row[first], col[first]
        starts = np.searchsorted(row, np.arange(self.n_rows + 1))
        return Mip(cost=cat(self.cost, float), lower=cat(self.lower, float), upper=cat(self.upper, float),
                   integer=cat(self.integer, bool), row_starts=starts, row_cols=col, row_coefs=coef,
                   row_lower=cat(self.row_lower, float), row_upper=cat(self.row_upper, float))


@dataclass(frozen=True)
class Mip:
    """min cost @ x  s.t.  row_lower <= A x <= row_upper (A in CSR), lower <= x <= upper."""

    cost: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    integer: np.ndarray
    row_starts: np.ndarray
    row_cols: np.ndarray
    row_coefs: np.ndarray
    row_lower: np.ndarray
    row_upper: np.ndarray


@dataclass(frozen=True)
class MipResult:
    values: np.ndarray | None  # column values; None when no feasible solution was found
    status: str  # "optimal", "time_limit", "infeasible", ...
    gap: float
    time_s: float
    solver: str


TIGHT_FEASIBILITY_TOLERANCE = 1e-9


def solve_mip(mip: Mip, solver: str = "highs", time_limit_s: float | None = None,
              warm_start: np.ndarray | None = None, mip_rel_gap: float = 1e-9, presolve: bool = True,
              feasibility_tolerance: float | None = TIGHT_FEASIBILITY_TOLERANCE) -> MipResult:
    """Solve `mip` with HiGHS (highspy, direct) or CBC (through PuLP).

    presolve=False suits the placement LP relaxation: HiGHS' presolve costs 5x the simplex there.
    `feasibility_tolerance` (HiGHS): tight for the placement models, whose costs are seconds and often
    microseconds small; None keeps HiGHS' defaults, for models whose units are scaled to suit them (a
    tolerance far below the coefficients' round-off makes HiGHS reject its own optimum as a solve error)."""
    if solver == "highs":
        return _solve_highs(mip, time_limit_s, warm_start, mip_rel_gap, presolve, feasibility_tolerance)
    if solver == "cbc":
        return _solve_cbc(mip, time_limit_s, mip_rel_gap)
    raise PartitionerError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}.")


def _solve_highs(mip: Mip, time_limit_s: float | None, warm_start: np.ndarray | None, mip_rel_gap: float,
                 presolve: bool, feasibility_tolerance: float | None) -> MipResult:
    import highspy

    started = time.perf_counter()
    with _stdout_silenced():  # HiGHS prints its banner from C++ on construction, before any option applies
        highs = highspy.Highs()
    highs.setOptionValue("output_flag", False)
    highs.setOptionValue("mip_rel_gap", mip_rel_gap)
    if not presolve:
        highs.setOptionValue("presolve", "off")
    highs.setOptionValue("mip_abs_gap", 1e-12)
    if feasibility_tolerance is not None:
        # Costs are seconds, often microseconds small: the default 1e-6/1e-7 tolerances would blur them.
        for option in ("mip_feasibility_tolerance", "primal_feasibility_tolerance", "dual_feasibility_tolerance"):
            highs.setOptionValue(option, feasibility_tolerance)
    if time_limit_s is not None:
        highs.setOptionValue("time_limit", float(time_limit_s))
    lp = highspy.HighsLp()
    lp.num_col_ = int(mip.cost.size)
    lp.num_row_ = int(mip.row_lower.size)
    # HiGHS' tolerances are absolute: dividing the costs by the largest makes them act relative to it,
    # so that a node of 5e-11 s is not mistaken for a free one. Only column values are read back.
    largest_cost = float(np.abs(mip.cost).max()) if mip.cost.size else 0.0
    lp.col_cost_ = mip.cost / largest_cost if largest_cost > 0 else mip.cost
    lp.col_lower_ = mip.lower
    lp.col_upper_ = mip.upper
    lp.row_lower_ = mip.row_lower
    lp.row_upper_ = mip.row_upper
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.start_ = mip.row_starts.astype(np.int32)
    lp.a_matrix_.index_ = mip.row_cols.astype(np.int32)
    lp.a_matrix_.value_ = mip.row_coefs
    lp.a_matrix_.num_col_ = lp.num_col_
    lp.a_matrix_.num_row_ = lp.num_row_
    lp.integrality_ = [highspy.HighsVarType.kInteger if flag else highspy.HighsVarType.kContinuous for flag in mip.integer]
    if highs.passModel(lp) == highspy.HighsStatus.kError:
        raise PartitionerError("the solver rejected the model (an internal formulation error).")
    if warm_start is not None:
        highs.setSolution(int(warm_start.size), np.arange(warm_start.size, dtype=np.int32), warm_start.astype(float))
    highs.run()
    status = highs.getModelStatus()
    info = highs.getInfo()
    elapsed = time.perf_counter() - started
    log.debug("HiGHS: %d columns, %d rows, status %s, %.3f s", lp.num_col_, lp.num_row_,
              highs.modelStatusToString(status), elapsed)
    has_solution = info.primal_solution_status == highspy.kSolutionStatusFeasible
    values = np.asarray(highs.getSolution().col_value) if has_solution else None
    names = {highspy.HighsModelStatus.kOptimal: "optimal", highspy.HighsModelStatus.kInfeasible: "infeasible",
             # every placement model is bounded, so this presolve verdict means infeasible
             highspy.HighsModelStatus.kUnboundedOrInfeasible: "infeasible",
             highspy.HighsModelStatus.kTimeLimit: "time_limit"}
    gap = float(info.mip_gap) if mip.integer.any() else 0.0
    return MipResult(values, names.get(status, highs.modelStatusToString(status).lower().replace(" ", "_")),
                     gap if np.isfinite(gap) else float("inf"), elapsed, "highs")


@contextlib.contextmanager
def _stdout_silenced() -> Iterator[None]:
    """Point file descriptor 1 at /dev/null (C-level output too), so `--json` output stays pure JSON."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _solve_cbc(mip: Mip, time_limit_s: float | None, mip_rel_gap: float) -> MipResult:
    import pulp

    started = time.perf_counter()
    problem = pulp.LpProblem("placement", pulp.LpMinimize)
    cols = [
        problem.add_variable(f"c{i}", lowBound=float(mip.lower[i]), upBound=float(mip.upper[i]),
                             cat=pulp.LpInteger if mip.integer[i] else pulp.LpContinuous)
        for i in range(mip.cost.size)
    ]
    problem += pulp.lpSum(c * cols[i] for i, c in enumerate(mip.cost) if c)
    for r in range(mip.row_lower.size):
        span = slice(mip.row_starts[r], mip.row_starts[r + 1])
        expression = pulp.LpAffineExpression(
            [(cols[c], float(a)) for c, a in zip(mip.row_cols[span], mip.row_coefs[span])])
        low, high = mip.row_lower[r], mip.row_upper[r]
        if low == high:
            problem += expression == low
        else:
            if np.isfinite(low):
                problem += expression >= low
            if np.isfinite(high):
                problem += expression <= high
    with warnings.catch_warnings():  # PuLP 3.3 flags its bundled CBC as deprecated; it is the one installed
        warnings.simplefilter("ignore", DeprecationWarning)
        backend = pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit_s, gapRel=mip_rel_gap)
    problem.solve(backend)
    elapsed = time.perf_counter() - started
    status = pulp.LpStatus[problem.status].lower()
    solved = problem.sol_status in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible)
    values = np.array([c.varValue or 0.0 for c in cols]) if solved else None
    proven = problem.sol_status == pulp.LpSolutionOptimal
    return MipResult(values, "optimal" if proven else ("infeasible" if status == "infeasible" else "time_limit"),
                     0.0 if proven else float("inf"), elapsed, "cbc")
