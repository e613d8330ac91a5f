"""Soak: many requests at a fixed rate through a 2-device plan on Mosquitto with passwords and the ACL,
with a broker restart and a cloud-agent kill (and restart) at fixed points.

What must hold (the script exits 1 otherwise): every request is answered with the right output for
*its* input (each request has its own seeded input, checked against the unsplit model in this process)
or fails with a clear error (a timeout, or the agent's `error` answer, e.g. "deadline passed" for a
request that sat in a queue during the broker outage); no request is answered twice; none gets another
request's output. The resident memory of the broker, both agents and this client is sampled once a
second: a leak shows as growth from the first to the last quarter of the run.

    python -m bench.soak --requests 10000 --rate 50       # table + bench/results/soak.json (~3.5 min)

The machine is shared with other jobs: absolute times move with their load; the counts must not.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import numpy as np
from rich.console import Console
from rich.table import Table

from bench.serving_throughput import bouncing_plan
from devices.sessions import make_session
from edgecloud.errors import EdgecloudError
from edgecloud.serving.agent_processes import AgentProcesses
from edgecloud.serving.client import InferenceClient, InferenceResult
from edgecloud.transport.broker import MosquittoBroker, device_acl
from edgecloud.transport.topics import sender_topic
from partitioner.models.zoo import cached_model_path
from partitioner.split.onnx_split import cached_split

RESULTS = Path(__file__).parent / "results"
DEVICES = ("edge", "cloud")
BROKER_RESTART_AT = 0.3  # fractions of the run at which the faults happen
CLOUD_KILL_AT = 0.6
BROKER_DOWN_S = 3.0
CLOUD_DOWN_S = 5.0
RSS_PERIOD_S = 1.0


def rss_bytes(pid: int) -> int | None:
    """Resident set size of a live process, from /proc (None once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


class RssSampler(threading.Thread):
    """Samples the RSS of named processes (a callable gives the current pid: processes restart)."""

    def __init__(self, pids: dict[str, Callable[[], int | None]]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.samples: dict[str, list[tuple[float, int]]] = {name: [] for name in pids}
        self._stopping = threading.Event()
        self._started_s = time.monotonic()

    def run(self) -> None:
        while not self._stopping.wait(RSS_PERIOD_S):
            for name, pid_of in self.pids.items():
                pid = pid_of()
                value = None if pid is None else rss_bytes(pid)
                if value is not None:
                    self.samples[name].append((time.monotonic() - self._started_s, value))

    def stop(self) -> None:
        self._stopping.set()
        self.join()

    def summary(self) -> dict[str, dict[str, float]]:
        """Per process: MiB at the start and the end (means of the first and last quarter), and the peak."""
        table: dict[str, dict[str, float]] = {}
        for name, samples in self.samples.items():
            values = [value / 2**20 for _, value in samples]
            if not values:
                continue
            quarter = max(1, len(values) // 4)
            table[name] = {"first_quarter_mib": float(np.mean(values[:quarter])),
                           "last_quarter_mib": float(np.mean(values[-quarter:])), "peak_mib": max(values),
                           "samples": len(values)}
        return table


@dataclass
class Outcomes:
    """What became of each request, by kind, with the reasons of the failures."""

    answered: int = 0
    fell_back: int = 0
    wrong_output: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)
    timed_out_ids: set[str] = field(default_factory=set)
    failures_by_second: Counter[int] = field(default_factory=Counter)  # when the failed requests were sent

    def record(self, sent_at_s: float, future: Future[InferenceResult], expected: np.ndarray) -> None:
        try:
            result = future.result()
        except EdgecloudError as error:
            self.errors[reason_class(str(error))] += 1
            self.failures_by_second[int(sent_at_s)] += 1
            timed_out = TIMED_OUT.search(str(error))
            if timed_out:
                self.timed_out_ids.add(timed_out.group(1))
            return
        if not np.allclose(result.outputs["output"], expected, rtol=1e-4, atol=1e-5):
            self.wrong_output += 1
            return
        self.answered += 1
        self.fell_back += result.fell_back
        self.latencies_s.append(result.timings.total_s)


TIMED_OUT = re.compile(r"no answer to request (\w+) within")


def reason_class(message: str) -> str:
    """A failure message without its request id and numbers, so that failures group by cause."""
    for known in ("deadline passed before it arrived", "within its", "requests already", "are already in flight",
                  "not connected", "outgoing queue"):
        if known in message:
            return "no answer within the deadline (client timeout)" if known == "within its" else known
    return message[:80]


class RepliesSeen(logging.Handler):
    """The ids in the client's "dropped a reply to unknown or abandoned request <id>" lines: a second
    answer to one request, or one after the client gave up, lands there."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.dropped_ids: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "dropped a reply" in record.getMessage():
            self.dropped_ids.append(str(record.args[-1]) if record.args else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second, sent on a fixed schedule")
    parser.add_argument("--deadline", type=float, default=2.0, help="seconds per request")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=RESULTS / "soak.json")
    args = parser.parse_args()

    model_path = cached_model_path(args.model)
    folder = Path(tempfile.mkdtemp(prefix="edgecloud-soak-"))
    plan_path = bouncing_plan(model_path, folder, runs=4)
    manifest = cached_split(plan_path)
    (spec,) = manifest.graph_inputs
    shape = [size if isinstance(size, int) else 1 for size in spec.shape]
    reference = make_session(str(model_path))

    def input_of(index: int) -> np.ndarray:
        """Request `index`'s own input, made again when its answer is checked (nothing is kept per request,
        so that the client's RSS shows only what the client library holds)."""
        return np.random.default_rng([args.seed, index]).standard_normal(shape).astype(spec.dtype)

    deployment = f"soak{uuid.uuid4().hex[:6]}"
    client_name = "soak-client"
    passwords = {name: uuid.uuid4().hex for name in (*DEVICES, client_name)}
    broker = MosquittoBroker(passwords=passwords, acl=device_acl(deployment, list(DEVICES), [client_name])).start()

    def url(name: str) -> str:
        return f"mqtt://{quote(name, safe='')}:{passwords[name]}@{broker.host}:{broker.port}"

    client = InferenceClient(manifest, url(client_name), deployment=deployment)
    # The library draws a random client name; the ACL needs a fixed identity (the topic level it writes).
    client.client_name = client_name
    client._source_topic = sender_topic(deployment, manifest.source, client_name)
    replies = RepliesSeen()
    logging.getLogger("edgecloud.transport.mqtt").addHandler(replies)
    logging.getLogger("edgecloud.transport.mqtt").setLevel(logging.INFO)

    agents = AgentProcesses(plan_path, list(DEVICES), {device: url(device) for device in DEVICES}, deployment,
                            log_level="WARNING")
    events: list[dict[str, float | str]] = []
    pending: set[int] = set()
    injectors: list[threading.Thread] = []
    lock = threading.Lock()
    outcomes = Outcomes()

    def settle(index: int, future: Future[InferenceResult]) -> None:
        expected = reference.run(None, {spec.name: input_of(index)})[0]
        with lock:
            outcomes.record(index / args.rate, future, expected)
            pending.discard(index)

    sampler = RssSampler({"broker": lambda: broker.pid, "edge agent": lambda: agents.processes["edge"].pid,
                          "cloud agent": lambda: agents.processes["cloud"].pid, "client (this process)": os.getpid})
    faults = {int(args.requests * BROKER_RESTART_AT): "broker restart", int(args.requests * CLOUD_KILL_AT): "cloud kill"}
    with agents:
        client.connect()
        sampler.start()
        started_s = time.monotonic()
        for index in range(args.requests):
            due_s = started_s + index / args.rate
            time.sleep(max(0.0, due_s - time.monotonic()))
            fault = faults.get(index)
            if fault is not None:
                events.append({"at_request": index, "event": fault, "t_s": time.monotonic() - started_s})
                injector = threading.Thread(target=inject, args=(fault, broker, agents, events, started_s), daemon=True)
                injector.start()
                injectors.append(injector)
            with lock:
                pending.add(index)
            try:
                future = client.submit(input_of(index), deadline_s=args.deadline)
            except EdgecloudError as error:
                future = Future()
                future.set_exception(error)
            future.add_done_callback(lambda done, index=index: settle(index, done))
        sent_s = time.monotonic() - started_s
        give_up_s = time.monotonic() + args.deadline + 5.0
        while pending and time.monotonic() < give_up_s:
            time.sleep(0.1)
        with lock:
            outcomes.errors["future never resolved"] += len(pending)
        if not outcomes.errors["future never resolved"]:
            del outcomes.errors["future never resolved"]
        for injector in injectors:  # a short run may end before the cloud agent is back: let it come back
            injector.join()
        time.sleep(1.0)  # late duplicates, if any, arrive now
        sampler.stop()
        client.close()
        agent_logs = {device: agents.log_text(device) for device in DEVICES}
    broker.stop()
    report(args, outcomes, replies.dropped_ids, sampler.summary(), events, sent_s, agent_logs)


def inject(fault: str, broker: MosquittoBroker, agents: AgentProcesses, events: list, started_s: float) -> None:
    """Run one fault in the background (the request schedule keeps going): restart the broker on its
    port, or SIGKILL the cloud agent and start it again."""
    if fault == "broker restart":
        broker.stop()
        time.sleep(BROKER_DOWN_S)
        broker.start()
        events.append({"event": "broker back", "t_s": time.monotonic() - started_s})
    else:
        agents.kill("cloud")
        time.sleep(CLOUD_DOWN_S)
        agents.restart("cloud")
        events.append({"event": "cloud agent back", "t_s": time.monotonic() - started_s})


def report(args: argparse.Namespace, outcomes: Outcomes, dropped_ids: list[str], rss: dict, events: list,
           sent_s: float, agent_logs: dict[str, str]) -> None:
    total = outcomes.answered + outcomes.wrong_output + sum(outcomes.errors.values())
    late = sum(request_id in outcomes.timed_out_ids for request_id in dropped_ids)
    twice = len(dropped_ids) - late + (len(dropped_ids) - len(set(dropped_ids)))
    latencies_ms = np.array(outcomes.latencies_s) * 1e3 if outcomes.latencies_s else np.zeros(1)
    result = {
        "requests": args.requests, "rate_per_s": args.rate, "deadline_s": args.deadline, "model": args.model,
        "send_duration_s": sent_s, "answered_correctly": outcomes.answered, "of_which_fell_back": outcomes.fell_back,
        "wrong_output": outcomes.wrong_output, "failed": dict(outcomes.errors), "accounted_for": total,
        "replies_after_the_client_gave_up": late, "answered_twice": twice,
        "failures_by_second_sent": dict(sorted(outcomes.failures_by_second.items())),
        "latency_ms": {"p50": float(np.percentile(latencies_ms, 50)), "p99": float(np.percentile(latencies_ms, 99)),
                       "max": float(latencies_ms.max())},
        "rss": rss, "events": events,
        "agent_log_lines": {device: len(text.splitlines()) for device, text in agent_logs.items()},
        "agent_tracebacks": {device: text.count("Traceback") for device, text in agent_logs.items()},
    }
    console = Console()
    table = Table(title=f"soak: {args.requests} requests at {args.rate:g}/s, {args.deadline:g} s deadline, "
                        f"{args.model} on edge+cloud, Mosquitto with ACL")
    table.add_column("outcome")
    table.add_column("requests", justify="right")
    table.add_row("answered, right output", str(outcomes.answered))
    table.add_row("  of which by the edge's fallback", str(outcomes.fell_back))
    table.add_row("answered with another output", str(outcomes.wrong_output))
    for reason, count in outcomes.errors.most_common():
        table.add_row(f"failed: {reason}", str(count))
    table.add_row("answered twice", str(twice))
    table.add_row("(replies that came after the client gave up)", str(late))
    console.print(table)
    memory = Table(title="resident memory (MiB), sampled every second")
    for column in ("process", "first quarter", "last quarter", "peak", "samples"):
        memory.add_column(column, justify="left" if column == "process" else "right")
    for name, row in rss.items():
        memory.add_row(name, f"{row['first_quarter_mib']:.1f}", f"{row['last_quarter_mib']:.1f}",
                       f"{row['peak_mib']:.1f}", str(row["samples"]))
    console.print(memory)
    console.print(f"latency of answered requests: p50 {result['latency_ms']['p50']:.1f} ms, "
                  f"p99 {result['latency_ms']['p99']:.1f} ms; events: "
                  + ", ".join(f"{event['event']} at {event['t_s']:.1f} s" for event in events))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    console.print(f"wrote {args.output}")
    if total != args.requests or outcomes.wrong_output or twice:
        sys.exit(1)


if __name__ == "__main__":
    main()
