"""What one agent hop costs beyond the transport: split inference through Mosquitto vs bench/transport.py's one-way time.

    python bench/agent_hop.py [--sizes 40,8000,100000] [--repeats 200] [--out bench/results/agent_hop.json]

Setup: a one-node model (Relu on a [1, n] float32 tensor) placed on the cloud, source and sink the edge,
so that every request makes four hops of the same size: client -> edge -> cloud -> edge -> client. Both
agents and the echo of the transport baseline run in their own processes (as deployed); the client
and the pinger share this one.

    agent hop = (client round trip - the stage's own run time from the trace) / 4
    transport = bench/transport.py's `mqtt_pinger`: MqttTransport + wire encode/decode, round trip / 2

Both are measured in interleaved rounds in the same run, against the same broker, so that the extra
cost per hop (agent hop - transport) is a difference under the same load. The machine is shared with
other agents: read the ratios and differences, not the absolute times. Medians over all samples.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.transport import activation, child, mqtt_pinger, one_way_samples  # noqa: E402
from edgecloud.serving.agent import AgentOptions, DeviceAgent  # noqa: E402
from edgecloud.serving.client import InferenceClient  # noqa: E402
from edgecloud.transport.broker import MosquittoBroker  # noqa: E402
from partitioner.split.manifest import SplitManifest, load_manifest  # noqa: E402

SIZES_BYTES = (40, 8_000, 100_000)
REPEATS = 200
ROUNDS = 4
HOPS_PER_REQUEST = 4
DEADLINE_S = 10.0
TARGET_EXTRA_S = 0.2e-3
AGENT = "agent hop"
TRANSPORT = "transport one-way"


def relu_split(size_bytes: int, folder: Path) -> SplitManifest:
    """The one-node model on the cloud, source and sink the edge: four hops of `size_bytes` each."""
    import onnx
    from onnx import TensorProto, helper

    from partitioner.split.onnx_split import split_model

    elements = max(1, size_bytes // 4)
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["output"], name="relu")], "relu",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, elements])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, elements])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(folder / "relu.onnx"))
    return split_model(folder / "relu.onnx", {"relu": "cloud"}, "edge", "edge", folder / "split",
                       devices=("edge", "cloud"))


def serve_agent(split_dir: str, device: str, url: str, deployment: str, ready: multiprocessing.Event,
                stop: multiprocessing.Event) -> None:
    """One agent in its own process until `stop` is set."""
    logging.basicConfig(level=logging.WARNING)
    with DeviceAgent(load_manifest(split_dir), device, url, AgentOptions(deployment=deployment)):
        ready.set()
        stop.wait()


def agent_round_trip(client: InferenceClient, size_bytes: int, sink: list[float]) -> Callable[[], None]:
    """One request; appends (round trip - stage time) to `sink` (the stage ran on the cloud)."""
    x = np.ones((1, max(1, size_bytes // 4)), np.float32)

    def round_trip() -> None:
        started_s = time.perf_counter()
        result = client.infer(x, deadline_s=DEADLINE_S)
        total_s = time.perf_counter() - started_s
        if result.fell_back:
            raise RuntimeError("the edge fell back: the measurement is not of the planned path")
        sink.append(total_s - sum(event.duration_s for event in result.timings.stages))

    return round_trip


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", type=lambda text: [int(size) for size in text.split(",")], default=list(SIZES_BYTES),
                        help="comma-separated tensor sizes in bytes (default: 40 B, 8 KB, 100 KB)")
    parser.add_argument("--repeats", type=int, default=REPEATS, help="requests per size and path")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "agent_hop.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    per_round = max(2, args.repeats // ROUNDS)
    load_before = os.getloadavg()
    samples: dict[str, dict[int, list[float]]] = {AGENT: {}, TRANSPORT: {}}
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="agent-hop-")))
        broker = stack.enter_context(MosquittoBroker())
        transport = stack.enter_context(mqtt_pinger(broker.url))
        for size in args.sizes:
            (folder / str(size)).mkdir()
            manifest = relu_split(size, folder / str(size))
            deployment = f"hop{uuid.uuid4().hex[:8]}"
            with ExitStack() as agents:
                for device in ("cloud", "edge"):
                    agents.enter_context(child(serve_agent, str(manifest.directory), device, broker.url, deployment))
                client = agents.enter_context(InferenceClient(manifest, broker.url, deployment=deployment))
                hop_s: list[float] = []
                agent_trip = agent_round_trip(client, size, hop_s)
                transport_trip = transport(activation(max(4, size)))
                transport_s: list[float] = []
                for _ in range(ROUNDS):
                    for _ in range(2):  # warm-up, not kept
                        agent_trip()
                    hop_s.clear()
                    for _ in range(per_round):
                        agent_trip()
                    samples[AGENT].setdefault(size, []).extend(hop_s)
                    transport_s += one_way_samples(transport_trip, per_round)
                samples[TRANSPORT][size] = transport_s
    load_after = os.getloadavg()
    rows = []
    print(f"{'size':>9} {'agent hop':>11} {'transport':>11} {'extra':>10}  target extra <= {TARGET_EXTRA_S * 1e3:g} ms")
    for size in args.sizes:
        hop = statistics.median(samples[AGENT][size]) / HOPS_PER_REQUEST
        one_way = statistics.median(samples[TRANSPORT][size])
        extra = hop - one_way
        rows.append({"size_bytes": size, "samples": len(samples[AGENT][size]), "agent_hop_s": hop,
                     "transport_one_way_s": one_way, "extra_s": extra, "target_met": extra <= TARGET_EXTRA_S})
        print(f"{size:>8}B {hop * 1e3:>9.3f}ms {one_way * 1e3:>9.3f}ms {extra * 1e3:>8.3f}ms  "
              f"{'met' if extra <= TARGET_EXTRA_S else 'missed'}")
    print(f"agent hop = (round trip - stage time) / {HOPS_PER_REQUEST}; transport = MqttTransport ping-pong / 2; "
          f"one Mosquitto. Load average (1 min) before/after: {load_before[0]:.2f} / {load_after[0]:.2f} on "
          f"{os.cpu_count()} CPUs (shared with other work).")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "agent_hop", "method": "interleaved rounds, medians; agent hop = (round trip - stage) / 4",
        "host": platform.node(), "python": platform.python_version(), "cpus": os.cpu_count(),
        "load_average_1min": {"before": load_before[0], "after": load_after[0]}, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
