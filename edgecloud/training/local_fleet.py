"""`edgecloud train --runner mqtt`: a broker, the parameter server and P worker processes on this machine.

Everything started here is stopped here, on success, on an error and on Ctrl-C: the workers (SIGTERM,
then SIGKILL, by `edgecloud.serving.agent_processes`), then the broker if this call started it. The
workers are `edgecloud train-worker` processes, so a local run exercises exactly what a multi-host
deployment runs; the server runs in this process.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from edgecloud.serving.agent_processes import AgentProcesses
from edgecloud.training.protocol import WORKER_PREFIX, TrainingJob, worker_name
from edgecloud.training.server import FleetResult, ServerOptions, serve
from edgecloud.transport.broker import EmbeddedBrokerProcess
from edgecloud.transport.mqtt_url import split_password
from robust_training.errors import TrainingError
from robust_training.simulator import RoundRecord


def threads_per_worker(n_workers: int) -> int:
    """Torch threads for each of `n_workers` processes on this host: its cores shared out, at least one.
    Left at torch's default (all cores each), 8 workers on 2 cores ran 16 threads and their local steps
    took 3x as long as the torch runner's one-thread workers (bench/training_runners.py, FC net)."""
    return max(1, (os.cpu_count() or 1) // n_workers)


class WorkerProcesses(AgentProcesses):
    """`edgecloud train-worker` processes for workers 0..P-1 on this host, started and stopped as serving's
    agents are; each gets `--threads` = its share of the cores (`threads_per_worker`)."""

    def __init__(self, n_workers: int, broker_url: str | Mapping[str, str], deployment: str,
                 extra_args: Sequence[str] = (), log_level: str = "WARNING") -> None:
        """`broker_url`: one URL for all, or one per worker name (each its own login on a broker with an ACL)."""
        super().__init__(Path(), [worker_name(w) for w in range(n_workers)], broker_url, deployment,
                         ["--threads", str(threads_per_worker(n_workers)), *extra_args], log_level)

    def command(self, device: str, ready_file: Path) -> list[str]:
        url, _ = split_password(self.broker_urls[device])
        return [sys.executable, "-m", "edgecloud.cli.app", "train-worker", "--broker", url,
                "--id", device.removeprefix(WORKER_PREFIX), "--deployment", self.deployment,
                "--ready-file", str(ready_file), "--log-level", self.log_level, *self.extra_args]


def run_local_fleet(job: TrainingJob, broker_url: str | None = None, options: ServerOptions = ServerOptions(),
                    on_round: Callable[[RoundRecord], None] | None = None,
                    on_workers: Callable[[WorkerProcesses], None] = lambda workers: None,
                    data_dir: Path | None = None) -> FleetResult:
    """Train `job` with P worker processes over `broker_url` (None: an embedded broker started here);
    with `data_dir` every worker reads the partitions it holds from there (`train-worker --data-dir`).

    `on_workers` sees the running worker processes (tests kill and restart them from `on_round`).
    """
    job.config.validate()
    job.config.build()  # an impossible code or aggregator fails here, before any process starts
    broker = None if broker_url is not None else EmbeddedBrokerProcess().start()
    workers = WorkerProcesses(job.config.n_workers, broker_url or broker.url, options.deployment,  # type: ignore[union-attr]
                              [] if data_dir is None else ["--data-dir", str(data_dir.resolve())])
    try:
        def start_workers() -> None:
            workers.start()
            on_workers(workers)

        return serve(broker_url or broker.url, job, options, on_round, start_workers)  # type: ignore[union-attr]
    finally:
        workers.stop()
        if broker is not None:
            broker.stop()



class StandingFleet:
    """P `--keep-serving` worker processes over `broker_url` that serve job after job (benchmarks): the
    processes start (torch imports) with the first job only, and each job's workers rebuild their
    partitions from it. A context manager: leaving it stops the processes.

    The first job's start-up includes the processes'; a later one's is the workers getting the job and
    loading its data."""

    def __init__(self, n_workers: int, broker_url: str, options: ServerOptions = ServerOptions()) -> None:
        self.n_workers = n_workers
        self.broker_url = broker_url
        self.options = options
        self.workers = WorkerProcesses(n_workers, broker_url, options.deployment, ["--keep-serving"])
        self._started = False

    def serve(self, job: TrainingJob, on_round: Callable[[RoundRecord], None] | None = None) -> FleetResult:
        if job.config.n_workers != self.n_workers:
            raise TrainingError(f"this fleet has {self.n_workers} workers, the job needs {job.config.n_workers}.")
        job.config.validate()
        job.config.build()
        start = self._start if not self._started else lambda: None
        return serve(self.broker_url, job, self.options, on_round, start)

    def _start(self) -> None:
        self.workers.start()
        self._started = True

    def __enter__(self) -> StandingFleet:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.workers.stop()
