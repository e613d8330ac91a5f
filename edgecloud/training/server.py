"""The parameter server on an MQTT broker: the simulator's rounds, played by worker processes.

Like `robust_training.runners.torch_distributed`'s rank 0, it plugs a round player into
`Simulator.run`, so adversary draws, stopping and records are the simulator's, and finishes each round
with `Simulator.server_step`: one seed gives one model whatever carries the messages. Adversaries are
simulated as there: the round message tells a worker whether it is adversarial (a data attack then
trains on poisoned labels) and a model attack forges the adversaries' messages on arrival.

Faults (docs/architecture.md §5). A round has a deadline; a worker that has not answered by then is an
erasure. The PS decodes around the erasures when the code (or the aggregator) still guarantees the
update for the worst placement of the configured adversaries (`edgecloud.training.erasures`) and
otherwise skips the round with a warning: the model stays, a wrong update is never applied. The
default deadline is a multiple of round 1's measured wall time with a floor; round 1 has a long one
(its workers start cold). A round message is sent again every RESEND_S to the workers that have not
answered, so a message lost while the broker was down (restarted, or a worker reconnecting) is not a
lost round; workers acknowledge a round on receipt (a few bytes) so that one busy computing is not
sent the model twice, and answer a repeated round from their cached reply.

Measured, not modelled: compute_s is the slowest answer's own compute time, transfer_s the rest of the
round's wall time up to the last answer, transfer_bytes every payload sent and received in the round.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edgecloud.errors import EdgecloudError
from edgecloud.training.deadlines import (DEADLINE_FACTOR, DEADLINE_FLOOR_S, FIRST_ROUND_DEADLINE_S, JOIN_TIMEOUT_S,
                                          RESEND_S)
from edgecloud.training.erasures import why_not_decodable
from edgecloud.training.protocol import (SERVER, ProtocolError, TrainingJob, Update, check_model_fits, job_id_of,
                                         job_message, message_type, parse_update, round_message, sender_of,
                                         stop_message, worker_index, worker_name)
from edgecloud.training.worker import rebuild_simulator
from edgecloud.transport.mqtt import MqttTransport
from edgecloud.transport.topics import DEFAULT_DEPLOYMENT, inbox_filter, sender_topic
from edgecloud.transport.wire import Message, decode, encode
from robust_training.checkpoint import Checkpointer
from robust_training.errors import DecodeError, TrainingError
from robust_training.simulator import (HonestUpdatesDiverged, PartitionUpdates, RoundRecord, SimulationResult,
                                       held_partitions)

logger = logging.getLogger(__name__)

POLL_S = 0.25  # how often a waiting PS looks at its own connection



@dataclass
class FleetRoundRecord(RoundRecord):
    """A round as the MQTT PS saw it: also who did not answer in time and whether it was skipped."""

    erased: list[int] = field(default_factory=list)
    skipped: bool = False


@dataclass(frozen=True)
class ServerOptions:
    deployment: str = DEFAULT_DEPLOYMENT
    round_deadline_s: float | None = None  # None: derived from round 1 (see the module docstring)
    join_timeout_s: float = JOIN_TIMEOUT_S
    checkpoints: Checkpointer | None = None  # the PS's state every K rounds, and resume (robust_training.checkpoint)


@dataclass
class FleetResult:
    """The PS's result plus the start-up time (until every worker held its data) the rounds do not include."""

    result: SimulationResult
    startup_s: float


