"""`edgecloud plan` and `edgecloud sweep`: optimal placement of a model (or any cost graph) across devices.

Only the partitioner's light modules (numpy, highspy) load for `--cost-graph`; onnx, the predictor and
matplotlib load only when a model or a plot asks for them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from edgecloud.cli.options import finite_float
from edgecloud.cli.user_errors import writable_output

if TYPE_CHECKING:
    from devices.profiles import LinkProfile
    from partitioner.costs.cost_graph import CostGraph
    from partitioner.costs.scenario import Scenario
    from partitioner.plan.plan_file import Plan

EDGE, CLOUD = "edge", "cloud"

ModelArgument = Annotated[Optional[Path], typer.Argument(help="ONNX model file, or the name of a bundled model.")]
EdgeOption = Annotated[str, typer.Option(help="Edge device: catalogue name or device JSON file.")]
CloudOption = Annotated[str, typer.Option(help="Cloud device: catalogue name or device JSON file.")]
LatencyOption = Annotated[str, typer.Option(help="One-way edge-cloud latency, e.g. 10ms.")]
ObjectiveOption = Annotated[
    str, typer.Option(help="latency | throughput | makespan (partitioner.costs.objective.OBJECTIVES).")
]
MemoryOption = Annotated[Optional[list[str]], typer.Option("--memory-limit", help="DEVICE=SIZE, e.g. edge=512MB (repeatable).")]
PinOption = Annotated[Optional[list[str]], typer.Option("--pin", help="NODE=DEVICE: keep a node on a device (repeatable).")]
ProfileOption = Annotated[Optional[Path], typer.Option(help="Profile JSON from `edgecloud profile`: measured node times.")]
DeviceOption = Annotated[Optional[list[str]], typer.Option("--device", help="NAME=PROFILE: one more device tier (repeatable).")]
LinkOption = Annotated[Optional[list[str]], typer.Option("--link", help=(
    "A-B=BW,LAT, e.g. edge-server=100Mbit,2ms, or A-B=FILE, a link JSON file such as `edgecloud calibrate` "
    "writes (its per-message costs and client link included) (repeatable)."))]
SolverOption = Annotated[str, typer.Option(help="highs | cbc.")]
TimeLimitOption = Annotated[Optional[float], typer.Option(
    help="Solver time limit in seconds (default: the objective's; throughput and makespan 60).",
    parser=finite_float(0.0, 86_400.0, low_open=True))]
FuseOption = Annotated[bool, typer.Option("--fuse", help="Plan fused layers (Conv+BN+ReLU) instead of single ops.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON on stdout instead of a table.")]


def plan(
    model: ModelArgument = None,
    cost_graph: Annotated[Optional[Path], typer.Option(help="Plan a cost-graph JSON file instead of a model.")] = None,
    edge: EdgeOption = "rpi4",
    cloud: CloudOption = "cloud-server",
    bandwidth: Annotated[str, typer.Option(
        help="Edge-cloud bandwidth, e.g. 20Mbit (with --adaptive a range, e.g. 1Mbit..1Gbit).")] = "20Mbit",
    latency: LatencyOption = "10ms",
    objective: ObjectiveOption = "latency",
    adaptive: Annotated[bool, typer.Option(
        "--adaptive", help="Every optimal plan over the --bandwidth range and the exact bandwidths between them.")] = False,
    memory_limit: MemoryOption = None,
    pin: PinOption = None,
    profile: ProfileOption = None,
    device: DeviceOption = None,
    link: LinkOption = None,
    solver: SolverOption = "highs",
    time_limit: TimeLimitOption = None,
    fuse: FuseOption = False,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Plan JSON file to write.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="PNG of the DAG coloured by device.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Find the optimal placement of a model's layers on edge and cloud, beside the classic baselines."""
    from devices.json_files import dumps_strict
    from partitioner.costs.objective import objective_named
    from partitioner.errors import PartitionerError
    from partitioner.plan.make_plan import plan_cost_graph

    chosen = objective_named(objective)  # refused before any file is read
    if (model is None) == (cost_graph is None):
        raise PartitionerError("give either a MODEL or --cost-graph FILE, not both or neither.")
    writable_output(output, "--output")
    writable_output(plot, "--plot")
    bandwidth_range = _adaptive_range(bandwidth, chosen.name, plot) if adaptive else None
    if cost_graph is not None:
        from partitioner.costs.cost_graph import CostGraph
        from partitioner.costs.scenario import Scenario

        loaded = CostGraph.load(cost_graph)
        scenario = _with_options(Scenario.of_graph(loaded), link, pin, memory_limit)
        graph = scenario.cost_graph(loaded.nodes, loaded.tensors, loaded.model, loaded.model_sha256)
    else:
        link_bandwidth = bandwidth.partition("..")[0] if adaptive else bandwidth
        scenario = _model_scenario(edge, cloud, _parsed_link(link_bandwidth, latency), device, link, pin, memory_limit)
        graph = _model_cost_graph(model, scenario, profile, fuse)
    if bandwidth_range is not None:
        _plan_adaptive(graph, bandwidth_range, solver, chosen.time_limit_s(time_limit), output, as_json)
        return
    result = plan_cost_graph(graph, chosen, solver, chosen.time_limit_s(time_limit))
    if output is not None:
        result.save(output)
    if plot is not None:
        from partitioner.plan.plotting import plot_plan

        plot_plan(result, graph, plot)
    if as_json:
        typer.echo(dumps_strict(result.to_dict(relative_to=output.parent if output else None), "plan",
                                error=PartitionerError))
    else:
        _print_plan_table(result, output, plot)


