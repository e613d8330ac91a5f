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

import contextlib
import logging
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgecloud.cli.demo_steps import (DemoSettings, PlannedModel, RequestOutcome, check_outcomes, demo_scenario, model_file,
                                      open_deployment, profile_here)
from devices.profiles import LinkProfile
from edgecloud.testbed.cpu_quota import CpuQuota
from edgecloud.testbed.host_commands import TestbedError
from edgecloud.testbed.hosts import EmulatedHosts, Hosts, LocalHosts
from edgecloud.testbed.netns import EmulatedLink, Side, measured_rate_bps, tbf_burst_bytes
from edgecloud.testbed.slowed_device import calibrated_device
from partitioner.split.onnx_split import cached_split

if TYPE_CHECKING:
    from devices.profiler import ModelProfile
    from partitioner.costs.cost_graph import CostGraph
    from partitioner.plan.plan_file import Plan

logger = logging.getLogger(__name__)

TESTBED_FORMAT = "edgecloud.testbed/1"
PLAN_STRATEGY = "plan"
# Every cell's agents: the planned path only (a fallback would measure the edge running everything).
AGENT_ARGS = ("--no-fallback",)
RATE_PROBE_S = 0.5  # each bandwidth's shaping is checked by a TCP transfer this long
MIN_RATE_PROBE_BYTES = 64 * 1024
CALIBRATION_RATE_BPS = 10e9  # the link while the message costs are measured: its wire time is small and known
MESSAGE_REPEATS = 100  # round trips at the small size (a quarter of that at the large one)
MIN_REQUESTS = 5  # per strategy and cell, whatever the time budget
AGENT_PROBE_BYTES = 64  # the request and answer of the agent-path calibration (edgecloud.testbed.probe_model)
AGENT_PROBE_WARMUP = 5
PAYLOAD_PER_FRAME = 1448 / 1514  # TCP payload of a full Ethernet frame with TCP timestamps
# What a message carries beyond its tensors, on the wire: our header (~300 bytes for a request with its
# reply topic, budget and trace; edgecloud.transport.wire), the MQTT topic and fixed header.
MESSAGE_OVERHEAD_BYTES = 360
IDLE_REFILLS = 2  # quiet before a request: this many bucket refills (and quota periods)


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
    budget_s: float = 4.0  # per strategy and cell: after MIN_REQUESTS, no more requests once this is spent


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
    load_average_1min: float | None = None  # this machine's, when the cell's requests were done


