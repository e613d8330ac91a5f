"""`edgecloud testbed`: every strategy of a plan served for real on the emulated edge and cloud hosts.

The steps are the demo's (edgecloud/cli/demo_steps.py: profile, plan, split, serve, check), run for each
model, bandwidth and strategy: the plan itself and every baseline it reports (all-edge, all-cloud,
neurosurgeon, dads-mincut, brute-force where the graph is small). Strategies whose placements are the
same are one deployment, measured once and reported under each name (`same_as`), so that two names for
one placement cannot differ by noise alone. Each cell records the prediction and the measured median
and 95th percentile of whole requests, as the client sees them (sent to answered).

The emulation (`Emulation`): the link is a veth pair shaped by tbf at each bandwidth (planned at latency
0: this kernel has no netem, edgecloud/testbed/netns.py), the edge agent is held by a CPU quota
calibrated per model to the profile's whole-model time, the cloud agent runs at this host's speed.
Where namespaces or cgroups are not permitted, one warning, and the demo's software emulation.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgecloud.cli.demo_steps import DemoSettings, PlannedModel, model_file, plan_profiled, profile_here, serve_requests
from edgecloud.testbed.cpu_quota import CpuQuota
from edgecloud.testbed.host_commands import TestbedError
from edgecloud.testbed.hosts import EmulatedHosts, Hosts, LocalHosts
from edgecloud.testbed.netns import EmulatedLink, Side, measured_rate_bps
from edgecloud.testbed.slowed_device import calibrated_device
from partitioner.split.onnx_split import cached_split

if TYPE_CHECKING:
    from partitioner.plan.plan_file import Plan

logger = logging.getLogger(__name__)

TESTBED_FORMAT = "edgecloud.testbed/1"
PLAN_STRATEGY = "plan"
# Every cell's agents: the planned path only (a fallback would measure the edge running everything).
AGENT_ARGS = ("--no-fallback",)
RATE_PROBE_S = 0.5  # each bandwidth's shaping is checked by a TCP transfer this long
MIN_RATE_PROBE_BYTES = 64 * 1024


@dataclass(frozen=True)
class TestbedSettings:
    models: tuple[str, ...]
    bandwidths_bps: tuple[float, ...]
    requests: int
    warmup: int
    edge: str
    cloud: str
    edge_threads: int
    broker_side: Side
    deadline_s: float
    seed: int
    emulate: bool = True  # False: the software emulation even where namespaces are permitted


@dataclass
class Cell:
    """One strategy of one model at one bandwidth: predicted and measured latency of a request."""

    model: str
    bandwidth_bps: float
    strategy: str
    predicted_s: float
    measured_median_s: float
    measured_p95_s: float
    requests: int
    same_as: str | None = None  # the strategy whose deployment (same placement) was measured


@dataclass
class Emulation:
    """Where the cells run, and what the JSON's "emulation" records about it."""

    hosts: Hosts
    link: EmulatedLink | None
    quota: CpuQuota | None
    record: dict[str, Any] = field(default_factory=dict)

    def shape(self, bandwidth_bps: float) -> None:
        """Set the link to `bandwidth_bps` both ways and record a measured transfer rate each way."""
        if self.link is None:
            return
        self.link.shape(bandwidth_bps)
        n_bytes = max(MIN_RATE_PROBE_BYTES, int(bandwidth_bps / 8 * RATE_PROBE_S))
        self.record["links"].append({"bandwidth_bps": bandwidth_bps, "probe_bytes": n_bytes,
                                     "measured_up_bps": measured_rate_bps(self.link, n_bytes, upward=True),
                                     "measured_down_bps": measured_rate_bps(self.link, n_bytes, upward=False)})

    def hold_edge(self, model: str, planned: PlannedModel, threads: int, seed: int) -> None:
        """Calibrate the edge's CPU quota so that the whole model takes there what the plan's cost graph
        says it takes on the edge device (the sum of its layers' times)."""
        if self.quota is None:
            return
        predicted_s = sum(node.time_s["edge"] for node in planned.costs.nodes.values())
        calibration = calibrated_device(self.quota, planned.model_path, predicted_s, threads, seed=seed)
        self.record["devices"].append({"model": model, "device": "edge", **calibration.to_dict()})


