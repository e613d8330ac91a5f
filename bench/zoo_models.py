"""The bundled models and the real architectures: export time, node counts, FLOPs, parameter bytes.

Each model (`partitioner.models.zoo`'s six, then `partitioner.models.real_models`' six from tiny transformers
configs) is exported into a scratch directory with torch's default (dynamo) exporter, in one process
after one untimed warm-up export (the first export also pays the exporter's own imports); each time is
the fastest of `--repeats` exports. `ONNX nodes` counts the file's nodes, `compute nodes` the layer
DAG's after constant subgraphs are folded into weights; the DAG is built at batch size 1, as
`load_layer_graph(path)` and `load_layer_graph(path, fuse=True)`.

    python bench/zoo_models.py          # table + bench/results/zoo_models.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

import onnx

from partitioner.graph.layer_graph import load_layer_graph
from partitioner.models.real_models import REAL_MODELS, export_real_model
from partitioner.models.zoo import MODEL_NAMES, export_model

RESULTS = Path(__file__).parent / "results"


def measure(name: str, export: Callable[[str, Path, int], Path], workdir: Path, repeats: int, seed: int) -> dict:
    path = workdir / f"{name}.onnx"
    export_times_s = []
    for _ in range(repeats):
        started_s = time.perf_counter()
        export(name, path, seed)
        export_times_s.append(time.perf_counter() - started_s)
    started_s = time.perf_counter()
    plain = load_layer_graph(path)
    load_s = time.perf_counter() - started_s
    fused = load_layer_graph(path, fuse=True)
    return {
        "model": name, "onnx_nodes": len(onnx.load(str(path), load_external_data=False).graph.node),
        "compute_nodes": plain.dag.number_of_nodes(), "fused_layers": fused.dag.number_of_nodes(),
        "flops": plain.total_flops, "param_bytes": plain.total_param_bytes,
        "activation_bytes": sum(tensor.bytes for tensor in plain.tensors.values()),
        "file_bytes": path.stat().st_size, "export_s": min(export_times_s), "load_layer_graph_s": load_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="exports per model; the fastest counts")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        export_model("mlp", workdir / "warm-up.onnx", args.seed)
        rows = [measure(name, export_model, workdir, args.repeats, args.seed) for name in MODEL_NAMES]
        rows += [measure(name, export_real_model, workdir, args.repeats, args.seed) for name in REAL_MODELS]

    table = Table(title="bundled models, then real architectures (batch size 1)")
    columns = ("model", "ONNX nodes", "compute nodes", "fused layers", "MFLOPs", "params (MB)", "activations (MB)", "file (MB)",
               "export (s)", "load DAG (s)")
    for column in columns:
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in rows:
        table.add_row(row["model"], str(row["onnx_nodes"]), str(row["compute_nodes"]), str(row["fused_layers"]), f"{row['flops'] / 1e6:.2f}",
                      f"{row['param_bytes'] / 1e6:.2f}", f"{row['activation_bytes'] / 1e6:.2f}",
                      f"{row['file_bytes'] / 1e6:.2f}", f"{row['export_s']:.2f}", f"{row['load_layer_graph_s']:.3f}")
    Console(width=150).print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "zoo_models.json").write_text(json.dumps({"rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
