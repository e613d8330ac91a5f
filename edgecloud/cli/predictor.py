"""`edgecloud predictor fit`: fit the per-op-type latency model on profiles measured on this host."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgecloud.cli.user_errors import reports_user_errors

app = typer.Typer(help="Fit the per-op-type latency predictor on measured profiles.", no_args_is_help=True)


def fit(
    profiles: Annotated[Optional[list[Path]], typer.Argument(
        help="Profile files (edgecloud profile); none: profile the bundled models now.")] = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Predictor JSON to write (default: the one shipped in devices/catalogue).")] = None,
    threads: Annotated[Optional[int], typer.Option(
        help="Thread count whose timings are fitted (default: all CPUs).", min=1)] = None,
    warmup: Annotated[int, typer.Option(help="Untimed runs before measuring the bundled models.", min=0)] = 3,
    repeats: Annotated[int, typer.Option(help="Timed runs per bundled model.", min=1)] = 20,
    seed: Annotated[int, typer.Option(help="Seed of the random inputs.")] = 0,
) -> None:
    """Fit on the given profiles, or profile every bundled model and fit on those (the shipped file)."""
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from devices.host import host_profile, measure_host
    from devices.predictor import shipped_predictor_path
    from devices.profiler import load_profile_file
    from edgecloud.calibration import fit_predictor, profile_bundled_models
    from partitioner.zoo import MODEL_NAMES

    thread_count = threads or os.cpu_count() or 1
    host = host_profile()
    reference = host if host.threads == thread_count else measure_host(thread_count)
    if profiles:
        loaded = {str(path): load_profile_file(path) for path in profiles}
    else:
        with Progress(transient=True) as progress:
            task = progress.add_task("profiling the bundled models", total=len(MODEL_NAMES))
            loaded = profile_bundled_models(MODEL_NAMES, host, [thread_count], warmup, repeats, seed,
                                            on_done=lambda *_: progress.advance(task))
    predictor = fit_predictor(loaded, thread_count, reference)
    target = output or shipped_predictor_path()
    predictor.save(target)

    table = Table(title=f"fitted on {predictor.fitted_on['nodes']} nodes, {thread_count} thread(s)")
    for column in ("op type", "samples", "compute", "activations", "params", "overhead (us)"):
        table.add_column(column, justify="right")
    for name, c in sorted(predictor.op_types.items()):
        table.add_row(name, str(c.samples), f"{c.compute:.3g}", f"{c.activations:.3g}", f"{c.params:.3g}",
                      f"{c.overhead_s * 1e6:.2f}")
    console = Console()
    console.print(table)
    console.print(f"wrote {target}")


app.command("fit")(reports_user_errors(fit))