def emulated_hosts(stack: ExitStack, edge_threads: int, broker_side: Side) -> Emulation:
    """The emulated edge and cloud hosts, removed when `stack` closes; TestbedError where not permitted."""
    link = stack.enter_context(EmulatedLink())
    link.shape(1e6)  # where tc or tbf is refused, it is refused here, not at the first bandwidth
    quota = stack.enter_context(CpuQuota("edge"))
    hosts = stack.enter_context(EmulatedHosts(link, quota, {"edge": edge_threads}, broker_side))
    record = {"kind": "namespaces", "link": "veth pair shaped by tbf both ways", "latency_s": 0.0,
              "latency_note": "no netem in this kernel: no propagation delay, planned at latency 0",
              "broker": f"Mosquitto on the {broker_side} host", "edge_threads": edge_threads,
              "device": "edge agent in a cgroup v1 CPU quota calibrated to the whole-model time "
                        "(mean of back-to-back runs); cloud agent at this host's speed",
              "links": [], "devices": []}
    return Emulation(hosts, link, quota, record)


@contextmanager
def emulation(settings: TestbedSettings, warn: Callable[[str], None]) -> Iterator[Emulation]:
    """The emulated hosts where permitted, else one warning and the agents' software link emulation
    through Mosquitto on this host; everything removed on exit."""
    with ExitStack() as stack:
        found = try_emulated_hosts(stack, settings.edge_threads, settings.broker_side, warn) if settings.emulate else None
        if found is None:
            from edgecloud.transport.broker import MosquittoBroker

            broker = stack.enter_context(MosquittoBroker())
            found = Emulation(LocalHosts(broker.url), None, None,
                              {"kind": "software", "link": "the agents delay each message by the plan's link model",
                               "latency_s": 0.0, "broker": "Mosquitto on this host", "links": [], "devices": []})
        yield found


def try_emulated_hosts(stack: ExitStack, edge_threads: int, broker_side: Side,
                       warn: Callable[[str], None]) -> Emulation | None:
    """`emulated_hosts`, or None after one warning saying why they are not permitted here."""
    own = ExitStack()
    try:
        found = emulated_hosts(own, edge_threads, broker_side)
    except TestbedError as error:
        own.close()
        warn(f"emulated hosts not permitted here ({error}); falling back to the agents' software link "
             "emulation, both agents at this host's speed")
        return None
    stack.enter_context(own)
    return found


def baseline_placements(planned: PlannedModel) -> dict[str, np.ndarray]:
    """The placement of every baseline the plan reports a figure for (infeasible ones have none)."""
    from partitioner.costs.cost_graph import to_arrays
    from partitioner.costs.objective import LATENCY
    from partitioner.solve.baselines import baselines, brute_force_baseline

    arrays = to_arrays(planned.costs)
    found = baselines(arrays, LATENCY)
    exhaustive = brute_force_baseline(arrays, LATENCY)
    return {b.name: b.placement for b in [*found, *([exhaustive] if exhaustive else [])]
            if b.placement is not None and b.name in planned.plan.baselines}


def strategy_plans(planned: PlannedModel) -> dict[str, "Plan"]:
    """The plan and a plan file's worth of placement for each baseline, predicted under latency."""
    from partitioner.costs.cost_graph import to_arrays
    from partitioner.plan.plan_file import build_plan
    from partitioner.solve.optimal import Solution

    arrays = to_arrays(planned.costs)
    plans: dict[str, Plan] = {PLAN_STRATEGY: planned.plan}
    for name, placement in baseline_placements(planned).items():
        solution = Solution(placement=placement, objective_s=float(planned.plan.baselines[name]), status="baseline",
                            gap=0.0, time_s=0.0, method="baseline", solver=name)
        plans[name] = build_plan(planned.costs, arrays, solution, [], "latency")
    return plans


def percentile_s(samples_s: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples_s), q))


