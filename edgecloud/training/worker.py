"""One training worker on an MQTT broker: `edgecloud train-worker --broker URL --id N`.

It holds only its own partitions, `held_partitions(code, N)`: on the server's job it rebuilds the run's
split from the seed (as `robust_training.runners.torch_distributed` does) and frees the rest, or, with
a data folder (`--data-dir`), reads just those partitions from their files
(`edgecloud.training.partition_files`) and sizes the model from the data set's layout, never loading
the set. Either way it scales its updates by the server's partition sizes, sent with the job, so both
give the same bits. A data folder that does not fit the job ends the worker (PartitionFileError).
Each round it computes `simulator.worker_message` from the model it was sent and publishes the message,
its partitions' start losses and its compute time on its own per-sender topic. A round it already
answered (the server sends a round again when an answer is late, e.g. after a broker restart) is
answered from the cached reply, so every replica of a round is the same bits.

The handler on paho's network thread only queues; computing runs in `run`'s thread. A restarted worker
says hello, gets the job, and joins at the next round the server sends. With `keep_serving` a worker
outlives the run: after the server's stop it says hello again and serves the next server's job (a
device that trains whenever a PS asks).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecloud.errors import EdgecloudError
from edgecloud.training.partition_files import PartitionFileError, check_data_dir, load_partition
from edgecloud.training.protocol import (SERVER, ProtocolError, TrainingJob, hello_message, job_id_of, message_type,
                                         parse_job, parse_partition_sizes, parse_round, ready_message,
                                         received_message, sender_of, update_message, worker_name)
from edgecloud.transport.mqtt import MqttTransport
from edgecloud.transport.topics import DEFAULT_DEPLOYMENT, inbox_filter, sender_topic
from edgecloud.transport.wire import Message
from robust_training.attacks import DataAttack
from robust_training.codes import Code
from robust_training.data import Dataset, dataset_layout, load_dataset
from robust_training.losses import Objective
from robust_training.models import make_objective
from robust_training.simulator import Simulator, held_partitions, partition_scale, worker_message

logger = logging.getLogger(__name__)

HELLO_INTERVAL_S = 1.0  # until the server answers (it may start after the workers)


@dataclass
class _Share:
    """What this worker keeps of a job: its partitions (and their poisoned copies for a data attack)."""

    job: TrainingJob
    objective: Objective
    code: Code | None
    message_scale: np.ndarray
    own: dict[int, Dataset]
    poisoned: dict[int, Dataset]
    n_params: int


def rebuild_simulator(job: TrainingJob) -> Simulator:
    """The run's simulator from names and the config alone: the same split, scale and start model everywhere."""
    train, test = load_dataset(job.dataset, seed=job.config.seed)
    return Simulator(make_objective(job.model, train), train, test, job.config)


def _share_of(message: Message, worker: int, data_dir: Path | None) -> _Share:
    """This worker's share of the job in `message`: generated from the seed, or read from `data_dir`."""
    job = parse_job(message)
    if worker >= job.config.n_workers:
        raise ProtocolError(f"worker id {worker} is outside 0..{job.config.n_workers - 1} of this job.")
    code, _, attack = job.config.build()
    sizes = parse_partition_sizes(message, job.config.n_workers if code is None else code.n_partitions)
    if data_dir is None:
        simulator = rebuild_simulator(job)
        if simulator.partition_sizes != sizes:
            raise ProtocolError(f"the server's partition sizes {sizes} are not this seed's split "
                                f"{simulator.partition_sizes}.")
        objective = simulator.objective
        own = {p: simulator.partitions[p] for p in held_partitions(code, worker)}
    else:
        layout = dataset_layout(job.dataset)
        objective = make_objective(job.model, layout)
        own = {p: load_partition(data_dir, p, layout, sizes[p]) for p in held_partitions(code, worker)}
    poisoned = {p: attack.poison(data) for p, data in own.items()} if isinstance(attack, DataAttack) else own
    return _Share(job, objective, code, partition_scale(sizes), own, poisoned, objective.n_params)