def sweep(
    model: ModelArgument = None,
    bandwidth: Annotated[str, typer.Option(help="Bandwidth range, e.g. 1Mbit..1Gbit (log-spaced).")] = "1Mbit..1Gbit",
    points: Annotated[int, typer.Option(help="Bandwidths to try.", min=2, max=10_000)] = 13,
    edge: EdgeOption = "rpi4",
    cloud: CloudOption = "cloud-server",
    latency: LatencyOption = "10ms",
    objective: ObjectiveOption = "latency",
    memory_limit: MemoryOption = None,
    pin: PinOption = None,
    profile: ProfileOption = None,
    device: DeviceOption = None,
    link: LinkOption = None,
    fuse: FuseOption = False,
    solver: SolverOption = "highs",
    time_limit: TimeLimitOption = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Sweep JSON file to write.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="PNG: predicted time vs bandwidth, log axes.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Plan the model at each bandwidth of the edge-cloud link in a range: the plan against every baseline."""
    import numpy as np
    from rich.progress import Progress

    from dataclasses import replace

    from devices.json_files import dumps_strict, write_json_file
    from devices.profiles import LinkProfile, link_key
    from partitioner.costs.objective import objective_named
    from partitioner.errors import PartitionerError
    from partitioner.plan.make_plan import plan_cost_graph
    from partitioner.plan.plotting import SweepPoint
    from partitioner.units import parse_bandwidth_range_bps, parse_duration_s

    chosen = objective_named(objective)  # refused before any file is read
    if model is None:
        raise PartitionerError("give a MODEL to sweep (an ONNX file or a bundled model's name).")
    writable_output(output, "--output")
    writable_output(plot, "--plot")
    low_bps, high_bps = parse_bandwidth_range_bps(bandwidth)
    scenario = _model_scenario(edge, cloud, LinkProfile(low_bps, parse_duration_s(latency)), device, link, pin,
                               memory_limit)
    graph = _model_cost_graph(model, scenario, profile, fuse)
    swept = link_key(EDGE, CLOUD)  # a --link edge-cloud=... gives its latency; its bandwidth is swept
    results: list[SweepPoint] = []
    with Progress(transient=True, disable=as_json) as progress:
        task = progress.add_task(f"planning {len(graph.nodes)} layers", total=points)
        for bandwidth_bps in np.geomspace(low_bps, high_bps, points):
            link_at = replace(scenario.links[swept], bandwidth_bps=float(bandwidth_bps))
            at = scenario.overridden(links={swept: link_at}).cost_graph(graph.nodes, graph.tensors, graph.model,
                                                                       graph.model_sha256)
            planned = plan_cost_graph(at, chosen, solver, chosen.time_limit_s(time_limit))
            results.append(SweepPoint(float(bandwidth_bps), planned.predicted_s, planned.baselines))
            progress.advance(task)
    rows = [{"bandwidth_bps": p.bandwidth_bps, "plan_s": p.plan_s, "baselines_s": p.baselines_s} for p in results]
    if output is not None:
        write_json_file(output, {"format": "edgecloud.sweep/1", "objective": objective, "points": rows}, "sweep",
                        error=PartitionerError)
    if plot is not None:
        from partitioner.plan.plotting import plot_sweep

        plot_sweep(results, plot, objective,
                   title=f"{model.name}: {objective} vs bandwidth, edge {edge} + cloud {cloud}, latency {latency}")
    if as_json:
        typer.echo(dumps_strict({"objective": objective, "points": rows}, "sweep", error=PartitionerError))
        return
    from rich.console import Console
    from rich.table import Table

    names = list(results[0].baselines_s)
    table = Table(title=f"{objective} (ms) vs bandwidth")
    for column in ["bandwidth", "plan", *names]:
        table.add_column(column, justify="right")
    for p in results:
        table.add_row(f"{p.bandwidth_bps / 1e6:.3g} Mbit/s", f"{p.plan_s * 1e3:.2f}",
                      *[("—" if p.baselines_s[n] is None else f"{p.baselines_s[n] * 1e3:.2f}") for n in names])
    Console().print(table)
    if plot is not None:
        Console().print(f"plot: {plot}")


def _adaptive_range(bandwidth: str, objective: str, plot: Path | None) -> tuple[float, float]:
    """--adaptive's --bandwidth range, refused with a sentence before any file is read."""
    from partitioner.errors import PartitionerError
    from partitioner.units import parse_bandwidth_range_bps

    if objective != "latency":
        raise PartitionerError(f"--adaptive plans the latency objective only (a placement's latency is affine in "
                               f"1/bandwidth, so the breakpoints are exact), not {objective!r}.")
    if plot is not None:
        raise PartitionerError("--plot draws one plan; for --adaptive, draw the range with `edgecloud sweep --plot`.")
    if ".." not in bandwidth:
        raise PartitionerError(f"--adaptive needs a --bandwidth range such as 1Mbit..1Gbit, not {bandwidth!r}.")
    return parse_bandwidth_range_bps(bandwidth)


def _plan_adaptive(graph: CostGraph, bandwidth_range: tuple[float, float], solver: str, time_limit_s: float | None,
                   output: Path | None, as_json: bool) -> None:
    """`plan --adaptive`: the plan set, saved, printed as a table of intervals or as JSON."""
    from devices.json_files import dumps_strict
    from partitioner.errors import PartitionerError
    from partitioner.plan.plan_set import adaptive_plans, swept_link

    plans = adaptive_plans(graph, swept_link(graph, (EDGE, CLOUD)), *bandwidth_range, "latency", solver, time_limit_s)
    if output is not None:
        plans.save(output)
    if as_json:
        typer.echo(dumps_strict(plans.to_dict(relative_to=output.parent if output else None), "plan set",
                                error=PartitionerError))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"optimal plans over {'-'.join(plans.link)} bandwidth ({plans.solves} ILP solves)")
    for column in ("bandwidth (Mbit/s)", "predicted (ms)", "layers per device"):
        table.add_column(column, justify="right")
    names = plans.graph.devices
    for piece in plans.pieces:
        counts = {name: int((piece.solution.placement == k).sum()) for k, name in enumerate(names)}
        table.add_row(f"{piece.low_bps / 1e6:.4g} .. {piece.high_bps / 1e6:.4g}",
                      f"{piece.predicted_s[0] * 1e3:.3f} .. {piece.predicted_s[1] * 1e3:.3f}",
                      ", ".join(f"{name} {count}" for name, count in counts.items() if count))
    Console().print(table)
    if output is not None:
        Console().print(f"plans: {output}")


