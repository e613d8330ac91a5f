"""The simulator's training as P + 1 processes over torch.distributed (gloo): rank 0 is the PS.

Each round rank 0 broadcasts a control vector (go, round, tau, adversary mask) and the model, then
receives two float64 tensors from every worker: its message, and a report of its partitions' start
losses and its measured compute time. Workers compute with `simulator.worker_message` from only the
partitions they hold, and rank 0 finishes the round with `Simulator.server_step`, so a run here trains
the model the simulator trains (up to the rounding of per-worker vs all-at-once encoding). Only float64 tensors cross the wire
(`broadcast`, `send`/`recv`), never pickled objects.

Where the simulator models transfer time, this measures it: a round's wall time at rank 0 from the
broadcast to the last payload, minus the slowest worker's compute. Start-up (spawning, importing
torch, joining the group) is reported apart from the rounds.

Two ways in: `run_spawned` starts the P workers with torch.multiprocessing on this machine and is rank
0 itself (it watches the workers while they start: one that dies before joining fails the run within
seconds, not at gloo's timeout; and each worker ends with rank 0 even if rank 0 is SIGKILLed,
`robust_training.runners.parent_death`); `run_from_environment` joins a group torchrun started (RANK,
WORLD_SIZE, MASTER_ADDR, ...).

Checkpoints (robust_training.checkpoint) are rank 0's business alone: the workers hold no state across
rounds (the model, the round, tau and the adversary draw arrive with every round), so a resumed PS
starts fresh workers.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException
from torch.distributed.distributed_c10d import _set_pg_timeout

from robust_training.aggregators.base import finite_rows
from robust_training.attacks import DataAttack
from robust_training.checkpoint import Checkpointer
from robust_training.data import load_dataset
from robust_training.errors import TrainingError
from robust_training.models import make_objective
from robust_training.runners.parent_death import end_with_parent, started_from_main_thread
from robust_training.simulator import (HonestUpdatesDiverged, PartitionUpdates, RoundRecord, SimulationConfig,
                                       SimulationResult, Simulator, held_partitions, worker_message)

logger = logging.getLogger(__name__)

COLLECTIVE_TIMEOUT = timedelta(minutes=10)  # one round's slowest worker must report within this
JOIN_TIMEOUT = timedelta(seconds=30)        # forming the group once every worker has announced itself
POLL_S = 0.5                                # how often rank 0 looks for dead workers while they start
_CONTROL_HEAD = 3                           # go, round index, tau; then one adversary flag per worker


@dataclass(frozen=True)
class TrainJob:
    """What every process rebuilds its share of the run from: names and the config, no data."""

    dataset: str
    model: str
    config: SimulationConfig


@dataclass
class DistributedResult:
    """The PS's result plus the start-up time the rounds do not include."""

    result: SimulationResult
    startup_s: float


def build_simulator(job: TrainJob) -> Simulator:
    """The job's simulator (data loaded and split) for a process that has not loaded the data yet."""
    train, test = load_dataset(job.dataset, seed=job.config.seed)
    return Simulator(make_objective(job.model, train), train, test, job.config)


def _check_job(job: TrainJob) -> None:
    job.config.validate()
    if job.config.adaptive_tau:
        raise TrainingError("--runner torch runs a fixed tau: adaptive tau needs every partition's gradients "
                            "at the PS (use --runner sim).")


def _report_length(simulator: Simulator) -> int:
    """A worker's report beside its message: its partitions' start losses (padded) and its compute time."""
    return max(len(held_partitions(simulator.code, w)) for w in range(simulator.config.n_workers)) + 1


class _ServerRounds:
    """Rank 0's round player for `Simulator.run`: broadcast, receive, then the simulator's PS step.

    Each worker's message is received straight into its row of one (P, d) array kept across rounds
    (point-to-point receives: gloo's gather would stage all of them in a fresh flat buffer and copy
    them out), so a round allocates nothing of the messages' size here.
    """

    def __init__(self, simulator: Simulator) -> None:
        self.simulator = simulator
        self.n_workers = simulator.config.n_workers
        self.messages = torch.empty(self.n_workers, simulator.params0.size, dtype=torch.float64)
        self.reports = torch.empty(self.n_workers, _report_length(simulator), dtype=torch.float64)

    def __call__(self, params: np.ndarray, round_index: int, tau: int, adversaries: list[int], elapsed_s: float,
                 probe: bool) -> tuple[np.ndarray, PartitionUpdates | None, RoundRecord]:
        started = time.perf_counter()
        control = np.zeros(_CONTROL_HEAD + self.n_workers)
        control[:_CONTROL_HEAD] = (1.0, round_index, tau)
        control[_CONTROL_HEAD + np.asarray(adversaries, dtype=np.int64)] = 1.0
        model = torch.from_numpy(np.ascontiguousarray(params, dtype=np.float64))  # read, never written
        dist.broadcast(torch.from_numpy(control), src=0)
        dist.broadcast(model, src=0)
        pending = [dist.irecv(buffer[worker], src=worker + 1)
                   for buffer in (self.messages, self.reports) for worker in range(self.n_workers)]
        for work in pending:
            work.wait()
        wall_s = time.perf_counter() - started
        messages, reports = self.messages.numpy(), self.reports.numpy()
        honest = np.setdiff1d(np.arange(self.n_workers), adversaries)
        if not finite_rows(messages)[honest].all():
            raise HonestUpdatesDiverged()
        compute_s = float(reports[:, -1].max())
        link_bytes = control.nbytes + model.numel() * 8 + self.messages.shape[1] * 8 + self.reports.shape[1] * 8
        record = RoundRecord(round_index + 1, tau, self._start_loss(reports, honest), None, compute_s, 0.0,
                             max(wall_s - compute_s, 0.0), elapsed_s, sorted(adversaries), [],
                             link_bytes * self.n_workers)
        new_params, record = self.simulator.server_step(params, messages, adversaries, record)
        return new_params, None, record

    def _start_loss(self, reports: np.ndarray, honest: np.ndarray) -> float:
        """Size-weighted start loss over the partitions, each read from an honest holder's report where
        there is one (a label-flipper reports its poisoned losses; the simulator logs the honest ones)."""
        losses = np.zeros(len(self.simulator.partitions))
        adversarial = np.setdiff1d(np.arange(self.n_workers), honest)
        for worker in [*adversarial, *honest]:
            held = held_partitions(self.simulator.code, worker)
            losses[held] = reports[worker, :len(held)]
        return float(self.simulator.size_weights @ losses)


