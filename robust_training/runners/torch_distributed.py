"""The simulator's training as P + 1 processes over torch.distributed (gloo): rank 0 is the PS.

Each round rank 0 broadcasts a control vector (go, round, tau, adversary mask) and the model, then
gathers one float64 payload per worker: its message, its partitions' start losses and its measured
compute time. Workers compute with `simulator.worker_message` from only the partitions they hold, and
rank 0 finishes the round with `Simulator.server_step`, so a run here trains the model the simulator
trains (up to the rounding of per-worker vs all-at-once encoding). Only float64 tensors cross the wire
(`gather`/`broadcast`), never pickled objects.

Where the simulator models transfer time, this measures it: a round's wall time at rank 0 from the
broadcast to the last payload, minus the slowest worker's compute. Start-up (spawning, importing
torch, joining the group) is reported apart from the rounds.

Two ways in: `run_spawned` starts the P workers with torch.multiprocessing on this machine and is rank
0 itself; `run_from_environment` joins a group torchrun started (RANK, WORLD_SIZE, MASTER_ADDR, ...).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from robust_training.attacks import DataAttack
from robust_training.data import load_dataset
from robust_training.errors import TrainingError
from robust_training.models import make_objective
from robust_training.simulator import (HonestUpdatesDiverged, PartitionUpdates, RoundRecord, SimulationConfig,
                                       SimulationResult, Simulator, held_partitions, worker_message)

logger = logging.getLogger(__name__)

COLLECTIVE_TIMEOUT = timedelta(minutes=10)  # one round's slowest worker must report within this
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


def _simulator(job: TrainJob) -> Simulator:
    train, test = load_dataset(job.dataset, seed=job.config.seed)
    return Simulator(make_objective(job.model, train), train, test, job.config)


def _check_job(job: TrainJob) -> None:
    job.config.validate()
    if job.config.adaptive_tau:
        raise TrainingError("--runner torch runs a fixed tau: adaptive tau needs every partition's gradients "
                            "at the PS (use --runner sim).")


def _message_length(simulator: Simulator) -> int:
    """Length of one worker's message: a code encodes d-vectors into one d-vector (`Code.encode`)."""
    return simulator.params0.size


def _payload_length(simulator: Simulator) -> int:
    n_held = max(len(held_partitions(simulator.code, w)) for w in range(simulator.config.n_workers))
    return _message_length(simulator) + n_held + 1


class _ServerRounds:
    """Rank 0's round player for `Simulator.run`: broadcast, gather, then the simulator's PS step."""

    def __init__(self, simulator: Simulator) -> None:
        self.simulator = simulator
        self.n_workers = simulator.config.n_workers
        self.message_length = _message_length(simulator)
        self.payload_length = _payload_length(simulator)

    def __call__(self, params: np.ndarray, round_index: int, tau: int, adversaries: list[int], elapsed_s: float,
                 probe: bool) -> tuple[np.ndarray, PartitionUpdates | None, RoundRecord]:
        started = time.perf_counter()
        control = np.zeros(_CONTROL_HEAD + self.n_workers)
        control[:_CONTROL_HEAD] = (1.0, round_index, tau)
        control[_CONTROL_HEAD + np.asarray(adversaries, dtype=np.int64)] = 1.0
        model = np.ascontiguousarray(params, dtype=np.float64)
        dist.broadcast(torch.from_numpy(control), src=0)
        dist.broadcast(torch.from_numpy(model.copy()), src=0)
        gathered = [torch.empty(self.payload_length, dtype=torch.float64) for _ in range(self.n_workers + 1)]
        dist.gather(torch.zeros(self.payload_length, dtype=torch.float64), gather_list=gathered, dst=0)
        wall_s = time.perf_counter() - started
        payloads = torch.stack(gathered[1:]).numpy()
        messages = np.ascontiguousarray(payloads[:, :self.message_length])
        honest = np.setdiff1d(np.arange(self.n_workers), adversaries)
        if not np.all(np.isfinite(messages[honest])):
            raise HonestUpdatesDiverged()
        compute_s = float(payloads[:, -1].max())
        link_bytes = (control.nbytes + model.nbytes + self.payload_length * 8) * self.n_workers
        record = RoundRecord(round_index + 1, tau, self._start_loss(payloads, honest), None, compute_s, 0.0,
                             max(wall_s - compute_s, 0.0), elapsed_s, sorted(adversaries), [], link_bytes)
        new_params, record = self.simulator.server_step(params, messages, adversaries, record)
        return new_params, None, record

    def _start_loss(self, payloads: np.ndarray, honest: np.ndarray) -> float:
        """Size-weighted start loss over the partitions, each read from an honest holder's payload where
        there is one (a label-flipper reports its poisoned losses; the simulator logs the honest ones)."""
        losses = np.zeros(len(self.simulator.partitions))
        adversarial = np.setdiff1d(np.arange(self.n_workers), honest)
        for worker in [*adversarial, *honest]:
            held = held_partitions(self.simulator.code, worker)
            losses[held] = payloads[worker, self.message_length:self.message_length + len(held)]
        return float(self.simulator.size_weights @ losses)

    def stop(self) -> None:
        dist.broadcast(torch.zeros(_CONTROL_HEAD + self.n_workers, dtype=torch.float64), src=0)