@dataclass
class Emulation:
    """Where the cells run, what the plans are priced with there, and what the JSON's "emulation"
    records about it.

    What the testbed measures is what it plans with: the per-message costs measured once per run on the
    emulated path (`calibrate_messages`), the link's rate as a TCP transfer measured it at each
    bandwidth (`shape`), the broker's host (`broker_device`), and the edge as its calibration found it
    (`hold_edge`: the edge's times scaled by the measured / predicted ratio its calibration reached, which
    is far from 1 where no quota can slow a run that short). `priced` puts them into a model's cost graph."""

    hosts: Hosts
    link: EmulatedLink | None
    quota: CpuQuota | None
    record: dict[str, Any] = field(default_factory=dict)
    broker_device: str | None = None  # the plan's device whose host runs the broker (None: one host for all)
    message_figures: dict[str, float] = field(default_factory=dict)  # LinkProfile's message_s, broker_s, host_s_per_byte
    rates_bps: dict[float, float] = field(default_factory=dict)  # set bandwidth -> measured rate
    edge_scale: dict[str, float] = field(default_factory=dict)  # model -> measured / predicted edge time
    edge_slowdown: dict[str, float] = field(default_factory=dict)  # model -> the edge's time / this host's, its quota on

    def calibrate_messages(self, repeats: int = MESSAGE_REPEATS) -> None:
        """Measure what a message costs beyond the wire, with our client and an echo where the client
        runs (the edge host) and the broker where it runs, the link fast; the wire time the path spent
        crossing the link (twice when the broker is on the other host) is taken out of the per-byte cost.
        Then a request through real agents (`agent_request_s`): what it takes beyond the echo's two
        messages is what an agent adds per message, and goes into `message_s` (every hop of a request,
        the client's and the devices', ends at an agent or the client)."""
        import os

        from edgecloud.transport.hop_costs import measure_hop_costs

        url = self.hosts.broker_url(ExitStack())  # both placements run their broker already
        crossings = 0
        where: Any = contextlib.nullcontext()
        if self.link is not None:
            self.link.shape(CALIBRATION_RATE_BPS)
            where = self.link.entered("edge")
            crossings = 0 if self.broker_device == "edge" else 2
        load_before = os.getloadavg()[0]
        with where:
            costs = measure_hop_costs(url, repeats=repeats)
        figures = costs.link_figures()
        figures["host_s_per_byte"] = max(0.0, figures["host_s_per_byte"] - crossings * 8 / CALIBRATION_RATE_BPS)
        echo_s = 2 * (figures["message_s"] + figures["broker_s"] + figures["host_s_per_byte"] * AGENT_PROBE_BYTES
                      + 2 * crossings * 8 * AGENT_PROBE_BYTES / CALIBRATION_RATE_BPS)
        request_s = self.agent_request_s(repeats)
        agent_extra_s = max(0.0, (request_s - echo_s) / 2)
        figures["message_s"] += agent_extra_s
        self.message_figures = figures
        self.record["messages"] = {
            **figures, "crossings_during_calibration": crossings, "calibration_rate_bps": CALIBRATION_RATE_BPS if crossings else None,
            "ours": costs.ours_local.to_dict(), "floor": None if costs.floor_local is None else costs.floor_local.to_dict(),
            "agent_request_s": request_s, "echo_request_s": echo_s, "agent_extra_s_per_message": agent_extra_s,
            "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]}}

    def agent_request_s(self, requests: int) -> float:
        """Median request through real agents: a one-node model (edgecloud.testbed.probe_model) of
        AGENT_PROBE_BYTES served all on the edge, the client where the testbed's client runs. Its two
        hops cost what the echo's two messages cost plus what an agent adds (executor hand-off, stage,
        trace, the client's bookkeeping: ~0.3-0.5 ms a message here, which the echo does not pay)."""
        import tempfile

        from edgecloud.testbed.probe_model import write_relu_plan

        settings = DemoSettings(model="relu", edge="edge", cloud="cloud", bandwidth_bps=CALIBRATION_RATE_BPS,
                                latency_s=0.0, requests=requests, broker_url=None, deadline_s=10.0,
                                emulate_links=False, seed=0, warmup=AGENT_PROBE_WARMUP, agent_args=AGENT_ARGS)
        with tempfile.TemporaryDirectory(prefix="edgecloud-agent-hop-") as folder, ExitStack() as stack:
            plan_path = write_relu_plan(AGENT_PROBE_BYTES, Path(folder), device="edge")
            serve = open_deployment(stack, settings, plan_path, cached_split(plan_path), self.hosts)
            for index in range(-AGENT_PROBE_WARMUP, 0):
                check_outcomes([serve(index)])
            outcomes = [serve(index) for index in range(requests)]
            check_outcomes(outcomes)
        return statistics.median(outcome.timings.total_s for outcome in outcomes)

    def shape(self, bandwidth_bps: float) -> None:
        """Set the link to `bandwidth_bps` both ways and record a measured transfer rate each way."""
        if self.link is None:
            return
        self.link.shape(bandwidth_bps)
        n_bytes = max(MIN_RATE_PROBE_BYTES, int(bandwidth_bps / 8 * RATE_PROBE_S))
        up_bps = measured_rate_bps(self.link, n_bytes, upward=True)
        down_bps = measured_rate_bps(self.link, n_bytes, upward=False)
        # The probe's first bucket passed at once: the rate behind it is the rest over the same time.
        self.rates_bps[bandwidth_bps] = (up_bps + down_bps) / 2 * max(0.5, 1 - bucket_payload_bytes(bandwidth_bps) / n_bytes)
        self.record["links"].append({"bandwidth_bps": bandwidth_bps, "probe_bytes": n_bytes,
                                     "measured_up_bps": up_bps, "measured_down_bps": down_bps})

    def hold_edge(self, model: str, costs: "CostGraph", threads: int, seed: int) -> None:
        """Calibrate the edge's CPU quota so that the whole model takes there what the cost graph says
        it takes on the edge device (the sum of its layers' times), and keep the ratio it reached."""
        if self.quota is None:
            return
        predicted_s = sum(node.time_s["edge"] for node in costs.nodes.values())
        calibration = calibrated_device(self.quota, Path(costs.model or ""), predicted_s, threads, seed=seed)
        self.edge_scale[model] = calibration.ratio
        self.edge_slowdown[model] = max(1.0, calibration.measured_s / calibration.attempts[0][1])
        self.record["devices"].append({"model": model, "device": "edge", **calibration.to_dict(),
                                       "planned_edge_time_scale": calibration.ratio,
                                       "planned_message_slowdown": self.edge_slowdown[model]})

    def idle_gap_s(self, bandwidth_bps: float) -> float:
        """Quiet before each measured request, so that it finds the link and the edge idle: twice the
        time tbf takes to refill its bucket at the rate, and two periods of the edge's CPU quota (the
        idle gap its calibration left before each run, edgecloud.testbed.slowed_device)."""
        if self.link is None:
            return 0.0
        refill_s = 8 * tbf_burst_bytes(bandwidth_bps) / bandwidth_bps
        return max(IDLE_REFILLS * refill_s, IDLE_REFILLS * (self.quota.period_s() if self.quota is not None else 0.0))

    def message_figures_for(self, model: str) -> dict[str, float]:
        """The per-message figures with the edge's end of each message at the edge's speed: every hop
        of a request has the edge agent at one end (the client's, and edge <-> cloud), and half of
        `message_s` and `host_s_per_byte` (the two ends' share) runs in its CPU quota, slowed as much as
        the model's run was (resnet18 at 20 Mbit/s measured 1.08x its prediction priced at host speed)."""
        slowdown = self.edge_slowdown.get(model, 1.0)
        ends = {key: self.message_figures[key] * (1 + slowdown) / 2 for key in ("message_s", "host_s_per_byte")
                if key in self.message_figures}
        return {**self.message_figures, **ends}

    def link_at(self, bandwidth_bps: float, model: str | None = None) -> LinkProfile:
        """The edge-cloud link as measured: the rate behind tbf's bucket that a transfer reached, latency
        0, the message costs (the edge's end as `model`'s edge runs it), the bucket and each message's own
        bytes (none without the emulated link)."""
        shaped = {"burst_bytes": bucket_payload_bytes(bandwidth_bps), "overhead_bytes": MESSAGE_OVERHEAD_BYTES} \
            if self.link is not None else {}
        figures = self.message_figures if model is None else self.message_figures_for(model)
        return LinkProfile(self.rates_bps.get(bandwidth_bps, bandwidth_bps), 0.0, **figures, **shaped)

    def priced(self, costs: "CostGraph", bandwidth_bps: float, model: str) -> "CostGraph":
        """`costs` with the link, the client's hops and the broker's host as measured here, and the edge's
        times, and its end of each message, as the calibrated edge runs them."""
        from edgecloud.transport.hop_costs import CLIENT_BANDWIDTH_BPS

        scale = self.edge_scale.get(model, 1.0)
        nodes = {name: replace(node, time_s={**node.time_s, "edge": node.time_s["edge"] * scale})
                 for name, node in costs.nodes.items()}
        client = LinkProfile(CLIENT_BANDWIDTH_BPS, 0.0, **self.message_figures_for(model)) if self.message_figures else None
        return replace(costs, nodes=nodes, links={("edge", "cloud"): self.link_at(bandwidth_bps, model)},
                       client_link=client, broker=self.broker_device).validate()


def bucket_payload_bytes(bandwidth_bps: float) -> float:
    """The TCP payload bytes tbf's bucket at `bandwidth_bps` lets through at once (TCP/IP and Ethernet
    headers take the rest of each frame: 1448 of 1514 bytes)."""
    return tbf_burst_bytes(bandwidth_bps) * PAYLOAD_PER_FRAME


def emulated_hosts(stack: ExitStack, edge_threads: int, broker_side: Side) -> Emulation:
    """The emulated edge and cloud hosts, removed when `stack` closes; TestbedError where not permitted."""
    link = stack.enter_context(EmulatedLink())
    link.shape(1e6)  # where tc or tbf is refused, it is refused here, not at the first bandwidth
    quota = stack.enter_context(CpuQuota("edge"))
    hosts = stack.enter_context(EmulatedHosts(link, quota, {"edge": edge_threads}, broker_side))
    record = {"kind": "namespaces", "link": "veth pair shaped by tbf both ways", "latency_s": 0.0,
              "latency_note": "no netem in this kernel: no propagation delay, planned at latency 0",
              "broker": f"Mosquitto on the {broker_side} host", "edge_threads": edge_threads,
              "device": "edge agent in a cgroup v1 CPU quota (the shortest period the kernel takes) calibrated to "
                        "the whole-model time of one run after an idle gap; planned with the edge's times scaled "
                        "by the ratio it reached; cloud agent at this host's speed",
              "planned_with": "measured link rate, per-message costs measured on the emulated path, the broker's "
                              "host (two legs per message), the client's hops",
              "links": [], "devices": []}
    return Emulation(hosts, link, quota, record, broker_device=broker_side)


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
        found.calibrate_messages()  # once per run, for every model and bandwidth
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


def base_costs(settings: TestbedSettings, model_path: Path, profile: "ModelProfile") -> "CostGraph":
    """The model priced on the edge and cloud profiles (its nodes); `Emulation.priced` sets the rest."""
    from partitioner.costs.from_model import cost_graph_from_model
    from partitioner.graph.layer_graph import load_layer_graph

    scenario = demo_scenario(DemoSettings(model=str(model_path), edge=settings.edge, cloud=settings.cloud,
                                          bandwidth_bps=settings.bandwidths_bps[0], latency_s=0.0, requests=1,
                                          broker_url=None, deadline_s=settings.deadline_s, emulate_links=False,
                                          seed=settings.seed))
    return cost_graph_from_model(load_layer_graph(model_path), scenario, model_path, profile)


def interleaved_totals(serves: dict[str, Callable[[int], RequestOutcome]], requests: int, warmup: int,
                       budget_s: float, idle_s: float = 0.0) -> dict[str, list[float]]:
    """Whole-request seconds per deployment, the deployments taking turns request by request, so that
    the load of a shared machine falls on every strategy alike and their ratios compare. After
    MIN_REQUESTS, a deployment that has spent `budget_s` stops: its requests are long (a slow link), and
    those barely vary (p95 within ~1 % of the median at 1-5 Mbit/s, bench/results/testbed-*).

    Each counted request starts after `idle_s` of quiet (`Emulation.idle_gap_s`): the prediction is a
    request's on an idle deployment, and without the gap a request would find the link's token bucket
    and the edge's CPU quota as the previous strategy's request left them, so one strategy's time would
    depend on which ran before it (bench/tbf_bucket.py: a 4 KB message after idle crosses 1 Mbit/s in
    9.5 ms, 32 ms without its bucket)."""
    for serve in serves.values():
        for index in range(-warmup, 0):
            check_outcomes([serve(index)])
    totals: dict[str, list[float]] = {key: [] for key in serves}
    for index in range(requests):
        for key, serve in serves.items():
            if len(totals[key]) >= MIN_REQUESTS and sum(totals[key]) >= budget_s:
                continue
            if idle_s > 0:
                time.sleep(idle_s)
            outcome = serve(index)
            check_outcomes([outcome])
            totals[key].append(outcome.timings.total_s)
    return totals


def run_model(settings: TestbedSettings, model: str, emulation: Emulation, workdir: Path,
              on_phase: Callable[[str], None], on_cell: Callable[[Cell], None]) -> list[Cell]:
    """Every bandwidth and strategy of one model: the edge calibrated once for the model, each
    placement split and deployed once for all bandwidths (on the emulated link the agents do not depend
    on the bandwidth; with the software emulation they delay by it, so there it is one per bandwidth)."""
    import os

    from partitioner.plan.make_plan import plan_cost_graph

    model_path = model_file(model)
    on_phase(f"{model}: profiling every node on this host")
    profile = profile_here(model_path, settings.seed)
    costs = base_costs(settings, model_path, profile)
    on_phase(f"{model}: calibrating the edge's CPU quota")
    emulation.hold_edge(model, costs, settings.edge_threads, settings.seed)
    cells: list[Cell] = []
    deployments: dict[tuple[Any, ...], tuple[str, Callable[[int], RequestOutcome]]] = {}
    with ExitStack() as stack:
        for bandwidth_bps in settings.bandwidths_bps:
            demo = DemoSettings(model=model, edge=settings.edge, cloud=settings.cloud, bandwidth_bps=bandwidth_bps,
                                latency_s=0.0, requests=settings.requests, broker_url=None,
                                deadline_s=settings.deadline_s, emulate_links=emulation.link is None,
                                seed=settings.seed, warmup=settings.warmup, agent_args=AGENT_ARGS)
            on_phase(f"{model}: shaping the link to {bandwidth_bps / 1e6:g} Mbit/s")
            emulation.shape(bandwidth_bps)
            folder = workdir / Path(model).stem / f"{bandwidth_bps:.0f}bps"
            folder.mkdir(parents=True, exist_ok=True)
            priced = emulation.priced(costs, bandwidth_bps, model)
            plan = plan_cost_graph(priced, "latency")
            plan.save(folder / "plan.json")
            plans = strategy_plans(PlannedModel(model_path, priced, plan, folder / "plan.json"))
            keys: dict[str, tuple[Any, ...]] = {}
            for strategy, strategy_plan in plans.items():
                key = (*sorted(strategy_plan.placement.items()), None if emulation.link is not None else bandwidth_bps)
                keys[strategy] = key
                if key not in deployments:
                    on_phase(f"{model}: deploying {strategy}")
                    plan_path = folder / strategy / "plan.json"
                    plan_path.parent.mkdir(parents=True, exist_ok=True)
                    strategy_plan.save(plan_path)
                    deployments[key] = (strategy, open_deployment(stack, demo, plan_path, cached_split(plan_path),
                                                                  emulation.hosts))
            first = {key: next(s for s, k in keys.items() if k == key) for key in dict.fromkeys(keys.values())}
            on_phase(f"{model} at {bandwidth_bps / 1e6:g} Mbit/s: {len(first)} deployments taking turns")
            totals = interleaved_totals({first[key]: deployments[key][1] for key in first}, settings.requests,
                                        settings.warmup, settings.budget_s, emulation.idle_gap_s(bandwidth_bps))
            load = os.getloadavg()[0]
            for strategy, strategy_plan in plans.items():
                measured_by = first[keys[strategy]]
                totals_s = totals[measured_by]
                cell = Cell(model=model, bandwidth_bps=bandwidth_bps, strategy=strategy,
                            predicted_s=strategy_plan.predicted_s, measured_median_s=statistics.median(totals_s),
                            measured_p95_s=percentile_s(totals_s, 95), requests=len(totals_s),
                            same_as=None if measured_by == strategy else measured_by, load_average_1min=load)
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
                         "requests": settings.requests, "warmup": settings.warmup, "budget_s": settings.budget_s, "edge": settings.edge,
                         "cloud": settings.cloud, "objective": "latency", "latency_s": 0.0, "seed": settings.seed},
            "cells": [{key: value for key, value in asdict(cell).items() if key != "same_as" or value is not None}
                      for cell in cells],
            "summary": summary}