def _serve(simulators: Sequence[Simulator], on_round: Callable[[RoundRecord], None] | None,
           checkpoints: Checkpointer | None, started: float) -> list[DistributedResult]:
    """Rank 0: wait until every worker holds its data (the end of start-up), then play each simulator's
    rounds in turn (the workers answer whatever round and tau they are sent) and stop the workers."""
    try:
        dist.barrier()
        startup_s = time.perf_counter() - started
        results = []
        for simulator in simulators:
            result = simulator.run(on_round=on_round, play_round=_ServerRounds(simulator), checkpoints=checkpoints)
            results.append(DistributedResult(result, startup_s if not results else 0.0))
        dist.broadcast(torch.zeros(_CONTROL_HEAD + simulators[0].config.n_workers, dtype=torch.float64), src=0)
    except RuntimeError as error:  # gloo's errors: a worker died or stopped answering
        raise TrainingError(f"the process group failed, typically because a worker process died "
                            f"({_first_line(error)}).") from error
    return results


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__


def _work(simulator: Simulator, worker: int) -> None:
    """A worker's loop: it keeps only its own partitions and answers every round until told to stop."""
    config = simulator.config
    own = {p: simulator.partitions[p] for p in held_partitions(simulator.code, worker)}
    objective, code, scale, attack = simulator.objective, simulator.code, simulator.message_scale, simulator.attack
    poisoned = {p: attack.poison(data) for p, data in own.items()} if isinstance(attack, DataAttack) else own
    d, report = simulator.params0.size, np.zeros(_report_length(simulator))
    del simulator  # the training and test sets beyond this worker's partitions
    dist.barrier()
    control = torch.empty(_CONTROL_HEAD + config.n_workers, dtype=torch.float64)
    params = torch.empty(d, dtype=torch.float64)
    while True:
        dist.broadcast(control, src=0)
        if control[0].item() == 0.0:
            return
        dist.broadcast(params, src=0)
        round_index, tau = int(control[1].item()), int(control[2].item())
        adversarial = control[_CONTROL_HEAD + worker].item() == 1.0
        started = time.perf_counter()
        message, start_losses = worker_message(objective, config, code, scale, worker,
                                               poisoned if adversarial else own, params.numpy(), round_index, tau)
        report[:start_losses.size] = start_losses
        report[-1] = time.perf_counter() - started
        dist.send(torch.from_numpy(np.ascontiguousarray(message, dtype=np.float64)), dst=0)
        dist.send(torch.from_numpy(report), dst=0)


def _spawned_worker(index: int, job: TrainJob, host: str, port: int, parent_pid: int, deathsig: bool) -> None:
    end_with_parent(parent_pid, deathsig)  # a SIGKILLed rank 0 leaves no worker blocked in a collective
    # The PS's stdout is the command's output (`train --json`); a worker shares that pipe, so whatever it
    # or a library it loads prints goes to stderr instead, never into the middle of the result.
    sys.stdout.flush()
    os.dup2(2, 1)
    torch.set_num_threads(1)  # P + 1 processes share the machine's cores
    rank, world_size = index + 1, job.config.n_workers + 1
    store = dist.TCPStore(host, port, world_size, is_master=False, timeout=COLLECTIVE_TIMEOUT)
    store.set(f"joining/{rank}", "1")  # rank 0 forms the group only once every worker got this far
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size, timeout=COLLECTIVE_TIMEOUT)
    try:
        _work(build_simulator(job), index)
    finally:
        dist.destroy_process_group()


