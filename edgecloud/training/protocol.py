"""What the parameter server and the workers say to each other over MQTT, in our wire format.

Identities and topics are serving's (`edgecloud.transport.topics`): the PS is `ps`, worker N is
`worker-N`, and a message from X to Y goes to `edgecloud/<deployment>/<Y>/in/<X>`, so the fleet ACL
(`edgecloud.transport.broker.device_acl`) lets a worker publish only as itself. Receivers check that the
header's sender is the topic's last level and that it is the identity they expect.

The exchange, every message one wire `Message` (JSON header + raw float64 tensors, never pickle):

    worker -> ps   hello   (meta type=hello)                 until a job arrives; again after a restart
    ps -> worker   job     (meta: job id, dataset, model, the SimulationConfig as JSON, partition sizes)
    worker -> ps   ready   once it holds its partitions (rebuilt from the seed and its id, or read from
                           its --data-dir and checked against the sizes)
    ps -> worker   round   (meta: job id, round, tau, adversarial flag; tensor `params`)
    worker -> ps   received (meta: job id, round)           on receipt, before computing
    worker -> ps   update  (meta: job id, round, compute_s; tensors `message`, `start_losses`)
    ps -> worker   stop

The job id is fresh per server run, so a worker never answers a round of a run it has no data for (it
says hello instead and gets the job).
"""

from __future__ import annotations

import dataclasses
import math
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edgecloud.errors import EdgecloudError
from edgecloud.transport.topics import parse_sender_topic
from edgecloud.transport.wire import DEFAULT_LIMITS, Message
from robust_training.errors import TrainingError
from robust_training.simulator import SimulationConfig

SERVER = "ps"
WORKER_PREFIX = "worker-"
_CONFIG_FIELDS = {field.name for field in dataclasses.fields(SimulationConfig)}
# The model and the message are one float64 tensor each; the header and the framing need far less.
HEADER_ROOM_BYTES = 64 * 2**10


class ProtocolError(EdgecloudError):
    """A training message that does not follow the protocol (wrong sender, round, shape...)."""


@dataclass(frozen=True)
class TrainingJob:
    """What a worker rebuilds its share of the run from: names, the config and the run's id; no data."""

    dataset: str
    model: str
    config: SimulationConfig
    job_id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)


@dataclass(frozen=True)
class Update:
    """One worker's answer to one round, checked."""

    worker: int
    round_index: int
    message: np.ndarray
    start_losses: np.ndarray
    compute_s: float
    wire_bytes: int


def worker_name(index: int) -> str:
    return f"{WORKER_PREFIX}{index}"


def worker_index(name: str, n_workers: int) -> int | None:
    """N of `worker-N` when 0 <= N < n_workers (canonical spelling only), else None."""
    digits = name.removeprefix(WORKER_PREFIX)
    if name == digits or not digits.isdigit() or str(int(digits)) != digits or int(digits) >= n_workers:
        return None
    return int(digits)


def sender_of(message: Message, topic: str) -> str:
    """The sender the topic names, refused unless the header says the same (the ACL checks the topic)."""
    _, _, from_topic = parse_sender_topic(topic)
    if message.sender != from_topic:
        raise ProtocolError(f"a message on {topic} claims to come from {message.sender!r}.")
    return from_topic


def check_model_fits(n_params: int, max_message_bytes: int = DEFAULT_LIMITS.max_message_bytes) -> None:
    """The model travels as one message each way: refuse, before any process starts, one the wire limit cannot carry."""
    needed = 8 * n_params + HEADER_ROOM_BYTES
    if needed > max_message_bytes:
        raise EdgecloudError(f"the model has {n_params} parameters ({8 * n_params / 2**20:.1f} MiB as float64), more "
                             f"than one wire message of {max_message_bytes / 2**20:.0f} MiB carries; the MQTT runner "
                             "does not chunk models (use --runner torch or a smaller model).")


def _meta(message: Message, key: str, kind: type) -> Any:
    value = message.meta.get(key)
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ProtocolError(f"meta {key!r} of a message from {message.sender!r} must be an integer.")
    if kind is not int and not isinstance(value, kind):
        raise ProtocolError(f"meta {key!r} of a message from {message.sender!r} must be a {kind.__name__}.")
    return value


def message_type(message: Message) -> str:
    return str(message.meta.get("type", ""))


def job_id_of(message: Message) -> str | None:
    value = message.meta.get("job_id")
    return value if isinstance(value, str) else None


# -- server -> worker ---------------------------------------------------------------------------------

