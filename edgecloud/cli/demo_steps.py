"""The whole job on one machine: export, profile, plan, split, serve over MQTT, check, compare.

`edgecloud demo` (edgecloud/cli/demo.py) drives these steps and prints their results; they live here,
apart from the printing, so that each can be tested and reused. The agents run as separate processes
(`edgecloud agent`), the broker is the embedded one (a child process) unless a URL is given, and every
process started is stopped again, also when the demo is interrupted.

Predicted vs measured: the plan predicts for the chosen edge and cloud profiles. On one host (no
emulation permitted) both agents run at this host's speed, so compute times differ by the host's speed
relative to those devices, and the link is emulated in the agents at the plan's bandwidth and latency
(`edgecloud.serving.link_emulation`). On the emulated hosts (`edgecloud.testbed.hosts`) the link is a
shaped veth pair and the edge agent is held to its profile's speed by a calibrated CPU quota; `edgecloud
testbed` serves every strategy of a plan that way.
"""

from __future__ import annotations

import logging
import statistics
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from devices.sessions import make_session
from edgecloud.errors import EdgecloudError
from edgecloud.serving.client import InferenceClient, RequestTimings
from edgecloud.serving.trace import CLIENT
from edgecloud.testbed.hosts import Hosts, LocalHosts
from partitioner.costs.cost_graph import CostGraph, client_hops_s
from partitioner.plan.plan_file import Plan
from partitioner.split.manifest import SplitManifest, concrete_shape

if TYPE_CHECKING:
    from devices.profiler import ModelProfile
    from partitioner.costs.scenario import Scenario

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoSettings:
    """What to demonstrate; the defaults live in one place, the `edgecloud demo` command's options."""

    model: str
    edge: str
    cloud: str
    bandwidth_bps: float
    latency_s: float
    requests: int
    broker_url: str | None  # None: start the embedded broker
    deadline_s: float
    emulate_links: bool
    seed: int
    warmup: int = 0  # requests sent and checked first, not counted
    agent_args: tuple[str, ...] = ()  # more options for every agent




@dataclass
class RequestOutcome:
    index: int
    timings: RequestTimings
    fell_back: bool
    max_abs_error: float
    unsplit_s: float  # the same input through the whole model in this process, for scale


@dataclass
class StepRow:
    """One line of the per-stage or per-transfer table: the plan's figure beside the median measured."""

    label: str
    device: str
    bytes: int
    predicted_s: float
    measured_s: list[float] = field(default_factory=list)

    @property
    def measured_median_s(self) -> float | None:
        return statistics.median(self.measured_s) if self.measured_s else None


@dataclass
class PlannedModel:
    """What the first half of the demo produces: the model, its profile on this host, the cost graph
    the plan was solved on, and the plan (saved as `plan_path`)."""

    model_path: Path
    costs: CostGraph
    plan: Plan
    plan_path: Path


def model_file(model: str) -> Path:
    """A bundled model's name (exported once, cached) or an ONNX file's path."""
    from partitioner.errors import PartitionerError
    from partitioner.models.zoo import MODEL_NAMES, cached_model_path

    if model in MODEL_NAMES and not Path(model).exists():
        return cached_model_path(model)
    if not Path(model).is_file():
        raise PartitionerError(f"{model!r} is neither a bundled model ({', '.join(MODEL_NAMES)}) nor an ONNX file.")
    return Path(model).resolve()


def profile_here(model_path: Path, seed: int) -> "ModelProfile":
    """Every node's time measured on this host with onnxruntime (one thread)."""
    from devices.host import host_profile
    from edgecloud.calibration import profile_file

    return profile_file(model_path, host_profile(), [1], warmup=2, repeats=10, seed=seed)


def plan_profiled(settings: DemoSettings, model_path: Path, profile: "ModelProfile", workdir: Path) -> PlannedModel:
    """Price the profiled model on the edge and cloud profiles (measured times carried across devices by
    the predictor) at the settings' link, and solve the plan beside its baselines (saved in `workdir`)."""
    from partitioner.costs.from_model import cost_graph_from_model
    from partitioner.graph.layer_graph import load_layer_graph
    from partitioner.plan.make_plan import plan_cost_graph

    costs = cost_graph_from_model(load_layer_graph(model_path), demo_scenario(settings), model_path, profile)
    plan = plan_cost_graph(costs, "latency")
    workdir.mkdir(parents=True, exist_ok=True)
    plan_path = workdir / "plan.json"
    plan.save(plan_path)
    return PlannedModel(model_path, costs, plan, plan_path)


