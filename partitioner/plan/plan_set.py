"""The optimal plans over a bandwidth range and the exact bandwidths where the optimum changes
(`edgecloud plan --adaptive`, file format `edgecloud.plans/1`).

Why exact and not a grid: under the latency objective a placement p's predicted time is affine in
x = 1 / bandwidth of the swept link (every crossing tensor of b bytes pays 8 b x + a fixed part), so
L_p(x) = a_p + c_p x, and the optimum over all placements, min_p L_p(x), is concave and piecewise affine.
Its pieces are found by the breakpoint search of parametric optimisation (Eisner and Severance, 1976):
solve at both ends of an interval; if one placement is optimal at both it is optimal throughout (its
line meets the concave optimum at both ends, and a concave function lies on or above its chords); otherwise solve
where the two ends' lines cross: if nothing beats them there, that crossing is a breakpoint, else the
new placement splits the interval in two. Past the two ends, every solve adds a piece or a breakpoint, so
a range with k pieces costs at most 2k ILP solves, and no optimum narrower than a grid step is missed.

Other objectives are not affine in 1/bandwidth (throughput is a max, makespan a schedule), so their
optimum is not concave and this search would not be exact: they are refused.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from devices.json_files import read_json_file, write_json_file
from devices.profiles import LinkKey, link_key
from partitioner.costs.cost_graph import CostArrays, CostGraph, to_arrays
from partitioner.costs.objective import LATENCY, Objective, objective_named
from partitioner.errors import PartitionerError
from partitioner.plan.plan_file import PLAN_FORMAT, Plan, build_plan, plan_from_dict
from partitioner.solve.optimal import Solution, solve

PLANS_FORMAT = "edgecloud.plans/1"
_SHARED = ("model", "model_sha256", "objective", "devices", "source", "sink")  # once, at the top
TIE_RTOL = 1e-9  # a new placement must beat the crossing lines by more than this to split an interval


@dataclass(frozen=True)
class PlanPiece:
    """One placement and the bandwidth interval over which it is optimal."""

    low_bps: float
    high_bps: float
    solution: Solution  # as solved (at some bandwidth inside the interval); placement in CostArrays order
    predicted_s: tuple[float, float]  # at low_bps and at high_bps


@dataclass
class PlanSet:
    graph: CostGraph  # the cost graph at any bandwidth of the swept link (its other links as given)
    link: LinkKey  # the swept link
    pieces: list[PlanPiece]  # sorted by bandwidth, adjacent, covering [low, high]
    solves: int  # ILP solves the search took

    def graph_at(self, bandwidth_bps: float) -> CostGraph:
        return graph_at(self.graph, self.link, bandwidth_bps)

    def piece_at(self, bandwidth_bps: float) -> PlanPiece:
        """The piece whose interval holds this bandwidth (the higher one at a breakpoint)."""
        for piece in reversed(self.pieces):
            if piece.low_bps <= bandwidth_bps:
                return piece
        return self.pieces[0]

    def plan(self, index: int) -> Plan:
        """Piece `index` as an ordinary plan, priced at its interval's low end: what `split` and the
        agents take, so that each piece splits exactly as a plan file would."""
        piece = self.pieces[index]
        graph = self.graph_at(piece.low_bps)
        arrays = to_arrays(graph)
        priced = replace(piece.solution, objective_s=LATENCY.evaluate(arrays, piece.solution.placement))
        return build_plan(graph, arrays, priced, [], LATENCY.name)

    def to_dict(self, relative_to: Path | None = None) -> dict[str, Any]:
        """Each interval is its plan's JSON form (priced at the interval's low end) with the interval and
        the predicted time at both ends; what all intervals share sits once at the top."""
        entries = []
        for index, piece in enumerate(self.pieces):
            plan = self.plan(index).to_dict(relative_to)
            shared = {key: plan.pop(key) for key in _SHARED if key in plan}
            plan.pop("baselines"), plan.pop("format")
            entries.append({"bandwidth_bps": [piece.low_bps, piece.high_bps], **plan,
                            "predicted_s": list(piece.predicted_s)})
        return {"format": PLANS_FORMAT, **shared, "swept_link": list(self.link),
                "bandwidth_bps": [self.pieces[0].low_bps, self.pieces[-1].high_bps], "solves": self.solves,
                "plans": entries}

    def save(self, path: str | Path) -> None:
        path = Path(path)
        write_json_file(path, self.to_dict(relative_to=path.parent), "plan set", error=PartitionerError)


def graph_at(graph: CostGraph, link: LinkKey, bandwidth_bps: float) -> CostGraph:
    """`graph` with the swept link at this bandwidth, everything else about the link kept."""
    return replace(graph, links={**graph.links, link: replace(graph.links[link], bandwidth_bps=float(bandwidth_bps))})


def swept_link(graph: CostGraph, preferred: LinkKey | None = None) -> LinkKey:
    """The link whose bandwidth an adaptive plan sweeps: `preferred` when the graph has it, else its
    only link."""
    if preferred is not None and link_key(*preferred) in graph.links:
        return link_key(*preferred)
    if len(graph.links) == 1:
        return next(iter(graph.links))
    raise PartitionerError(f"an adaptive plan sweeps one link, but the cost graph has {len(graph.links)} and none is "
                           f"{'-'.join(preferred) if preferred else 'named'}.")


@dataclass(frozen=True)
class _Line:
    """L(x) = intercept + slope x, x = 1 / bandwidth: a placement's latency across the range."""

    intercept: float
    slope: float

    def at(self, bandwidth_bps: float) -> float:
        return self.intercept + self.slope / bandwidth_bps