def _serve(job: TrainJob, on_round: Callable[[RoundRecord], None] | None, started: float) -> DistributedResult:
    """Rank 0: wait until every worker holds its data (the end of start-up), then play the rounds."""
    simulator = _simulator(job)
    rounds = _ServerRounds(simulator)
    try:
        dist.barrier()
        startup_s = time.perf_counter() - started
        result = simulator.run(on_round=on_round, play_round=rounds)
        rounds.stop()
    except RuntimeError as error:  # gloo's errors: a worker died or stopped answering
        first_line = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
        raise TrainingError(f"the process group failed, typically because a worker process died ({first_line}).") \
            from error
    return DistributedResult(result, startup_s)


def _work(job: TrainJob, worker: int) -> None:
    """A worker's loop: it keeps only its own partitions and answers every round until told to stop."""
    simulator = _simulator(job)
    config = simulator.config
    own = {p: simulator.partitions[p] for p in held_partitions(simulator.code, worker)}
    objective, code, scale, attack = simulator.objective, simulator.code, simulator.message_scale, simulator.attack
    poisoned = {p: attack.poison(data) for p, data in own.items()} if isinstance(attack, DataAttack) else own
    d, payload_length = simulator.params0.size, _payload_length(simulator)
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
        compute_s = time.perf_counter() - started
        payload = np.zeros(payload_length)
        payload[:message.size] = message
        payload[message.size:message.size + start_losses.size] = start_losses
        payload[-1] = compute_s
        dist.gather(torch.from_numpy(payload), dst=0)


def _spawned_worker(index: int, job: TrainJob, init_method: str) -> None:
    torch.set_num_threads(1)  # P + 1 processes share the machine's cores
    dist.init_process_group("gloo", init_method=init_method, rank=index + 1, world_size=job.config.n_workers + 1,
                            timeout=COLLECTIVE_TIMEOUT)
    try:
        _work(job, index)
    finally:
        dist.destroy_process_group()


def _free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_spawned(job: TrainJob, on_round: Callable[[RoundRecord], None] | None = None) -> DistributedResult:
    """Train with P worker processes on this machine (loopback gloo); this process is rank 0, the PS."""
    _check_job(job)
    job.config.build()  # an impossible code or attack fails here, before P processes start
    started = time.perf_counter()
    init_method = f"tcp://127.0.0.1:{_free_loopback_port()}"
    context = mp.start_processes(_spawned_worker, args=(job, init_method), nprocs=job.config.n_workers,
                                 join=False, start_method="spawn")
    try:
        dist.init_process_group("gloo", init_method=init_method, rank=0, world_size=job.config.n_workers + 1,
                                timeout=COLLECTIVE_TIMEOUT)
        try:
            result = _serve(job, on_round, started)
        finally:
            dist.destroy_process_group()
        context.join()
    except BaseException:
        for process in context.processes:  # only the workers this call started
            if process.is_alive():
                process.terminate()
        raise
    return result


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def run_from_environment(job: TrainJob,
                         on_round: Callable[[RoundRecord], None] | None = None) -> DistributedResult | None:
    """Join the group torchrun started: rank 0 serves and returns the result, the others work and return None.

    The world must be P + 1 processes (`torchrun --nnodes N --nproc-per-node K` with N K = P + 1).
    """
    _check_job(job)
    world_size, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    if world_size != job.config.n_workers + 1:
        raise TrainingError(f"torchrun started {world_size} processes but {job.config.n_workers} workers need "
                            f"{job.config.n_workers + 1} (one more for the PS, rank 0).")
    started = time.perf_counter()
    dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=world_size,
                            timeout=COLLECTIVE_TIMEOUT)
    try:
        if rank:
            _work(job, rank - 1)
            return None
        return _serve(job, on_round, started)
    finally:
        dist.destroy_process_group()