def _parsed_link(bandwidth: str, latency: str) -> LinkProfile:
    """A link from the strings of --bandwidth and --latency, or of one --link's BW,LAT."""
    from devices.profiles import LinkProfile
    from partitioner.units import parse_bandwidth_bps, parse_duration_s

    return LinkProfile(parse_bandwidth_bps(bandwidth), parse_duration_s(latency))


def _model_scenario(edge: str, cloud: str, edge_cloud: LinkProfile, device: list[str] | None,
                    link: list[str] | None, pin: list[str] | None, memory_limit: list[str] | None) -> Scenario:
    """Edge, cloud and every --device, joined by `edge_cloud` and the --link options; checked before the
    model is read."""
    from devices.lookup import load_device
    from partitioner.costs.scenario import Scenario

    profiles = {EDGE: load_device(edge), CLOUD: load_device(cloud)}
    for name, source in _pairs(device, "--device", "NAME=PROFILE").items():
        profiles[name] = load_device(source)
    return _with_options(Scenario.of_profiles(profiles, {(EDGE, CLOUD): edge_cloud}, source=EDGE), link, pin,
                         memory_limit)


def _model_cost_graph(model: Path, scenario: Scenario, profile: Path | None, fuse: bool) -> CostGraph:
    """Layer DAG of `model` (a file, or a bundled model's name) priced in `scenario` (measured times when a
    profile is given)."""
    from partitioner.costs.from_model import cost_graph_from_model
    from partitioner.graph.layer_graph import load_layer_graph
    from partitioner.models.zoo import MODEL_NAMES, cached_model_path

    if not model.exists() and str(model) in MODEL_NAMES:
        model = cached_model_path(str(model))
    measured = None
    if profile is not None:
        from devices.profiler import load_profile_file

        measured = load_profile_file(profile)
    return cost_graph_from_model(load_layer_graph(model, fuse=fuse), scenario, model.resolve(), measured)