def adaptive_plans(graph: CostGraph, link: LinkKey, low_bps: float, high_bps: float,
                   objective: str | Objective = "latency", solver: str = "highs",
                   time_limit_s: float | None = None) -> PlanSet:
    """The exact piecewise optimum of `graph` for the swept link's bandwidth in [low_bps, high_bps]."""
    if objective_named(objective) is not LATENCY:
        raise PartitionerError("an adaptive plan needs the latency objective: only there is a placement's time affine "
                               "in 1/bandwidth, which makes the breakpoints exact.")
    if not 0 < low_bps < high_bps:
        raise PartitionerError(f"the bandwidth range must go from low to high, got {low_bps:g}..{high_bps:g} bit/s.")
    link = link_key(*link)
    solves = 0
    ends = (to_arrays(graph_at(graph, link, low_bps)), to_arrays(graph_at(graph, link, high_bps)))  # index once

    def solved(bandwidth_bps: float, warm: np.ndarray | None) -> tuple[Solution, _Line]:
        nonlocal solves
        solves += 1
        arrays = ends[0] if bandwidth_bps == low_bps else ends[1] if bandwidth_bps == high_bps else to_arrays(
            graph_at(graph, link, bandwidth_bps))
        solution = solve(arrays, LATENCY, solver, time_limit_s, warm_start=warm)
        return solution, _line(ends, solution.placement, low_bps, high_bps)

    low, low_line = solved(low_bps, None)
    high, high_line = solved(high_bps, low.placement)
    # intervals still to settle, each as (low end, its optimum, high end, its optimum), lowest first
    pending = [(low_bps, low, low_line, high_bps, high, high_line)]
    breakpoints: list[tuple[float, Solution, _Line]] = [(low_bps, low, low_line)]
    while pending:
        a_bps, a, a_line, b_bps, b, b_line = pending.pop()
        crossing_bps = _crossing_bps(a_line, b_line, a_bps, b_bps)
        if np.array_equal(a.placement, b.placement):
            breakpoints.append((b_bps, b, b_line))
            continue
        if crossing_bps is None:
            # The lines meet at most at an end: the one lower inside ties the other at its end, so it is
            # optimal at both ends, hence throughout.
            middle_bps = 2.0 / (1.0 / a_bps + 1.0 / b_bps)
            lower = (a, a_line) if a_line.at(middle_bps) <= b_line.at(middle_bps) else (b, b_line)
            breakpoints.append((b_bps, *lower))
            continue
        middle, middle_line = solved(crossing_bps, a.placement)
        reached = a_line.at(crossing_bps)
        if middle_line.at(crossing_bps) >= reached - TIE_RTOL * abs(reached):
            breakpoints.append((crossing_bps, a, a_line))  # nothing beats the two lines where they cross
            breakpoints.append((b_bps, b, b_line))
            continue
        pending.append((crossing_bps, middle, middle_line, b_bps, b, b_line))  # settled after the lower half
        pending.append((a_bps, a, a_line, crossing_bps, middle, middle_line))
    return PlanSet(graph, link, _pieces(breakpoints), solves)