def job_message(job: TrainingJob, partition_sizes: list[int]) -> Message:
    """The job; `partition_sizes` (the server's split) let a worker that reads its partitions from files
    scale its updates as the server's simulator does and refuse files of another split."""
    return Message(kind="request", request_id=job.job_id, sender=SERVER,
                   meta={"type": "job", "job_id": job.job_id, "dataset": job.dataset, "model": job.model,
                         "config": asdict(job.config), "partition_sizes": partition_sizes})


def parse_partition_sizes(message: Message, n_partitions: int) -> list[int]:
    """The job's partition sizes: `n_partitions` positive integers."""
    sizes = message.meta.get("partition_sizes")
    if not isinstance(sizes, list) or len(sizes) != n_partitions or not all(
            isinstance(size, int) and not isinstance(size, bool) and size > 0 for size in sizes):
        raise ProtocolError(f"a job's partition_sizes must be {n_partitions} positive integers.")
    return sizes


def parse_job(message: Message) -> TrainingJob:
    """The job a server sent; ProtocolError for a config this code does not know."""
    config = message.meta.get("config")
    if not isinstance(config, dict) or set(config) != _CONFIG_FIELDS:
        raise ProtocolError("a job's config must name exactly the fields of SimulationConfig.")
    try:
        parsed = SimulationConfig(**config)
        parsed.validate()
    except (TypeError, TrainingError) as error:
        raise ProtocolError(f"the job's config is not valid: {error}") from None
    return TrainingJob(_meta(message, "dataset", str), _meta(message, "model", str), parsed,
                       _meta(message, "job_id", str))


def round_message(job_id: str, round_index: int, tau: int, adversarial: bool, params: np.ndarray) -> Message:
    return Message(kind="request", request_id=f"{job_id}:{round_index}", sender=SERVER,
                   tensors={"params": params},
                   meta={"type": "round", "job_id": job_id, "round": round_index, "tau": tau,
                         "adversarial": adversarial})


def parse_round(message: Message, n_params: int) -> tuple[int, int, bool, np.ndarray]:
    """(round index, tau, adversarial, params) of a round message, checked against the model's size."""
    params = message.tensors.get("params")
    if params is None or params.dtype != np.float64 or params.shape != (n_params,):
        raise ProtocolError(f"a round's params must be float64 of shape ({n_params},).")
    adversarial = message.meta.get("adversarial")
    if not isinstance(adversarial, bool):
        raise ProtocolError("a round's meta 'adversarial' must be true or false.")
    return _meta(message, "round", int), _meta(message, "tau", int), adversarial, params


def stop_message(job_id: str) -> Message:
    return Message(kind="request", request_id=f"{job_id}:stop", sender=SERVER, meta={"type": "stop", "job_id": job_id})


# -- worker -> server ---------------------------------------------------------------------------------

def hello_message(worker: int) -> Message:
    return Message(kind="result", request_id=uuid.uuid4().hex, sender=worker_name(worker), meta={"type": "hello"})


def ready_message(worker: int, job_id: str) -> Message:
    return Message(kind="result", request_id=f"{job_id}:ready", sender=worker_name(worker),
                   meta={"type": "ready", "job_id": job_id})


def received_message(worker: int, job_id: str, round_index: int) -> Message:
    return Message(kind="result", request_id=f"{job_id}:{round_index}:received", sender=worker_name(worker),
                   meta={"type": "received", "job_id": job_id, "round": round_index})


def update_message(worker: int, job_id: str, round_index: int, message: np.ndarray, start_losses: np.ndarray,
                   compute_s: float) -> Message:
    return Message(kind="result", request_id=f"{job_id}:{round_index}", sender=worker_name(worker),
                   tensors={"message": message, "start_losses": start_losses},
                   meta={"type": "update", "job_id": job_id, "round": round_index, "compute_s": compute_s})


def parse_update(message: Message, worker: int, n_params: int, n_held: int, wire_bytes: int) -> Update:
    """A worker's update, refused unless its tensors have the shapes its partitions give (float64)."""
    shapes = {"message": (n_params,), "start_losses": (n_held,)}
    for name, shape in shapes.items():
        tensor = message.tensors.get(name)
        if tensor is None or tensor.dtype != np.float64 or tensor.shape != shape:
            raise ProtocolError(f"{message.sender}'s update needs a float64 {name!r} of shape {shape}.")
    compute_s = message.meta.get("compute_s")
    if isinstance(compute_s, bool) or not isinstance(compute_s, int | float) or not math.isfinite(compute_s) \
            or compute_s < 0:
        raise ProtocolError(f"{message.sender}'s update needs a finite, non-negative compute_s.")
    return Update(worker, _meta(message, "round", int), message.tensors["message"], message.tensors["start_losses"],
                  float(compute_s), wire_bytes)
