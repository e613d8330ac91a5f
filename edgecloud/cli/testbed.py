"""`edgecloud testbed MODEL... --bandwidth B ...`: plans and every baseline, measured on emulated hosts.

The steps live in edgecloud/cli/testbed_steps.py; this module holds the command, its table and plot.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from edgecloud.cli.demo import DEFAULT_EDGE, interruptible_workdir
from edgecloud.cli.options import COUNT_MAX, SEED_BOUNDS, THREADS_MAX
from edgecloud.cli.user_errors import writable_output

if TYPE_CHECKING:
    from rich.console import Console

    from edgecloud.cli.testbed_steps import Cell, TestbedSettings

# The cloud namespace runs at this host's speed, and a quota can slow a host but not speed it up: the
# cloud's profile is therefore this host, measured (`host`), unless another is asked for.
DEFAULT_CLOUD = "host"
BROKER_SIDES = ("cloud", "edge")


def testbed(
    models: Annotated[list[str], typer.Argument(help="Bundled model names or ONNX files.")],
    bandwidth: Annotated[list[str], typer.Option("--bandwidth", help="Edge-cloud bandwidth, e.g. 20Mbit (repeatable).")],
    requests: Annotated[int, typer.Option("--requests", min=1, max=COUNT_MAX, help="Most requests measured per strategy and cell.")] = 20,
    warmup: Annotated[int, typer.Option("--warmup", min=0, max=COUNT_MAX, help="Requests per deployment and bandwidth sent first and not counted.")] = 1,
    budget: Annotated[str, typer.Option("--budget", help="Per strategy and cell: after 5 requests, stop once their time adds up to this.")] = "4s",
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the edgecloud.testbed/1 JSON here.")] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="PNG: latency vs bandwidth, measured solid, predicted dashed.")] = None,
    edge: Annotated[str, typer.Option("--edge", help="Edge device profile the edge agent is held to.")] = DEFAULT_EDGE,
    cloud: Annotated[str, typer.Option("--cloud", help="Cloud device profile (default: this host, which the cloud namespace runs at).")] = DEFAULT_CLOUD,
    edge_threads: Annotated[int, typer.Option("--edge-threads", min=1, max=THREADS_MAX, help="onnxruntime threads of the edge agent.")] = 1,
    broker_side: Annotated[str, typer.Option("--broker-side", help="Host of the Mosquitto broker: cloud | edge.")] = "cloud",
    deadline: Annotated[str, typer.Option("--deadline", help="Longest a request may take.")] = "60s",
    emulate: Annotated[bool, typer.Option("--emulate/--software", help="Namespaces, tc and a CPU quota where permitted; --software: the agents' link emulation.")] = True,
    workdir: Annotated[Optional[Path], typer.Option("--workdir", help="Keep the plans and splits here (default: a temporary folder).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the inputs and the profiler.", **SEED_BOUNDS)] = 0,
) -> None:
    """Serve the plan and every baseline of each model at each bandwidth on an emulated edge and cloud."""
    import logging

    from edgecloud.cli.testbed_steps import TestbedSettings
    from edgecloud.testbed.host_commands import TestbedError
    from partitioner.units import parse_bandwidth_bps, parse_duration_s

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if broker_side not in BROKER_SIDES:
        raise TestbedError(f"--broker-side {broker_side!r} is not one of {', '.join(BROKER_SIDES)}.")
    writable_output(json_path, "--json")
    writable_output(plot, "--plot")
    settings = TestbedSettings(models=tuple(models), bandwidths_bps=tuple(parse_bandwidth_bps(b) for b in bandwidth),
                               requests=requests, warmup=warmup, edge=edge, cloud=cloud, edge_threads=edge_threads,
                               broker_side=broker_side, deadline_s=parse_duration_s(deadline), seed=seed,
                               emulate=emulate, budget_s=parse_duration_s(budget))  # type: ignore[arg-type]
    with interruptible_workdir(workdir, "edgecloud-testbed-", lambda: typer.echo(
            "interrupted: every process, namespace and CPU group the testbed made was removed", err=True)) as folder:
        _run(settings, folder, json_path, plot)


def _run(settings: "TestbedSettings", workdir: Path, json_path: Path | None, plot: Path | None) -> None:
    import time

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from devices.json_files import write_json_file
    from edgecloud.cli.testbed_steps import cells_per_model, emulation, run_model, testbed_document
    from edgecloud.errors import EdgecloudError

    console = Console()
    started_s = time.monotonic()
    cells: list[Cell] = []
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as progress:
        task = progress.add_task("setting up the emulated hosts", total=cells_per_model(settings) * len(settings.models))
        with emulation(settings, lambda text: console.print(f"[yellow]warning:[/] {text}")) as emulated:
            console.print(f"[bold]edgecloud testbed[/]: {emulated.hosts.description}; edge={settings.edge}, "
                          f"cloud={settings.cloud}, latency 0 (no netem here)")
            figures = emulated.message_figures
            console.print(f"per message, measured on the emulated path: message_s {figures['message_s'] * 1e3:.3f} ms, "
                          f"broker_s {figures['broker_s'] * 1e3:.3f} ms, {figures['host_s_per_byte'] * 1e9:.2f} µs/KB "
                          f"(of message_s, {emulated.record['messages']['agent_extra_s_per_message'] * 1e3:.3f} ms is "
                          f"what a real agent hop added to the echo's); broker on the {emulated.broker_device or 'same'} host")
            for model in settings.models:
                done = len(cells)
                cells += run_model(settings, model, emulated, workdir,
                                   lambda text: progress.update(task, description=text),
                                   lambda _: progress.advance(task))
                progress.update(task, completed=cells_per_model(settings) * (settings.models.index(model) + 1),
                                description=f"{model}: {len(cells) - done} cells")
            record = emulated.record
    document = testbed_document(cells, record, settings)
    document["elapsed_s"] = time.monotonic() - started_s
    _print_cells(console, cells, document)
    if json_path is not None:
        write_json_file(json_path, document, "testbed results", error=EdgecloudError, indent=2)
        console.print(f"json: {json_path}")
    if plot is not None:
        plot_cells(cells, plot)
        console.print(f"plot: {plot}")


def _print_cells(console: "Console", cells: list["Cell"], document: dict) -> None:
    from rich.table import Table

    from edgecloud.cli.testbed_steps import comparisons

    table = Table(title="latency per request: predicted vs measured (ms)")
    for column in ("model", "Mbit/s", "strategy", "predicted", "measured median", "p95", "error", "n", "load"):
        table.add_column(column, justify="left" if column in ("model", "strategy") else "right")
    for cell in cells:
        error = cell.measured_median_s / cell.predicted_s - 1 if cell.predicted_s > 0 else float("nan")
        name = cell.strategy + (f" (= {cell.same_as})" if cell.same_as else "")
        table.add_row(cell.model, f"{cell.bandwidth_bps / 1e6:g}", name, f"{cell.predicted_s * 1e3:.2f}",
                      f"{cell.measured_median_s * 1e3:.2f}", f"{cell.measured_p95_s * 1e3:.2f}", f"{error:+.0%}",
                      str(cell.requests), f"{cell.load_average_1min:.1f}" if cell.load_average_1min is not None else "")
    console.print(table)
    for comparison in comparisons(cells):
        verdict = "[green]ok[/]" if comparison.within else "[red]miss[/]"
        console.print(f"{comparison.model} at {comparison.bandwidth_bps / 1e6:g} Mbit/s: plan "
                      f"{comparison.plan_s * 1e3:.2f} ms vs best baseline {comparison.best_baseline} "
                      f"{comparison.best_baseline_s * 1e3:.2f} ms ({comparison.ratio:.2f}x) {verdict}")
    for device in document["emulation"].get("devices", []):
        console.print(f"{device['model']}: edge quota {device['cpus']:.3g} CPU, one run {device['measured_s'] * 1e3:.2f} ms "
                      f"vs {device['target_s'] * 1e3:.2f} ms for the profile (ratio {device['ratio']:.2f}: the plan "
                      f"prices the edge at that, and its end of each message {device['planned_message_slowdown']:.2g}x "
                      f"slower than here)")
    summary = document["summary"]
    if summary["prediction_error_median"] is not None:
        console.print(f"prediction error |measured median / predicted - 1|: median "
                      f"{summary['prediction_error_median']:.0%}, p90 {summary['prediction_error_p90']:.0%} "
                      f"over {len(cells)} cells in {document['elapsed_s']:.0f} s")


def plot_cells(cells: list["Cell"], path: Path) -> None:
    """One panel per model: latency against bandwidth per strategy, measured solid, predicted dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, NullFormatter

    models = list(dict.fromkeys(cell.model for cell in cells))
    strategies = list(dict.fromkeys(cell.strategy for cell in cells))
    columns = min(3, len(models)) or 1
    rows = -(-len(models) // columns) or 1
    legend_rows = -(-(len(strategies) + 2) // 4)
    legend_in = 0.25 * legend_rows + 0.15
    height_in = 3.8 * rows + legend_in
    figure, axes_grid = plt.subplots(rows, columns, figsize=(5 * columns, height_in), squeeze=False)
    colours = dict(zip(strategies, plt.get_cmap("tab10").colors))
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    for axes, model in zip(axes_grid.flat, models):
        for strategy in strategies:
            own = sorted((c for c in cells if c.model == model and c.strategy == strategy), key=lambda c: c.bandwidth_bps)
            if not own:
                continue
            mbps = [c.bandwidth_bps / 1e6 for c in own]
            width = 2.5 if strategy == "plan" else 1.2
            axes.plot(mbps, [c.measured_median_s * 1e3 for c in own], color=colours[strategy], marker="o",
                      markersize=4, linewidth=width)
            axes.plot(mbps, [c.predicted_s * 1e3 for c in own], color=colours[strategy], linestyle="--", linewidth=width)
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xticks(sorted({c.bandwidth_bps / 1e6 for c in cells if c.model == model}))  # the bandwidths run
        axes.xaxis.set_major_formatter(plain)
        axes.xaxis.set_minor_formatter(NullFormatter())
        axes.set_title(model, fontsize=10)
        axes.set_xlabel("bandwidth (Mbit/s)")
        axes.set_ylabel("latency per request (ms)")
        axes.grid(True, which="both", alpha=0.3)
    for axes in list(axes_grid.flat)[len(models):]:
        axes.axis("off")
    handles = [Line2D([], [], color=colours[name], linewidth=2.5 if name == "plan" else 1.2, label=name)
               for name in strategies]
    handles += [Line2D([], [], color="black", marker="o", markersize=4, label="measured (median)"),
                Line2D([], [], color="black", linestyle="--", label="predicted")]
    figure.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)), fontsize=8)
    figure.tight_layout(rect=(0, legend_in / height_in, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)