class TrainingWorker:
    """Worker `index` of the deployment, until `stop` is set or the server says stop."""

    def __init__(self, broker_url: str, index: int, deployment: str = DEFAULT_DEPLOYMENT,
                 keep_serving: bool = False, data_dir: Path | None = None) -> None:
        """`data_dir`: read the partitions from there (checked now, before connecting) instead of
        generating them."""
        if index < 0:
            raise EdgecloudError(f"a worker id must be >= 0, got {index}.")
        if data_dir is not None:
            check_data_dir(data_dir)
        self.data_dir = data_dir
        self.index = index
        self.name = worker_name(index)
        self.deployment = deployment
        self.keep_serving = keep_serving
        self.transport = MqttTransport(broker_url, client_id=self.name)
        self._inbox: queue.Queue[Message] = queue.Queue()
        self._to_server = sender_topic(deployment, SERVER, self.name)
        self._share: _Share | None = None
        self._answered: tuple[int, Message] | None = None  # the last round answered, for repeats

    def _on_message(self, message: Message, topic: str) -> None:
        try:
            if sender_of(message, topic) != SERVER:
                raise ProtocolError(f"{self.name} takes orders from {SERVER!r} only, not {message.sender!r}.")
        except EdgecloudError as error:
            logger.warning("%s dropped a message: %s", self.name, error)
            return
        self._inbox.put(message)

    def run(self, stop: threading.Event, on_ready: Callable[[], None] = lambda: None) -> None:
        """Serve rounds until `stop` or the server's stop; `on_ready` once connected and listening."""
        with self.transport:
            self.transport.subscribe_messages(inbox_filter(self.deployment, self.name), self._on_message)
            on_ready()
            next_hello_s = 0.0
            while not stop.is_set():
                if self._share is None and time.monotonic() >= next_hello_s:
                    self.transport.publish_message(self._to_server, hello_message(self.index))
                    next_hello_s = time.monotonic() + HELLO_INTERVAL_S
                try:
                    message = self._inbox.get(timeout=0.1)
                except queue.Empty:
                    continue
                try:
                    if self._handle(message):
                        return
                except PartitionFileError:
                    raise  # this worker's own data is unusable: say so and stop, retrying cannot help
                except EdgecloudError as error:
                    logger.warning("%s ignored a %s message: %s", self.name, message_type(message), error)

    def _handle(self, message: Message) -> bool:
        """Act on one server message; True when told to stop."""
        kind, job_id = message_type(message), job_id_of(message)
        known = self._share is not None and self._share.job.job_id == job_id
        if kind == "job" and not known:
            self._share, self._answered = _share_of(message, self.index, self.data_dir), None
            job = self._share.job
            logger.info("%s holds partitions %s of job %s", self.name, sorted(self._share.own), job.job_id)
            self.transport.publish_message(self._to_server, ready_message(self.index, job.job_id))
        elif kind == "round" and known:
            self._answer(message)
        elif kind == "round":  # a round of a run this worker has no data for (restarted, or a new server)
            self._share = None
        elif kind == "stop" and known:
            logger.info("%s: the server finished job %s", self.name, job_id)
            self._share, self._answered = None, None
            return not self.keep_serving
        return False

    def _answer(self, message: Message) -> None:
        share = self._share
        assert share is not None
        round_index, tau, adversarial, params = parse_round(message, share.n_params)
        self.transport.publish_message(self._to_server, received_message(self.index, share.job.job_id, round_index))
        if self._answered is None or self._answered[0] != round_index:
            started = time.perf_counter()
            update, start_losses = worker_message(share.objective, share.job.config, share.code, share.message_scale,
                                                  self.index,
                                                  share.poisoned if adversarial else share.own,
                                                  np.array(params), round_index, tau)
            compute_s = time.perf_counter() - started
            self._answered = (round_index, update_message(self.index, share.job.job_id, round_index, update,
                                                          start_losses, compute_s))
        self.transport.publish_message(self._to_server, self._answered[1])
