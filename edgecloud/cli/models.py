"""`edgecloud models` and `edgecloud export`: the bundled example models."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from edgecloud.cli.options import SEED_BOUNDS
from partitioner.models.zoo import MODEL_NAMES, MODEL_SPECS, cached_file, check_model_name


def list_models() -> None:
    """List the bundled example models (node counts appear once a model has been exported and cached)."""
    table = Table(title="Bundled models")
    for column in ("name", "kind", "input shape", "ONNX nodes", "description"):
        table.add_column(column, justify="right" if column == "ONNX nodes" else "left")
    for name in MODEL_NAMES:
        spec = MODEL_SPECS[name]
        shape = "x".join(["N", *map(str, spec.input_shape[1:])])
        table.add_row(name, spec.kind, shape, _cached_node_count(name), spec.description)
    Console().print(table)


def _cached_node_count(name: str) -> str:
    """Node count of the cached export, if there is one: listing never triggers an export."""
    cached = cached_file(name)
    if not cached.is_file():
        return "-"
    import onnx

    return str(len(onnx.load(cached, load_external_data=False).graph.node))


def export(
    name: Annotated[str, typer.Argument(help=f"Model to export: one of {', '.join(MODEL_NAMES)}.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="ONNX file to write.")],
    seed: Annotated[int, typer.Option(help="Seed of the random weights.", **SEED_BOUNDS)] = 0,
) -> None:
    """Export a bundled model to a self-contained ONNX file (dynamic batch dimension)."""
    check_model_name(name)  # before the slow torch import
    from partitioner.models.zoo import export_model

    console = Console()
    started_s = time.perf_counter()
    with console.status(f"exporting {name} with torch's ONNX exporter"):
        path = export_model(name, output, seed)
    import onnx

    node_count = len(onnx.load(path).graph.node)
    console.print(f"wrote {path} ({node_count} nodes, {path.stat().st_size / 1e6:.1f} MB) "
                  f"in {time.perf_counter() - started_s:.1f} s")
