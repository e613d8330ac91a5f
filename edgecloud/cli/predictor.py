"""`edgecloud predictor fit` / `estimate`: fit the per-op-type latency model on profiles measured on this
host, and use it to predict a model's latency on devices that are not at hand."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgecloud.cli.options import COUNT_MAX, SEED_BOUNDS, THREADS_MAX
from edgecloud.cli.user_errors import reports_user_errors, writable_output

app = typer.Typer(help="Fit the per-op-type latency predictor on measured profiles; estimate latency on other devices.",
                  no_args_is_help=True)


def fit(
    profiles: Annotated[Optional[list[Path]], typer.Argument(
        help="Profile files (edgecloud profile); none: profile the bundled and real models now.")] = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Predictor JSON to write (default: the one shipped in devices/catalogue).")] = None,
    threads: Annotated[Optional[int], typer.Option(
        help="Thread count whose timings are fitted (default: all CPUs).", min=1, max=THREADS_MAX)] = None,
    warmup: Annotated[int, typer.Option(help="Untimed runs before measuring the bundled models.", min=0, max=COUNT_MAX)] = 3,
    repeats: Annotated[int, typer.Option(help="Timed runs per bundled model.", min=1, max=COUNT_MAX)] = 20,
    seed: Annotated[int, typer.Option(help="Seed of the random inputs.", **SEED_BOUNDS)] = 0,
) -> None:
    """Fit on the given profiles, or profile every bundled and real model and fit on those (the shipped
    file); then measure the profiled models' prefix stages and the single-kernel models here and refit on
    those runs: the fit bench/predictor_error.py scores (`edgecloud.run_fit.fit_predictor`)."""
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from devices.errors import DeviceError
    from devices.host import host_profile, measure_host
    from devices.predictor import shipped_predictor_path
    from devices.profiler import load_profile_file
    from edgecloud.calibration import predictor_model_paths, profile_models
    from edgecloud.run_fit import fit_predictor, measure_runs

    target = writable_output(output or shipped_predictor_path(), "--output")  # refused before profiling
    thread_count = threads or os.cpu_count() or 1
    host = host_profile()
    reference = host if host.threads == thread_count else measure_host(thread_count)
    if profiles:
        loaded = {str(path): load_profile_file(path) for path in profiles}
    else:
        paths = predictor_model_paths()
        with Progress(transient=True) as progress:
            task = progress.add_task("profiling the bundled and real models", total=len(paths))
            loaded = profile_models(paths, host, [thread_count], warmup, repeats, seed,
                                    on_done=lambda *_: progress.advance(task))
    missing = [name for name, profile in loaded.items() if thread_count not in profile.timings]
    if missing:
        raise DeviceError(f"the profile {missing[0]} has no timing with {thread_count} thread(s) (--threads).")
    with Progress(transient=True) as progress:
        progress.add_task("timing the models' prefix stages and the single-kernel models", total=None)
        runs = measure_runs({name: Path(p.model) for name, p in loaded.items()}, thread_count, seed=seed)
    predictor = fit_predictor(loaded, thread_count, reference, runs["stages"], runs["kernels"], seed)
    predictor.save(target)

    fitted = predictor.fitted_on
    table = Table(title=f"fitted on {fitted['nodes']} nodes, {fitted['stage_runs']} stage and "
                        f"{fitted['kernel_runs']} single-kernel runs, {thread_count} thread(s); "
                        f"{predictor.stage.per_run_s * 1e6:.1f} us per run")
    for column in ("op type / kernel class", "samples", "compute", "activations", "params", "overhead (us)",
                   "per group (us)"):
        table.add_column(column, justify="right")
    for name, c in sorted(predictor.op_types.items()):
        table.add_row(name, str(c.samples), f"{c.compute:.3g}", f"{c.activations:.3g}", f"{c.params:.3g}",
                      f"{c.overhead_s * 1e6:.2f}", f"{c.per_group_s * 1e6:.3f}")
    console = Console()
    console.print(table)
    console.print(f"wrote {target}")


def estimate(
    model: Annotated[Path, typer.Argument(help="ONNX model file, or the name of a bundled model.")],
    devices: Annotated[Optional[list[str]], typer.Option(
        "--device", "-d", help="Catalogue name or device JSON file; repeat for several (default: the catalogue).")] = None,
    predictor_file: Annotated[Optional[Path], typer.Option(
        "--predictor", help="Predictor JSON (default: the shipped one).")] = None,
) -> None:
    """Predict a model's latency on devices that are not at hand: one run, one layer after another."""
    from rich.console import Console
    from rich.table import Table

    from devices.predictor import LatencyPredictor, shipped_predictor
    from devices.lookup import catalogue_names, load_device
    from edgecloud.calibration import predicted_node_times_s, predicted_run_s
    from partitioner.graph.layer_graph import load_layer_graph
    from partitioner.models.zoo import MODEL_NAMES, cached_model_path

    if not model.exists() and str(model) in MODEL_NAMES:
        model = cached_model_path(str(model))
    predictor = LatencyPredictor.load(predictor_file) if predictor_file else shipped_predictor()
    graph = load_layer_graph(model)
    table = Table(title=f"{model.name}: predicted latency ({graph.dag.number_of_nodes()} layers)")
    for column in ("device", "peak GFLOP/s", "GB/s", "threads", "predicted (ms)", "slowest layer"):
        table.add_column(column, justify="right")
    for name in devices or catalogue_names():
        device = load_device(name)
        times_s = predicted_node_times_s(graph, predictor, device)
        slowest = max(times_s, key=times_s.__getitem__)
        table.add_row(device.name, f"{device.peak_flops / 1e9:.1f}", f"{device.memory_bandwidth_bytes_per_s / 1e9:.1f}",
                      str(device.threads), f"{predicted_run_s(graph, predictor, device) * 1e3:.3f}", slowest)
    Console().print(table)


app.command("fit")(reports_user_errors(fit))
app.command("estimate")(reports_user_errors(estimate))
