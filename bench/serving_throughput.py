"""Split serving over MQTT: one request's latency, and throughput as more requests are in flight.

A bundled model is split edge, cloud, edge, cloud (4 stages); one `edgecloud agent` process per device;
the client sends `--requests` requests with at most W in flight for each W of `--in-flight`, against the
embedded broker (a child process) and Mosquitto (when installed). W = 1 is one request after another:
its mean time is the end-to-end latency; larger W shows the pipelining across devices (while the cloud
runs request i, the edge runs request i+1). The unsplit model in this process is the reference.

    /work/venv/bin/python bench/serving_throughput.py      # table + bench/results/serving_throughput.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import onnx
from rich.console import Console
from rich.table import Table

from devices.profiles import LinkProfile, link_key
from devices.sessions import make_session
from edgecloud.cli.demo_steps import model_inputs
from edgecloud.serving.agent_processes import AgentProcesses
from edgecloud.serving.client import InferenceClient, InferenceResult
from edgecloud.transport.broker import EmbeddedBrokerProcess, MosquittoBroker
from partitioner.graph.onnx_names import name_nodes_uniquely
from partitioner.models.zoo import cached_model_path
from partitioner.plan.plan_file import Plan
from partitioner.split.onnx_split import cached_split

RESULTS = Path(__file__).parent / "results"


def bouncing_plan(model_path: Path, folder: Path, runs: int) -> Path:
    """A plan file placing runs of nodes on edge, cloud, edge, cloud... (no solver involved)."""
    node_ids = name_nodes_uniquely(onnx.load(str(model_path)).graph)
    size = -(-len(node_ids) // runs)
    placement = {node: ("edge", "cloud")[position // size % 2] for position, node in enumerate(node_ids)}
    plan = Plan(model=str(model_path), objective="latency", devices={"edge": {}, "cloud": {}},
                links={link_key("edge", "cloud"): LinkProfile(1e9, 0.0)},
                source="edge", sink="edge", placement=placement, predicted_s=0.0,
                breakdown={"compute_s": {}, "transfer_s": {}}, crossing_tensors=[], baselines={},
                solver={"name": "bench", "status": "given"})
    path = folder / "plan.json"
    plan.save(path)
    return path


def run_window(client: InferenceClient, inputs: list[dict[str, np.ndarray]], in_flight: int) -> dict:
    """Send every input keeping at most `in_flight` outstanding; requests/s and per-request times."""
    pending: list[Future[InferenceResult]] = []
    results: list[InferenceResult] = []
    started_s = time.perf_counter()
    for item in inputs:
        if len(pending) >= in_flight:
            results.append(pending.pop(0).result(timeout=60))
        pending.append(client.submit(item, deadline_s=60.0))
    results.extend(future.result(timeout=60) for future in pending)
    elapsed_s = time.perf_counter() - started_s
    assert not any(result.fell_back for result in results)
    times_s = [result.timings.total_s for result in results]
    return {"in_flight": in_flight, "requests_per_s": len(inputs) / elapsed_s,
            "median_ms": statistics.median(times_s) * 1e3, "p90_ms": float(np.percentile(times_s, 90)) * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--runs", type=int, default=4, help="same-device runs of the placement")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--in-flight", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model_path = cached_model_path(args.model)
    brokers = {"embedded": EmbeddedBrokerProcess}
    if shutil.which("mosquitto"):
        brokers["mosquitto"] = MosquittoBroker  # type: ignore[assignment]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        plan_path = bouncing_plan(model_path, Path(scratch), args.runs)
        manifest = cached_split(plan_path)
        inputs = [model_inputs(manifest, args.seed + index) for index in range(args.requests)]
        reference = make_session(str(model_path))
        started_s = time.perf_counter()
        for item in inputs:
            reference.run(None, item)
        local_ms = (time.perf_counter() - started_s) / len(inputs) * 1e3
        for broker_name, broker_type in brokers.items():
            with broker_type() as broker:
                deployment = f"bench-{uuid.uuid4().hex[:6]}"
                with AgentProcesses(plan_path, manifest.devices, broker.url, deployment), \
                        InferenceClient(manifest, broker.url, deployment=deployment) as client:
                    run_window(client, inputs[:20], 1)  # warm-up
                    for window in args.in_flight:
                        rows.append({"broker": broker_name, **run_window(client, inputs, window)})

    table = Table(title=f"{args.model} split into {len(manifest.stages)} stages (edge/cloud agent processes), "
                        f"{args.requests} requests; unsplit in-process {local_ms:.2f} ms/request")
    for column in ("broker", "in flight", "requests/s", "median (ms)", "p90 (ms)"):
        table.add_column(column, justify="left" if column == "broker" else "right")
    for row in rows:
        table.add_row(row["broker"], str(row["in_flight"]), f"{row['requests_per_s']:.1f}", f"{row['median_ms']:.2f}",
                      f"{row['p90_ms']:.2f}")
    Console().print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serving_throughput.json").write_text(json.dumps(
        {"model": args.model, "stages": len(manifest.stages), "unsplit_ms": local_ms, "python": sys.version,
         "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
