"""`edgecloud demo`: profile, plan, split and serve a bundled model on this machine, then compare."""

from __future__ import annotations

import signal
import statistics
import tempfile
from contextlib import contextmanager
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from edgecloud.cli.broker_options import BrokerPasswordFile
from edgecloud.cli.options import COUNT_MAX, SEED_BOUNDS

if TYPE_CHECKING:
    from rich.console import Console

    from edgecloud.cli.demo_steps import DemoSettings, PlannedModel, RequestOutcome, StepRow
    from edgecloud.cli.testbed_steps import Emulation


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM ends the demo like Ctrl-C does: through every `finally`, so no child outlives it."""

    def interrupt(*_: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def interruptible_workdir(workdir: Path | None, prefix: str, on_interrupt: Callable[[], None]) -> Iterator[Path]:
    """The folder a command works in (`workdir`, or a temporary one removed afterwards). Ctrl-C and
    SIGTERM end it through every `finally`, then `on_interrupt` says so and the exit code is 130."""
    with sigterm_as_interrupt():
        try:
            if workdir is not None:
                workdir.mkdir(parents=True, exist_ok=True)
                yield workdir
            else:
                with tempfile.TemporaryDirectory(prefix=prefix) as folder:
                    yield Path(folder)
        except KeyboardInterrupt:
            on_interrupt()
            raise typer.Exit(code=130) from None


# The defaults show what planning is for: a Raspberry-Pi-class board and a cloud server joined by a good
# Wi-Fi link (50 Mbit/s, 1 ms one way). MobileNetV2 then runs fastest split, its first layers on the edge
# and the rest in the cloud, ahead of both all-edge and all-cloud. ResNet-18 at 64x64 stays on the edge
# there (its early activations are larger than its input, so no cut pays), as do the other bundled models.
DEFAULT_MODEL = "mobilenetv2"
DEFAULT_BANDWIDTH = "50Mbit"
DEFAULT_LATENCY = "1ms"
DEFAULT_EDGE = "rpi4"
DEFAULT_CLOUD = "cloud-server"


def demo(
    model: Annotated[str, typer.Option("--model", help="Bundled model (see `edgecloud models`).")] = DEFAULT_MODEL,
    bandwidth: Annotated[str, typer.Option("--bandwidth", help="Edge-cloud bandwidth, e.g. 20Mbit.")] = DEFAULT_BANDWIDTH,
    latency: Annotated[str, typer.Option("--latency", help="Edge-cloud one-way latency, e.g. 10ms.")] = DEFAULT_LATENCY,
    requests: Annotated[int, typer.Option("--requests", min=1, max=COUNT_MAX, help="Requests to send through the agents.")] = 10,
    broker: Annotated[Optional[str], typer.Option("--broker", help="Broker URL; default: start the embedded broker.")] = None,
    broker_password_file: BrokerPasswordFile = None,
    edge: Annotated[str, typer.Option("--edge", help="Edge device profile (catalogue name or JSON file).")] = DEFAULT_EDGE,
    cloud: Annotated[str, typer.Option("--cloud", help="Cloud device profile (catalogue name or JSON file).")] = DEFAULT_CLOUD,
    deadline: Annotated[str, typer.Option("--deadline", help="Deadline of each request.")] = "10s",
    emulate_links: Annotated[bool, typer.Option("--emulate-links/--no-emulate-links", help="Delay messages in the agents as the planned link would (when the hosts are not emulated).")] = True,
    emulate_hosts: Annotated[bool, typer.Option("--emulate-hosts/--no-emulate-hosts", help="Serve on emulated edge and cloud hosts (namespaces, tc, CPU quota) where permitted.")] = True,
    workdir: Annotated[Optional[Path], typer.Option("--workdir", help="Keep the plan and split here (default: a temporary folder).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the inputs and the profiler.", **SEED_BOUNDS)] = 0,
) -> None:
    """Run the whole job here: export, profile, plan vs baselines, split, serve over MQTT, check, compare."""
    import logging

    from rich.console import Console

    from edgecloud.cli.demo_steps import DemoSettings
    from partitioner.units import parse_bandwidth_bps, parse_duration_s

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings = DemoSettings(model=model, edge=edge, cloud=cloud, bandwidth_bps=parse_bandwidth_bps(bandwidth),
                            latency_s=parse_duration_s(latency), requests=requests, broker_url=broker,
                            deadline_s=parse_duration_s(deadline), emulate_links=emulate_links, seed=seed)
    console = Console()
    console.print(f"[bold]edgecloud demo[/]: {model} on edge={edge} + cloud={cloud}, link "
                  f"{settings.bandwidth_bps / 1e6:g} Mbit/s and {settings.latency_s * 1e3:g} ms")
    with interruptible_workdir(workdir, "edgecloud-demo-", lambda: console.print(
            "interrupted: the broker and every agent were stopped, every emulated host removed")) as folder:
        _run(settings, folder, console, emulate_hosts)


def _run(settings: "DemoSettings", workdir: Path, console: "Console", emulate_hosts: bool) -> None:
    from contextlib import ExitStack
    from dataclasses import replace

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from edgecloud.cli.demo_steps import check_outcomes, measured_rows, plan_demo_model, serve_requests
    from edgecloud.cli.testbed_steps import Emulation, try_emulated_hosts
    from partitioner.split.onnx_split import cached_split

    with ExitStack() as stack, Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                        MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                                        transient=True) as progress:
        phase = progress.add_task("starting", total=None)

        def on_phase(text: str) -> None:
            progress.update(phase, description=text)

        emulated: Emulation | None = None
        if emulate_hosts and settings.broker_url is None:
            on_phase("building the emulated edge and cloud hosts")
            emulated = try_emulated_hosts(stack, 1, "cloud", lambda text: console.print(f"[yellow]warning:[/] {text}"))
        elif emulate_hosts:
            console.print("--broker given: serving on this host, not on emulated hosts")
        if emulated is not None:
            if settings.latency_s > 0:
                console.print(f"the emulated link has no propagation delay (no netem in this kernel): planned at "
                              f"latency 0 instead of {settings.latency_s * 1e3:g} ms")
            settings = replace(settings, latency_s=0.0, emulate_links=False)
        planned = plan_demo_model(settings, workdir, on_phase)
        if emulated is not None:  # planned again with what the emulation measures (edgecloud.cli.testbed_steps)
            from partitioner.plan.make_plan import plan_cost_graph

            on_phase("measuring the per-message costs, shaping the link and calibrating the edge's CPU quota")
            emulated.calibrate_messages()
            emulated.shape(settings.bandwidth_bps)
            emulated.hold_edge(settings.model, planned.costs, 1, settings.seed)
            priced = emulated.priced(planned.costs, settings.bandwidth_bps, settings.model)
            planned = replace(planned, costs=priced, plan=plan_cost_graph(priced, "latency"))
            planned.plan.save(planned.plan_path)
        _print_plan(console, planned)
        if emulated is not None:
            _print_emulation(console, emulated)
        on_phase("splitting the model into per-device stages")
        manifest = cached_split(planned.plan_path)
        sent = progress.add_task("requests answered", total=settings.requests, visible=False)

        def on_request(_: "RequestOutcome") -> None:
            progress.update(sent, advance=1, visible=True)

        outcomes = serve_requests(settings, planned.plan_path, manifest, on_phase, on_request,
                                  hosts=None if emulated is None else emulated.hosts)
    stages, transfers = measured_rows(manifest, planned.costs, outcomes)
    _print_requests(console, planned, outcomes)
    _print_steps(console, "per stage (compute)", stages)
    _print_steps(console, "per transfer (one message per hop)", transfers)
    check_outcomes(outcomes)
    worst = max(outcome.max_abs_error for outcome in outcomes)
    fell_back = sum(outcome.fell_back for outcome in outcomes)
    unsplit_s = statistics.median(outcome.unsplit_s for outcome in outcomes)
    console.print(f"[green]all {len(outcomes)} answers match the unsplit model[/] (max |error| {worst:.1e}); "
                  f"{fell_back} fell back; the unsplit model takes {unsplit_s * 1e3:.2f} ms in one process here.")
    if emulated is not None:
        console.print("Predicted = the plan's figures for the edge and cloud profiles; measured = the edge agent and "
                      "the client on the emulated edge host (CPU quota), Mosquitto and the cloud agent on the cloud "
                      "host at this host's speed, the link shaped by tc.")
    else:
        console.print("Predicted = the plan's figures for the edge and cloud profiles; measured = both agents on this "
                      "host" + (", link emulated at the planned bandwidth and latency." if settings.emulate_links else "."))
    console.print(f"{len(manifest.stages)} stage(s) in {manifest.directory}; everything the demo started is stopped.")


def _print_emulation(console: "Console", emulated: "Emulation") -> None:
    for link in emulated.record["links"]:
        console.print(f"emulated link: tbf at {link['bandwidth_bps'] / 1e6:g} Mbit/s each way; a TCP transfer measured "
                      f"{link['measured_up_bps'] / 1e6:.3g} up, {link['measured_down_bps'] / 1e6:.3g} down")
    for device in emulated.record["devices"]:
        console.print(f"emulated edge: CPU quota {device['cpus']:.3g} CPU; whole model {device['measured_s'] * 1e3:.2f} ms "
                      f"measured vs {device['target_s'] * 1e3:.2f} ms predicted (ratio {device['ratio']:.2f})")


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.2f}"


def _print_plan(console: "Console", planned: "PlannedModel") -> None:
    from rich.table import Table

    plan = planned.plan
    counts: dict[str, int] = {}
    for device in plan.placement.values():
        counts[device] = counts.get(device, 0) + 1
    table = Table(title="plan vs baselines (predicted latency of one request)")
    for column in ("strategy", "predicted (ms)", "vs plan"):
        table.add_column(column, justify="left" if column == "strategy" else "right")
    where = ", ".join(f"{device} {count}" for device, count in sorted(counts.items()))
    table.add_row(f"[bold]plan[/] ({plan.solver.get('name')}, {plan.solver.get('status')}; nodes: {where})",
                  _ms(plan.predicted_s), "1.00x")
    for name, seconds in plan.baselines.items():
        ratio = None if seconds is None or plan.predicted_s <= 0 else seconds / plan.predicted_s
        table.add_row(name, _ms(seconds) if seconds is not None else "infeasible",
                      "-" if ratio is None else f"{ratio:.2f}x")
    console.print(table)
    compute = ", ".join(f"{device} {seconds * 1e3:.2f} ms" for device, seconds in plan.breakdown["compute_s"].items())
    transfer = ", ".join(f"{link} {seconds * 1e3:.2f} ms" for link, seconds in plan.breakdown["transfer_s"].items())
    crossing_bytes = sum(int(item["bytes"]) for item in plan.crossing_tensors)
    console.print(f"plan breakdown: compute {compute}; transfers {transfer or 'none'} "
                  f"({len(plan.crossing_tensors)} tensor(s), {crossing_bytes} bytes)")
    if len(counts) == 1:
        console.print(f"At this bandwidth the plan keeps every node on {next(iter(counts))}; a faster link "
                      "(e.g. --bandwidth 1Gbit --latency 1ms) or another model moves work across.")


def _print_requests(console: "Console", planned: "PlannedModel", outcomes: list["RequestOutcome"]) -> None:
    from rich.table import Table

    table = Table(title="per request")
    for column in ("request", "predicted (ms)", "measured (ms)", "fell back", "max |error|"):
        table.add_column(column, justify="right")
    for outcome in outcomes:
        table.add_row(str(outcome.index), _ms(planned.plan.predicted_s), _ms(outcome.timings.total_s),
                      "yes" if outcome.fell_back else "no", f"{outcome.max_abs_error:.1e}")
    console.print(table)


def _print_steps(console: "Console", title: str, rows: list["StepRow"]) -> None:
    from rich.table import Table

    if not rows:
        console.print(f"{title}: none")
        return
    table = Table(title=title)
    for column in ("step", "where", "bytes", "predicted (ms)", "measured median (ms)"):
        table.add_column(column, justify="left" if column in ("step", "where") else "right")
    for row in rows:
        table.add_row(row.label, row.device, str(row.bytes) if row.bytes else "-", _ms(row.predicted_s),
                      _ms(row.measured_median_s))
    console.print(table)