def _await_workers(store: dist.TCPStore, context: mp.ProcessContext, n_workers: int) -> None:
    """Block until every spawned worker announced itself, polling the processes meanwhile: one that
    dies while starting (an import that fails, a kill) is one TrainingError within POLL_S, not gloo's
    COLLECTIVE_TIMEOUT later."""
    keys = [f"joining/{rank}" for rank in range(1, n_workers + 1)]
    while not store.check(keys):
        try:
            if context.join(timeout=POLL_S):  # waits on the processes: returns early when one exits
                raise TrainingError("every worker process exited before joining the process group.")
        except ProcessException as error:
            raise TrainingError(f"worker process {error.error_index} (pid {error.error_pid}) exited before joining the "
                                f"process group ({_first_line(error)}).") from error


def run_spawned(job: TrainJob, on_round: Callable[[RoundRecord], None] | None = None,
                checkpoints: Checkpointer | None = None, simulator: Simulator | None = None) -> DistributedResult:
    """Train with P worker processes on this machine (loopback gloo); this process is rank 0, the PS.

    `simulator` is rank 0's share when the caller has already loaded the data for it (the CLI has):
    it must be `build_simulator(job)`'s equal. Spawned workers load their own.
    """
    return _spawn_and_serve([job], on_round, checkpoints, lambda: [simulator or build_simulator(job)])[0]


def run_spawned_series(jobs: Sequence[TrainJob],
                       on_round: Callable[[RoundRecord], None] | None = None) -> list[DistributedResult]:
    """Several runs, one after another, on one set of P worker processes: they may differ only in tau,
    the number of rounds, the evaluation period and the target accuracy (what rank 0 alone reads or
    sends every round), so the start-up is paid once (benchmarks). The first result carries it."""
    first = jobs[0]
    for job in jobs[1:]:
        rank_0_only = dict(tau=first.config.tau, rounds=first.config.rounds, eval_every=first.config.eval_every,
                           target_accuracy=first.config.target_accuracy)
        if (job.dataset, job.model, replace(job.config, **rank_0_only)) != (first.dataset, first.model, first.config):
            raise TrainingError("runs in one series may differ only in tau, rounds, eval_every and target_accuracy.")

    def simulators() -> list[Simulator]:  # one data load and one objective for every run
        train, test = load_dataset(first.dataset, seed=first.config.seed)
        objective = make_objective(first.model, train)
        return [Simulator(objective, train, test, job.config) for job in jobs]

    return _spawn_and_serve(jobs, on_round, None, simulators)


def _spawn_and_serve(jobs: Sequence[TrainJob], on_round: Callable[[RoundRecord], None] | None,
                     checkpoints: Checkpointer | None,
                     simulators: Callable[[], Sequence[Simulator]]) -> list[DistributedResult]:
    """Spawn the workers for `jobs[0]`, build rank 0's simulators while they start, serve, clean up."""
    for job in jobs:
        _check_job(job)
        job.config.build()  # an impossible code or attack fails here, before P processes start
    job = jobs[0]
    started = time.perf_counter()
    world_size = job.config.n_workers + 1
    store = dist.TCPStore("127.0.0.1", 0, world_size, is_master=True, timeout=COLLECTIVE_TIMEOUT,
                          wait_for_workers=False)
    context = mp.start_processes(_spawned_worker, args=(job, "127.0.0.1", store.port, os.getpid(),
                                                        started_from_main_thread()),
                                 nprocs=job.config.n_workers, join=False, start_method="spawn")
    try:
        built = simulators()  # while the workers start
        _await_workers(store, context, job.config.n_workers)
        dist.init_process_group("gloo", store=store, rank=0, world_size=world_size, timeout=JOIN_TIMEOUT)
        try:
            _set_pg_timeout(COLLECTIVE_TIMEOUT)  # the rounds may take long; forming the group may not
            results = _serve(built, on_round, checkpoints, started)
        finally:
            dist.destroy_process_group()
        context.join()
    except BaseException:
        for process in context.processes:  # only the workers this call started
            if process.is_alive():
                process.terminate()
        raise
    return results


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def run_from_environment(job: TrainJob, on_round: Callable[[RoundRecord], None] | None = None,
                         checkpoints: Checkpointer | None = None,
                         simulator: Simulator | None = None) -> DistributedResult | None:
    """Join the group torchrun started: rank 0 serves and returns the result, the others work and return None.

    The world must be P + 1 processes (`torchrun --nnodes N --nproc-per-node K` with N K = P + 1).
    `simulator` as in `run_spawned` (every rank builds one: the workers keep their partitions of it).
    """
    _check_job(job)
    world_size, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    if world_size != job.config.n_workers + 1:
        raise TrainingError(f"torchrun started {world_size} processes but {job.config.n_workers} workers need "
                            f"{job.config.n_workers + 1} (one more for the PS, rank 0).")
    started = time.perf_counter()
    simulator = simulator or build_simulator(job)
    dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=world_size,
                            timeout=COLLECTIVE_TIMEOUT)
    try:
        if rank:
            _work(simulator, rank - 1)
            return None
        return _serve([simulator], on_round, checkpoints, started)[0]
    finally:
        dist.destroy_process_group()