class ParameterServer:
    """Connects as `ps`, hands the job to every worker that says hello, and plays the rounds."""

    def __init__(self, broker_url: str, job: TrainingJob, options: ServerOptions = ServerOptions()) -> None:
        job.config.validate()
        if job.config.adaptive_tau:
            raise TrainingError("--runner mqtt runs a fixed tau: adaptive tau needs every partition's gradients "
                                "at the PS (use --runner sim).")
        self.job = job
        self.options = options
        self.simulator = rebuild_simulator(job)
        self.n_workers = job.config.n_workers
        self.n_params = self.simulator.params0.size
        check_model_fits(self.n_params)
        self.transport = MqttTransport(broker_url, client_id=SERVER)
        self._held = [len(held_partitions(self.simulator.code, w)) for w in range(self.n_workers)]
        self._arrivals: queue.Queue[tuple[int, Message, int]] = queue.Queue()
        self._ready: set[int] = set()
        self._ready_changed = threading.Condition()
        self._bytes_lock = threading.Lock()
        self._bytes = 0
        self._closed = False
        self._round_deadline_s = options.round_deadline_s

    # -- connection and joining -------------------------------------------------------------------

    def connect(self) -> None:
        """Connect, listen, and offer the job to every worker at once: a worker still holding the job of a
        server that died (say a run resumed from its checkpoint) says no hello, and takes the new job
        only when it is sent one. Workers not connected yet get it when they say hello."""
        self.transport.connect()
        self.transport.subscribe(inbox_filter(self.options.deployment, SERVER), self._on_payload)
        offer = job_message(self.job, self.simulator.partition_sizes)
        for worker in range(self.n_workers):
            self._publish(worker, offer)

    def close(self) -> None:
        self._closed = True  # hellos still arriving are not answered by a transport that is gone
        self.transport.close()

    def _publish(self, worker: int, message: Message) -> None:
        payload = encode(message, self.transport.limits)
        with self._bytes_lock:
            self._bytes += len(payload)
        self.transport.publish(sender_topic(self.options.deployment, worker_name(worker), SERVER), payload)

    def _on_payload(self, payload: bytes, topic: str) -> None:
        """paho's thread: answer hellos at once (a worker may join mid-run), queue updates. The payload
        is decoded here rather than by `subscribe_messages` to count its bytes; its tensors are
        read-only views into the immutable `payload`, so an update is never copied twice."""
        try:
            message = decode(payload, self.transport.limits)
            worker = worker_index(sender_of(message, topic), self.n_workers)
            if worker is None:
                raise ProtocolError(f"{message.sender!r} is not one of the {self.n_workers} workers of this run.")
        except EdgecloudError as error:
            logger.warning("the PS dropped a message: %s", error)
            return
        kind = message_type(message)
        if kind == "hello" and not self._closed:
            self._publish(worker, job_message(self.job, self.simulator.partition_sizes))
        elif kind == "ready" and job_id_of(message) == self.job.job_id:
            logger.info("worker %d holds its partitions", worker)
            with self._ready_changed:
                self._ready.add(worker)
                self._ready_changed.notify_all()
        elif kind in ("update", "received") and job_id_of(message) == self.job.job_id:
            self._arrivals.put((worker, message, len(payload)))

    def wait_for_workers(self, timeout_s: float) -> None:
        """Block until every worker holds its data; EdgecloudError naming the missing ones after `timeout_s`."""
        with self._ready_changed:
            if not self._ready_changed.wait_for(lambda: len(self._ready) == self.n_workers, timeout_s):
                missing = sorted(set(range(self.n_workers)) - self._ready)
                raise EdgecloudError(f"worker(s) {', '.join(map(str, missing))} did not join within {timeout_s:g} s "
                                     f"(start them with `edgecloud train-worker --broker URL --id N`).")

    # -- rounds -----------------------------------------------------------------------------------

    def train(self, on_round: Callable[[RoundRecord], None] | None = None) -> SimulationResult:
        """Play the run's rounds (workers must have joined), then tell the workers to stop."""
        result = self.simulator.run(on_round=on_round, play_round=self._play_round,
                                    checkpoints=self.options.checkpoints, record_type=FleetRoundRecord)
        for worker in range(self.n_workers):
            self._publish(worker, stop_message(self.job.job_id))
        return result

    def _deadline_s(self) -> float:
        return FIRST_ROUND_DEADLINE_S if self._round_deadline_s is None else self._round_deadline_s

    def _play_round(self, params: np.ndarray, round_index: int, tau: int, adversaries: list[int], elapsed_s: float,
                    probe: bool) -> tuple[np.ndarray, PartitionUpdates | None, RoundRecord]:
        with self._bytes_lock:
            self._bytes = 0
        started = time.perf_counter()
        model = np.ascontiguousarray(params, dtype=np.float64)
        updates = self._collect(model, round_index, tau, adversaries, started + self._deadline_s())
        wall_s = time.perf_counter() - started
        if self._round_deadline_s is None:
            self._round_deadline_s = max(DEADLINE_FLOOR_S, DEADLINE_FACTOR * wall_s)
            logger.info("round deadline %.2f s (%g x round 1's %.3f s, at least %g s)", self._round_deadline_s,
                        DEADLINE_FACTOR, wall_s, DEADLINE_FLOOR_S)
        erased = sorted(set(range(self.n_workers)) - set(updates))
        messages = np.zeros((self.n_workers, self.n_params))
        for worker, update in updates.items():
            messages[worker] = update.message
        honest = sorted(set(updates) - set(adversaries))
        if not np.all(np.isfinite(messages[honest])):
            raise HonestUpdatesDiverged()
        compute_s = max((update.compute_s for update in updates.values()), default=0.0)
        with self._bytes_lock:
            sent_bytes = self._bytes
        record = FleetRoundRecord(round_index + 1, tau, self._start_loss(updates, honest), None, compute_s, 0.0,
                                  max(wall_s - compute_s, 0.0), elapsed_s, sorted(adversaries), [],
                                  sent_bytes + sum(update.wire_bytes for update in updates.values()), erased)
        config = self.simulator.config
        reason = why_not_decodable(self.simulator.code, self.simulator.aggregator, self.n_workers,
                                   config.n_adversaries, erased)
        if reason is None:
            try:
                new_params, _ = self.simulator.server_step(params, messages, adversaries, record, erased)
                return new_params, None, record
            except DecodeError as error:
                reason = str(error)
        logger.warning("round %d skipped, the model stays: %s", round_index + 1, reason)
        record.skipped = True
        record.elapsed_s += record.round_s
        if record.round % config.eval_every == 0 or record.round == config.rounds:
            record.test_accuracy = self.simulator.objective.accuracy(params, self.simulator.test.features,
                                                                     self.simulator.test.labels)
        return params, None, record

    def _collect(self, model: np.ndarray, round_index: int, tau: int, adversaries: list[int],
                 deadline: float) -> dict[int, Update]:
        """Send the round to every worker and gather the answers that arrive by `deadline`.

        Sent again (see the module docstring) to a worker that has not even acknowledged receipt within
        RESEND_S, and to every worker still pending after this PS's own connection came back: a
        worker busy computing has acknowledged and gets no second copy of the model."""
        adversarial = set(adversaries)
        pending = set(range(self.n_workers))
        received: set[int] = set()
        updates: dict[int, Update] = {}
        to_send, next_send = set(pending), time.perf_counter()
        connected = True
        while pending:
            now = time.perf_counter()
            if now >= deadline:
                break
            if not connected and self.transport.is_connected:
                to_send |= pending  # our session is new: whatever was in flight may be lost
            connected = self.transport.is_connected
            if now >= next_send:
                to_send |= pending - received
                next_send = now + RESEND_S
            for worker in sorted(to_send):
                self._publish(worker, round_message(self.job.job_id, round_index, tau, worker in adversarial, model))
            to_send.clear()
            try:
                worker, message, size = self._arrivals.get(timeout=max(min(deadline, next_send, now + POLL_S) - now, 0))
            except queue.Empty:
                continue
            if message_type(message) == "received":
                if message.meta.get("round") == round_index:
                    received.add(worker)
                continue
            try:
                update = parse_update(message, worker, self.n_params, self._held[worker], size)
            except EdgecloudError as error:
                logger.warning("the PS dropped worker %d's answer: %s", worker, error)
                continue
            if update.round_index == round_index and worker in pending:
                updates[worker] = update
                pending.discard(worker)
        return updates

    def _start_loss(self, updates: dict[int, Update], honest: list[int]) -> float:
        """Size-weighted start loss over the partitions some worker reported, an honest holder's value
        where there is one (as the torch runner logs it), the weights renormalised over those known."""
        n_partitions = len(self.simulator.partitions)
        losses, known = np.zeros(n_partitions), np.zeros(n_partitions, dtype=bool)
        for worker in [*sorted(set(updates) - set(honest)), *honest]:
            held = held_partitions(self.simulator.code, worker)
            losses[held] = updates[worker].start_losses
            known[held] = True
        weights = self.simulator.size_weights * known
        return float(weights @ losses / weights.sum()) if known.any() else float("nan")


def serve(broker_url: str, job: TrainingJob, options: ServerOptions = ServerOptions(),
          on_round: Callable[[RoundRecord], None] | None = None,
          workers_started: Callable[[], None] = lambda: None) -> FleetResult:
    """Connect, let `workers_started` start (or wait for) the workers, wait until all joined, train."""
    started = time.perf_counter()
    server = ParameterServer(broker_url, job, options)
    server.connect()
    try:
        workers_started()
        server.wait_for_workers(options.join_timeout_s)
        startup_s = time.perf_counter() - started
        return FleetResult(server.train(on_round), startup_s)
    finally:
        server.close()