def demo_scenario(settings: DemoSettings) -> "Scenario":
    """The edge and cloud profiles joined by the settings' link, the edge the source (checked)."""
    from devices.lookup import load_device
    from devices.profiles import LinkProfile
    from partitioner.costs.scenario import Scenario

    return Scenario.of_profiles(
        {"edge": load_device(settings.edge), "cloud": load_device(settings.cloud)},
        {("edge", "cloud"): LinkProfile(settings.bandwidth_bps, settings.latency_s)}, source="edge").validate()


def plan_demo_model(settings: DemoSettings, workdir: Path,
                    on_phase: Callable[[str], None] = lambda _: None) -> PlannedModel:
    """Export the model, profile it here, price it on the edge and cloud profiles and solve the plan."""
    demo_scenario(settings)  # a typo fails first
    on_phase(f"exporting {settings.model} to ONNX (cached after the first time)")
    model_path = model_file(settings.model)
    on_phase("measuring this host and profiling every node with onnxruntime")
    profile = profile_here(model_path, settings.seed)
    on_phase(f"planning for edge={settings.edge}, cloud={settings.cloud}")
    return plan_profiled(settings, model_path, profile, workdir)


def model_inputs(manifest: SplitManifest, seed: int) -> dict[str, np.ndarray]:
    """Random inputs of the model's input types (symbolic dimensions taken as 1)."""
    rng = np.random.default_rng(seed)
    return {spec.name: rng.standard_normal(concrete_shape(spec.shape))
            .astype(spec.dtype) for spec in manifest.graph_inputs}


def predicted_stage_s(manifest: SplitManifest, costs: CostGraph) -> dict[int, float]:
    """Each stage's compute time as the plan's cost graph predicts it on the stage's device.

    Cost-graph nodes may be fused layers: a layer's time counts for the stage holding its first member
    (a fused chain lies on one device and, being a chain, in one stage)."""
    stage_of_node = {node: stage for stage in manifest.stages for node in stage.nodes}
    predicted: dict[int, float] = defaultdict(float)
    for name, node in costs.nodes.items():
        stage = stage_of_node[(node.members or [name])[0]]
        predicted[stage.index] += node.time_s[stage.device]
    return dict(predicted)


def transfer_rows(manifest: SplitManifest, costs: CostGraph) -> dict[tuple[int | None, str, str], StepRow]:
    """One row per message the plan sends each request: (from stage or None for the inputs, sender,
    receiver) -> bytes and the link model's time for them."""
    rows: dict[tuple[int | None, str, str], StepRow] = {}

    def add(stage: int | None, sender: str, receiver: str, tensor: str) -> None:
        n_bytes = costs.tensors[tensor].bytes if tensor in costs.tensors else 0
        key = (stage, sender, receiver)
        if key not in rows:
            label = f"{'inputs' if stage is None else f'stage {stage} outputs'}"
            rows[key] = StepRow(label, f"{sender} -> {receiver}", 0, 0.0)
        rows[key].bytes += n_bytes

    for item in manifest.source_outputs:
        for device in sorted(item.devices(manifest.sink) - {manifest.source}):
            add(None, manifest.source, device, item.tensor)
    for stage in manifest.stages:
        for item in stage.outputs:
            for device in sorted(item.devices(manifest.sink) - {stage.device}):
                add(stage.index, stage.device, device, item.tensor)
    for (_, sender, receiver), row in rows.items():
        row.predicted_s = costs.transfer_s(sender, receiver, row.bytes)  # through the broker's host, if given
    # The client sits on the source and sink device: its hops are priced with a client link and where
    # the broker is (0 without either), shown first and last.
    def tensor_bytes(names: list[str]) -> int:
        return sum(costs.tensors[name].bytes for name in names if name in costs.tensors)

    request_s, answer_s = client_hops_s(costs)
    request = StepRow("request", f"{CLIENT} -> {manifest.source}",
                      tensor_bytes([spec.name for spec in manifest.graph_inputs]), request_s)
    answer = StepRow("answer", f"{manifest.sink} -> {CLIENT}",
                     tensor_bytes([spec.name for spec in manifest.graph_outputs]), answer_s)
    return {(None, CLIENT, manifest.source): request, **rows, (None, manifest.sink, CLIENT): answer}


