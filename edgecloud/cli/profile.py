"""`edgecloud profile MODEL.onnx -o profile.json`: per-node latency of a model on this host."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edgecloud.cli.options import COUNT_MAX, SEED_BOUNDS, THREADS_MAX
from edgecloud.cli.user_errors import writable_output


def profile(
    model: Annotated[Path, typer.Argument(help="ONNX model file to profile, or the name of a bundled model.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Profile JSON file to write.")],
    threads: Annotated[Optional[list[int]], typer.Option(
        "--threads", help="Intra-op thread count; repeat for several (default: 1 and all CPUs).", min=1, max=THREADS_MAX)] = None,
    warmup: Annotated[int, typer.Option(help="Untimed runs before measuring.", min=0, max=COUNT_MAX)] = 3,
    repeats: Annotated[int, typer.Option(help="Timed runs; each node's median is kept.", min=1, max=COUNT_MAX)] = 20,
    seed: Annotated[int, typer.Option(help="Seed of the random inputs.", **SEED_BOUNDS)] = 0,
) -> None:
    """Measure every node's latency on this host with onnxruntime's per-node profiling."""
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from devices.host import host_profile
    from devices.profiler import default_thread_counts
    from edgecloud.calibration import profile_file
    from partitioner.models.zoo import MODEL_NAMES, cached_model_path

    if not model.exists() and str(model) in MODEL_NAMES:
        model = cached_model_path(str(model))
    thread_counts = sorted(set(threads)) if threads else default_thread_counts()
    output = writable_output(output, "--output")  # refused now, not after minutes of profiling
    host = host_profile()
    with Progress(transient=True) as progress:
        task = progress.add_task(f"profiling {model.name}", total=len(thread_counts))
        result = profile_file(model, host, thread_counts, warmup, repeats, seed,
                              on_done=lambda _: progress.advance(task))
    result.save(output)

    table = Table(title=f"{model.name} on this host ({len(result.timings[thread_counts[0]].node_times_s)} nodes)")
    for column in ("threads", "model latency (ms)", "sum of nodes (ms)", "untimed nodes"):
        table.add_column(column, justify="right")
    for count in thread_counts:
        timing = result.timings[count]
        table.add_row(str(count), f"{timing.latency_s * 1e3:.3f}", f"{sum(timing.node_times_s.values()) * 1e3:.3f}",
                      str(len(timing.untimed)))
    console = Console()
    console.print(table)
    console.print(f"wrote {output}")
