"""Our splitter vs `onnx.utils.extract_model`, cutting the same stages out of the same model.

Models: the largest bundled model (by node count) and a synthetic deep residual MLP (`--deep-blocks`
blocks of MatMul+Add+Relu+Add, 4 nodes each), both under a placement that bounces between edge and cloud
`--runs` times (one row per value). extract_model is called once per stage with the stage's input and
output tensor names from our manifest, so both produce the same sub-models; both run onnx.checker on
each stage. Each time is the fastest of `--repeats` runs.

    /work/venv/bin/python bench/split_speed.py            # table + bench/results/split_speed.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console
from rich.table import Table

from partitioner.graph.onnx_names import name_nodes_uniquely
from partitioner.models.zoo import MODEL_NAMES, cached_model_path
from partitioner.split.manifest import load_manifest
from partitioner.split.onnx_split import split_model

RESULTS = Path(__file__).parent / "results"


def deep_residual_mlp(blocks: int, width: int, seed: int) -> onnx.ModelProto:
    """x -> blocks of h = x + Relu(x @ W + b): a long graph with a skip per block."""
    rng = np.random.default_rng(seed)
    nodes, initializers = [], []
    current = "x"
    for block in range(blocks):
        weight, bias = f"w{block}", f"b{block}"
        initializers += [numpy_helper.from_array((rng.standard_normal((width, width)) * 0.05).astype(np.float32), weight),
                         numpy_helper.from_array(np.zeros(width, np.float32), bias)]
        nodes += [helper.make_node("MatMul", [current, weight], [f"m{block}"]),
                  helper.make_node("Add", [f"m{block}", bias], [f"a{block}"]),
                  helper.make_node("Relu", [f"a{block}"], [f"r{block}"]),
                  helper.make_node("Add", [current, f"r{block}"], [f"h{block}"])]
        current = f"h{block}"
    nodes.append(helper.make_node("Identity", [current], ["y"]))
    graph = helper.make_graph(nodes, "deep_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def bouncing_placement(node_ids: list[str], runs: int) -> dict[str, str]:
    size = -(-len(node_ids) // runs)
    return {node: ("edge", "cloud")[position // size % 2] for position, node in enumerate(node_ids)}


def best_of(repeats: int, action: Callable[[], object]) -> float:
    """Fastest of `repeats` runs: the first also pays imports and allocator warm-up."""
    times_s = []
    for _ in range(repeats):
        started_s = time.perf_counter()
        action()
        times_s.append(time.perf_counter() - started_s)
    return min(times_s)


def measure(label: str, model_path: Path, runs: int, workdir: Path, repeats: int) -> dict:
    node_ids = name_nodes_uniquely(onnx.load(str(model_path)).graph)
    placement = bouncing_placement(node_ids, runs)
    ours_dir = workdir / f"{label}-{runs}-ours"
    ours_s = best_of(repeats, lambda: split_model(model_path, placement, "edge", "edge", ours_dir))
    manifest = load_manifest(ours_dir)

    # extract_model needs the canonical node names in the file it reads, as our splitter applies them.
    named = onnx.load(str(model_path))
    name_nodes_uniquely(named.graph)
    named_path = workdir / f"{label}-named.onnx"
    onnx.save(named, str(named_path))

    def extract_every_stage() -> None:
        for stage in manifest.stages:
            onnx.utils.extract_model(str(named_path), str(workdir / f"{label}-extract-{stage.index}.onnx"),
                                     [item.tensor for item in stage.inputs], [item.tensor for item in stage.outputs],
                                     check_model=True)

    extract_s = best_of(repeats, extract_every_stage)
    return {"model": label, "nodes": len(node_ids), "stages": len(manifest.stages), "ours_s": ours_s,
            "extract_model_s": extract_s, "speedup": extract_s / ours_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, nargs="+", default=[4, 32],
                        help="same-device runs of the bouncing placement (one row per value)")
    parser.add_argument("--deep-blocks", type=int, default=1000, help="blocks of the synthetic model (4 nodes each)")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement; the fastest counts")
    args = parser.parse_args()

    largest = max(MODEL_NAMES, key=lambda name: len(onnx.load(str(cached_model_path(name))).graph.node))
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        deep_path = workdir / "deep.onnx"
        onnx.save(deep_residual_mlp(args.deep_blocks, args.width, args.seed), str(deep_path))
        for label, path in ((largest, cached_model_path(largest)), (f"deep-mlp-{args.deep_blocks}", deep_path)):
            rows.extend(measure(label, path, runs, workdir, args.repeats) for runs in args.runs)

    table = Table(title="split under a placement bouncing edge/cloud: ours vs onnx.utils.extract_model")
    for column in ("model", "nodes", "stages", "ours (s)", "extract_model (s)", "speed-up"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in rows:
        table.add_row(row["model"], str(row["nodes"]), str(row["stages"]), f"{row['ours_s']:.3f}",
                      f"{row['extract_model_s']:.3f}", f"{row['speedup']:.1f}x")
    Console().print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "split_speed.json").write_text(json.dumps({"rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