def _with_options(scenario: Scenario, link: list[str] | None, pin: list[str] | None,
                  memory_limit: list[str] | None) -> Scenario:
    """`scenario` with --link A-B=BW,LAT (or A-B=FILE), --pin NODE=DEVICE and --memory-limit DEVICE=SIZE on
    top, validated. A calibrated link file's client link prices the client's hops."""
    from devices.profiles import load_link_with_client
    from partitioner.errors import PartitionerError
    from partitioner.units import parse_size_bytes

    links, client_link = {}, None
    for pair, figures in _pairs(link, "--link", "A-B=BW,LAT").items():
        bandwidth, sep, latency = figures.partition(",")
        if sep:
            links[scenario.device_pair(pair)] = _parsed_link(bandwidth, latency)
        elif figures.endswith(".json") or Path(figures).is_file():
            links[scenario.device_pair(pair)], client = load_link_with_client(figures)
            client_link = client or client_link
        else:
            raise PartitionerError(f"--link {pair}={figures} must look like A-B=BW,LAT or A-B=FILE.json.")
    memory = {name: parse_size_bytes(size) for name, size in _pairs(memory_limit, "--memory-limit", "DEVICE=SIZE").items()}
    return scenario.overridden(links, _pairs(pin, "--pin", "NODE=DEVICE"), memory, client_link).validate()


def _pairs(values: list[str] | None, option: str, shape: str) -> dict[str, str]:
    from partitioner.errors import PartitionerError

    pairs: dict[str, str] = {}
    for value in values or []:
        key, sep, rest = value.partition("=")
        if not sep or not key or not rest:
            raise PartitionerError(f"{option} {value!r} must look like {shape}.")
        pairs[key] = rest
    return pairs


def _print_plan_table(result: Plan, output: Path | None, plot: Path | None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"{result.objective}: plan vs baselines")
    table.add_column("strategy")
    table.add_column("predicted (ms)", justify="right")
    table.add_column("plan speedup", justify="right")
    table.add_row("[bold]plan (ILP)[/bold]", f"{result.predicted_s * 1e3:.3f}", "1.00x")
    for name, value in result.baselines.items():
        speedup = result.speedups()[name]
        table.add_row(name, "infeasible" if value is None else f"{value * 1e3:.3f}",
                      "—" if speedup is None else f"{speedup:.2f}x")
    console.print(table)
    counts: dict[str, int] = {}
    for device in result.layers.values():
        counts[device] = counts.get(device, 0) + 1
    solver = result.solver
    console.print(f"layers per device: {counts}; crossing tensors: {len(result.crossing_tensors)}; "
                  f"solver {solver['name']} ({solver['method']}) {solver['status']} in {solver['time_s']:.3f} s"
                  + (f", gap {solver['gap']:.2%}" if solver.get("gap") else ""))
    if output is not None:
        console.print(f"plan: {output}")
    if plot is not None:
        console.print(f"plot: {plot}")
