"""What one agent hop costs beyond the transport: split inference through Mosquitto vs bench/transport.py's one-way time.

    python bench/agent_hop.py [--sizes 40,8000,100000] [--repeats 300] [--baseline-tree /tmp/base]
                              [--out bench/results/agent_hop.json]

Setup: a one-node model (Relu on a [1, n] float32 tensor) placed on the cloud, source and sink the edge,
so that every request makes four hops of the same size: client -> edge -> cloud -> edge -> client. The
agents are `edgecloud agent` processes and the client runs in a process of its own (as deployed).

    agent hop = (client round trip - the stage's own run time from the trace) / 4
    transport = bench/transport.py's `mqtt_pinger`: MqttTransport + wire encode/decode, round trip / 2

`--baseline-tree DIR` (a checkout of an older commit, e.g. `git worktree add /tmp/base f66205a`) adds the
same agent path with that tree's code (agents and client), so that before and after are measured in
one run. Every path is measured in interleaved rounds against the same broker, so that differences
are taken under the same load. The machine is shared with other work: read the differences, not the
absolute times. Medians over all samples.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HOPS_PER_REQUEST = 4
ROUNDS = 6
WARMUP = 5
DEADLINE_S = 10.0
TARGET_EXTRA_S = 0.2e-3
SIZES_BYTES = (40, 8_000, 100_000)
REPO = Path(__file__).resolve().parent.parent


def write_relu_plan(size_bytes: int, folder: Path) -> Path:
    """edgecloud.testbed.probe_model's plan, read from this tree by its path: a --baseline-tree child
    runs older code, which may not have that module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("probe_model", REPO / "edgecloud" / "testbed" / "probe_model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_relu_plan(size_bytes, folder)


def serve_child(size_bytes: int, url: str) -> None:
    """Child mode (`--child`): agents and a client from whatever tree PYTHONPATH names; on each stdin
    line N, run N requests and print their (round trip - stage) times as one JSON line."""
    import time
    import uuid

    import numpy as np

    from edgecloud.serving.agent_processes import AgentProcesses
    from edgecloud.serving.client import InferenceClient

    with tempfile.TemporaryDirectory(prefix="agent-hop-") as folder:
        plan = write_relu_plan(size_bytes, Path(folder))
        deployment = f"hop{uuid.uuid4().hex[:8]}"
        x = np.ones((1, max(1, size_bytes // 4)), np.float32)
        with InferenceClient(plan, url, deployment=deployment) as client, \
                AgentProcesses(plan, ["cloud", "edge"], url, deployment):
            def one() -> float:
                started_s = time.perf_counter()
                result = client.infer(x, deadline_s=DEADLINE_S)
                total_s = time.perf_counter() - started_s
                if result.fell_back:
                    raise RuntimeError("the edge fell back: the measurement is not of the planned path")
                return total_s - sum(event.duration_s for event in result.timings.stages)

            print("ready", flush=True)
            for line in sys.stdin:
                for _ in range(WARMUP):
                    one()
                print(json.dumps([one() for _ in range(int(line))]), flush=True)


class AgentPath:
    """One tree's agents and client in a child process, driven round by round."""

    def __init__(self, tree: Path, size_bytes: int, url: str) -> None:
        environment = {**os.environ, "PYTHONPATH": str(tree)}
        self.process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", str(size_bytes), url],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=environment,
                                        cwd=tree)
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the agents of {tree} did not start")

    def samples(self, count: int) -> list[float]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{count}\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", type=lambda text: [int(size) for size in text.split(",")], default=list(SIZES_BYTES),
                        help="comma-separated tensor sizes in bytes (default: 40 B, 8 KB, 100 KB)")
    parser.add_argument("--repeats", type=int, default=300, help="requests per size and path")
    parser.add_argument("--baseline-tree", type=Path, default=None, help="an older checkout to measure beside this one")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "agent_hop.json")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from bench.transport import WARMUP as TRANSPORT_WARMUP
    from bench.transport import activation, mqtt_pinger
    from edgecloud.transport.broker import MosquittoBroker
    from edgecloud.transport.hop_costs import one_way_samples

    trees = {"agent hop": REPO, **({"agent hop (baseline)": args.baseline_tree.resolve()} if args.baseline_tree else {})}
    per_round = max(2, args.repeats // ROUNDS)
    load_before = os.getloadavg()
    rows = []
    with MosquittoBroker() as broker, mqtt_pinger(broker.url) as transport:
        for size in args.sizes:
            paths = {name: AgentPath(tree, size, broker.url) for name, tree in trees.items()}
            samples: dict[str, list[float]] = {name: [] for name in [*paths, "transport one-way"]}
            try:
                transport_trip = transport(activation(max(4, size)))
                for round_index in range(ROUNDS + 1):  # round 0 warms every path up and is not kept
                    for name, path in paths.items():
                        kept = [value / HOPS_PER_REQUEST for value in path.samples(per_round)]
                        samples[name] += kept if round_index else []
                    trip_samples = one_way_samples(transport_trip, per_round, TRANSPORT_WARMUP)
                    samples["transport one-way"] += trip_samples if round_index else []
            finally:
                for path in paths.values():
                    path.close()
            medians = {name: statistics.median(values) for name, values in samples.items()}
            rows.append({"size_bytes": size, "samples_per_path": len(samples["transport one-way"]),
                         "one_way_s": medians,
                         "extra_s": {name: medians[name] - medians["transport one-way"] for name in paths},
                         "target_met": medians["agent hop"] - medians["transport one-way"] <= TARGET_EXTRA_S})
    load_after = os.getloadavg()
    names = [*trees, "transport one-way"]
    print(f"{'size':>9} " + " ".join(f"{name:>22}" for name in names) + "   extra over transport (target <= 0.2 ms)")
    for row in rows:
        extras = ", ".join(f"{name}: {value * 1e3:+.3f} ms" for name, value in row["extra_s"].items())
        print(f"{row['size_bytes']:>8}B " + " ".join(f"{row['one_way_s'][name] * 1e3:>19.3f} ms" for name in names)
              + f"   {extras} ({'met' if row['target_met'] else 'missed'})")
    print(f"agent hop = (round trip - stage time) / {HOPS_PER_REQUEST}; transport = MqttTransport ping-pong / 2; one "
          f"Mosquitto; {ROUNDS} interleaved rounds after one warm-up round. Load average (1 min) before/after: {load_before[0]:.2f} / "
          f"{load_after[0]:.2f} on {os.cpu_count()} CPUs (shared with other work).")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "agent_hop", "method": "interleaved rounds, medians; agent hop = (round trip - stage) / 4",
        "trees": {name: str(tree) for name, tree in trees.items()}, "host": platform.node(),
        "python": platform.python_version(), "cpus": os.cpu_count(),
        "load_average_1min": {"before": load_before[0], "after": load_after[0]}, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        serve_child(int(sys.argv[2]), sys.argv[3])
    else:
        main()