def run_model(settings: TestbedSettings, model: str, emulation: Emulation, workdir: Path,
              on_phase: Callable[[str], None], on_cell: Callable[[Cell], None]) -> list[Cell]:
    """Every bandwidth and strategy of one model; the edge calibrated once for the model."""
    model_path = model_file(model)
    on_phase(f"{model}: profiling every node on this host")
    profile = profile_here(model_path, settings.seed)
    cells: list[Cell] = []
    for index, bandwidth_bps in enumerate(settings.bandwidths_bps):
        demo = DemoSettings(model=model, edge=settings.edge, cloud=settings.cloud, bandwidth_bps=bandwidth_bps,
                            latency_s=0.0, requests=settings.requests, broker_url=None,
                            deadline_s=settings.deadline_s, emulate_links=emulation.link is None, seed=settings.seed,
                            warmup=settings.warmup, agent_args=AGENT_ARGS)
        folder = workdir / Path(model).stem / f"{bandwidth_bps:.0f}bps"
        planned = plan_profiled(demo, model_path, profile, folder)
        if index == 0:
            on_phase(f"{model}: calibrating the edge's CPU quota")
            emulation.hold_edge(model, planned, settings.edge_threads, settings.seed)
        on_phase(f"{model}: shaping the link to {bandwidth_bps / 1e6:g} Mbit/s")
        emulation.shape(bandwidth_bps)
        measured: dict[tuple[str, ...], tuple[str, list[float]]] = {}
        for strategy, plan in strategy_plans(planned).items():
            key = tuple(sorted(plan.placement.items()))
            if key not in measured:
                on_phase(f"{model} at {bandwidth_bps / 1e6:g} Mbit/s: serving {strategy}")
                plan_path = folder / strategy / "plan.json"
                plan_path.parent.mkdir(parents=True, exist_ok=True)
                plan.save(plan_path)
                outcomes = serve_requests(demo, plan_path, cached_split(plan_path), hosts=emulation.hosts)
                measured[key] = (strategy, [outcome.timings.total_s for outcome in outcomes])
            first, totals_s = measured[key]
            cell = Cell(model=model, bandwidth_bps=bandwidth_bps, strategy=strategy, predicted_s=plan.predicted_s,
                        measured_median_s=statistics.median(totals_s), measured_p95_s=percentile_s(totals_s, 95),
                        requests=len(totals_s), same_as=None if first == strategy else first)
            cells.append(cell)
            on_cell(cell)
    return cells


def cells_per_model(settings: TestbedSettings) -> int:
    """An upper bound of the cells one model adds, for the progress bar (baselines vary by graph)."""
    return len(settings.bandwidths_bps) * 6


def prediction_errors(cells: Sequence[Cell]) -> list[float]:
    """|measured median / predicted - 1| per cell."""
    return [abs(cell.measured_median_s / cell.predicted_s - 1) for cell in cells if cell.predicted_s > 0]


@dataclass(frozen=True)
class Comparison:
    """The plan against the best baseline (by measured median) in one model-bandwidth cell."""

    model: str
    bandwidth_bps: float
    plan_s: float
    best_baseline: str
    best_baseline_s: float

    @property
    def ratio(self) -> float:
        return self.plan_s / self.best_baseline_s

    @property
    def within(self) -> bool:
        """The plan's measured median within 5 % of the best baseline's, or below it."""
        return self.ratio <= 1.05


def comparisons(cells: Sequence[Cell]) -> list[Comparison]:
    groups: dict[tuple[str, float], list[Cell]] = {}
    for cell in cells:
        groups.setdefault((cell.model, cell.bandwidth_bps), []).append(cell)
    found = []
    for (model, bandwidth_bps), group in groups.items():
        plan = next(cell for cell in group if cell.strategy == PLAN_STRATEGY)
        others = [cell for cell in group if cell.strategy != PLAN_STRATEGY]
        if not others:
            continue
        best = min(others, key=lambda cell: cell.measured_median_s)
        found.append(Comparison(model, bandwidth_bps, plan.measured_median_s, best.strategy, best.measured_median_s))
    return found


def testbed_document(cells: Sequence[Cell], emulation_record: dict[str, Any], settings: TestbedSettings) -> dict[str, Any]:
    """The `edgecloud.testbed/1` JSON: the emulation, the settings, and one entry per cell."""
    errors = prediction_errors(cells)
    summary = {"prediction_error_median": statistics.median(errors) if errors else None,
               "prediction_error_p90": percentile_s(errors, 90) if errors else None,
               "plan_within_5pct_of_best_baseline": [asdict(c) | {"ratio": c.ratio, "within": c.within}
                                                      for c in comparisons(cells)]}
    return {"format": TESTBED_FORMAT, "emulation": emulation_record,
            "settings": {"models": list(settings.models), "bandwidths_bps": list(settings.bandwidths_bps),
                         "requests": settings.requests, "warmup": settings.warmup, "edge": settings.edge,
                         "cloud": settings.cloud, "objective": "latency", "latency_s": 0.0, "seed": settings.seed},
            "cells": [{key: value for key, value in asdict(cell).items() if key != "same_as" or value is not None}
                      for cell in cells],
            "summary": summary}