def open_deployment(stack: ExitStack, settings: DemoSettings, plan_path: Path, manifest: SplitManifest,
                    hosts: Hosts, on_phase: Callable[[str], None] = lambda _: None) -> Callable[[int], RequestOutcome]:
    """Start one agent process per device on `hosts` and a client, all stopped when `stack` closes; the
    answer is `serve(index)`: one request (inputs seeded by `index`), its answer checked against the
    unsplit model. Several deployments may be open at once, so that strategies take turns request by
    request and compare under the same load (`edgecloud testbed`)."""
    reference = make_session(str(manifest.model_path()))
    output_names = [spec.name for spec in manifest.graph_outputs]
    deployment = f"demo-{uuid.uuid4().hex[:8]}"
    on_phase("starting the MQTT broker")
    broker_url = hosts.broker_url(stack)
    on_phase(f"starting {len(manifest.devices)} agent processes ({', '.join(manifest.devices)})")
    extra = [*(["--emulate-links"] if settings.emulate_links else []), *settings.agent_args]
    hosts.start_agents(stack, plan_path, manifest.devices, broker_url, deployment, extra)
    with hosts.client_side():
        client = stack.enter_context(InferenceClient(manifest, broker_url, deployment=deployment))

    def serve(index: int) -> RequestOutcome:
        inputs = model_inputs(manifest, settings.seed + settings.warmup + index)
        result = client.infer(inputs, settings.deadline_s)
        started_s = time.perf_counter()
        expected = dict(zip(output_names, reference.run(output_names, inputs)))
        unsplit_s = time.perf_counter() - started_s
        error = max(float(np.max(np.abs(result.outputs[name] - expected[name]))) for name in output_names)
        return RequestOutcome(index, result.timings, result.fell_back, error, unsplit_s)

    return serve


def serve_requests(settings: DemoSettings, plan_path: Path, manifest: SplitManifest,
                   on_phase: Callable[[str], None] = lambda _: None,
                   on_request: Callable[[RequestOutcome], None] = lambda _: None,
                   hosts: Hosts | None = None) -> list[RequestOutcome]:
    """Start one agent process per device on `hosts` (default: this host, with the settings' broker or
    an embedded one), send the warm-up requests and then the counted ones one after another, check each
    answer against the unsplit model; stop everything on the way out, whatever happens."""
    hosts = hosts if hosts is not None else LocalHosts(settings.broker_url)
    outcomes: list[RequestOutcome] = []
    with ExitStack() as stack:
        serve = open_deployment(stack, settings, plan_path, manifest, hosts, on_phase)
        on_phase(f"sending {settings.requests} requests")
        for index in range(-settings.warmup, settings.requests):
            outcome = serve(index)
            if index < 0:  # a warm-up answer must be right too, but is not counted
                check_outcomes([outcome])
                continue
            outcomes.append(outcome)
            on_request(outcome)
    return outcomes


def measured_rows(manifest: SplitManifest, costs: CostGraph,
                  outcomes: list[RequestOutcome]) -> tuple[list[StepRow], list[StepRow]]:
    """Per-stage and per-transfer rows: the plan's prediction beside every request's measurement."""
    stage_predictions = predicted_stage_s(manifest, costs)
    stages = {stage.index: StepRow(f"stage {stage.index} ({len(stage.nodes)} nodes)", stage.device, 0,
                                   stage_predictions.get(stage.index, 0.0)) for stage in manifest.stages}
    transfers = transfer_rows(manifest, costs)
    for outcome in outcomes:
        for event in outcome.timings.events:
            if event.kind == "stage" and event.stage in stages and not outcome.fell_back:
                stages[event.stage].measured_s.append(event.duration_s)
            elif event.kind == "transfer" and event.sender is not None:
                row = transfers.get((event.stage, event.sender, event.device))
                if row is not None:
                    row.measured_s.append(event.duration_s)
    return list(stages.values()), list(transfers.values())


def check_outcomes(outcomes: list[RequestOutcome], tolerance: float = 1e-5) -> None:
    """EdgecloudError if any answer differs from the unsplit model's by more than `tolerance`."""
    wrong = [outcome.index for outcome in outcomes if outcome.max_abs_error > tolerance]
    if wrong:
        raise EdgecloudError(f"{len(wrong)} answer(s) differ from the unsplit model by more than {tolerance:g} "
                             f"(requests {', '.join(map(str, wrong[:5]))})")