def _line(ends: tuple[CostArrays, CostArrays], placement: np.ndarray, low_bps: float, high_bps: float) -> _Line:
    """The placement's latency line, read from its latency at the range's two ends (`ends`: the graph
    indexed at low_bps and at high_bps; whatever the link model's fixed parts are, the time is affine
    in 1/bandwidth)."""
    at_low = LATENCY.evaluate(ends[0], placement)
    at_high = LATENCY.evaluate(ends[1], placement)
    slope = (at_low - at_high) / (1.0 / low_bps - 1.0 / high_bps)
    return _Line(at_high - slope / high_bps, slope)


def _crossing_bps(a: _Line, b: _Line, low_bps: float, high_bps: float) -> float | None:
    """Where two lines cross strictly inside (low, high), or None (parallel, or crossing at an end)."""
    if a.slope == b.slope:
        return None
    x = (b.intercept - a.intercept) / (a.slope - b.slope)
    if not 1.0 / high_bps < x < 1.0 / low_bps:
        return None
    crossing = 1.0 / x
    return crossing if low_bps < crossing < high_bps else None


def _pieces(breakpoints: list[tuple[float, Solution, _Line]]) -> list[PlanPiece]:
    """Consecutive breakpoints as pieces; the solution listed at a breakpoint holds from the previous one
    up to it. Neighbours with the same placement are merged."""
    pieces: list[PlanPiece] = []
    for (low_bps, _, _), (high_bps, solution, line) in zip(breakpoints, breakpoints[1:]):
        if pieces and np.array_equal(pieces[-1].solution.placement, solution.placement):
            low_bps = pieces.pop().low_bps
        pieces.append(PlanPiece(low_bps, high_bps, solution, (line.at(low_bps), line.at(high_bps))))
    return pieces


@dataclass(frozen=True)
class PlanInterval:
    """One interval of a plan-set file: its plan (priced at `low_bps`) and its predicted time at both ends."""

    low_bps: float
    high_bps: float
    predicted_s: tuple[float, float]
    plan: Plan


def load_plan_set(path: str | Path) -> list[PlanInterval]:
    """Read a plan-set file, checked: every interval a valid plan, the intervals sorted, adjacent and
    covering the file's range; model paths resolved against the file's folder."""
    path = Path(path)
    data = read_json_file(path, "plan set", expected_format=PLANS_FORMAT, error=PartitionerError,
                          wrong_kind_hint="; make one with `edgecloud plan MODEL --adaptive --bandwidth 1Mbit..1Gbit`")
    try:
        low_bps, high_bps = (float(v) for v in data["bandwidth_bps"])
        shared = {key: data[key] for key in _SHARED if key in data}
        intervals = []
        for index, entry in enumerate(data["plans"]):
            (low, high), (at_low, at_high) = entry["bandwidth_bps"], entry["predicted_s"]
            plan_data = {**entry, **shared, "format": PLAN_FORMAT, "predicted_s": at_low, "baselines": {}}
            plan = plan_from_dict(plan_data, path.parent, f"plan set {path}, interval {index + 1}")
            intervals.append(PlanInterval(float(low), float(high), (float(at_low), float(at_high)), plan))
    except (KeyError, TypeError, ValueError) as error:
        raise PartitionerError(f"plan set {path} is malformed ({type(error).__name__}: {error}).") from None
    edges = [(i.low_bps, i.high_bps) for i in intervals]
    covered = bool(edges) and edges[0][0] == low_bps and edges[-1][1] == high_bps and all(
        lo < hi for lo, hi in edges) and all(a[1] == b[0] for a, b in zip(edges, edges[1:]))
    if not covered:
        raise PartitionerError(f"plan set {path}: its intervals must be sorted, adjacent and cover "
                               f"{low_bps:g}..{high_bps:g} bit/s.")
    return intervals
