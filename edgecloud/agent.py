"""The device agent: runs one device's stages of a split model and passes activations on over MQTT.

Life of a request (ids and reply topic travel in our wire header, see `edgecloud.wire`):
1. the client sends the graph inputs (kind "request") to the source device's inbox
   `edgecloud/<deployment>/<source>/in/<client>` (every message goes to `<receiver>/in/<sender>`, see
   `edgecloud.topics`; a message whose header `sender` is not the topic's sender is rejected, and so is
   a `reply_to` that is not a base inbox of this deployment);
2. every agent keeps, per request id, the tensors that have arrived; a stage runs as soon as all its
   inputs are there, and its outputs go on to the devices that need them: one "activation" message per
   destination device, carrying all tensors for it;
3. the sink device answers the client's reply topic (kind "result") and, if it is not the source, tells
   the source it answered (a "result" with `meta.ack`), so the source can forget the request.

Why one executor thread per agent: paho delivers messages on its network thread, which must never block
(or keepalives and acknowledgements stall), so the callback only queues; stages run on the executor.
Requests still overlap across devices (pipelining): while the cloud runs request 1, the edge runs
request 2. The pending-request table is bounded and every entry expires at its deadline.

Fallback: the source agent loads every stage, not only its own. If the answer has not come back by
(deadline - margin), it runs whatever stages are still missing on the tensors it holds (the inputs, and
all it computed or received) and answers itself with `meta.fell_back = true`. The margin defaults to twice
the time the whole model took here at start-up plus 50 ms, so that the fallback ends before the deadline.
After such a fallback the source serves requests locally at once for `local_after_fallback_s` (a dead
cloud would otherwise cost every request its whole deadline); the first request after that window goes
the planned way again and so probes whether the other devices are back.
"""

from __future__ import annotations

import heapq
import logging
import queue
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

import numpy as np

from edgecloud.errors import EdgecloudError, TransportError, WireFormatError
from edgecloud.link_emulation import LinkEmulator
from edgecloud.mqtt import MqttTransport, TransportOptions
from edgecloud.stage_runner import StageRunner
from edgecloud.topics import inbox_filter, parse_device_topic, reply_topic, sender_topic
from edgecloud.trace import CLIENT, TraceEvent, encode_trace, merge, parse_trace, stage_event, transfer_event
from edgecloud.wire import DEFAULT_LIMITS, Message, WireLimits
from partitioner.costs import Link
from partitioner.manifest import SplitManifest, StageOutput, TensorSpec, concrete_shape

logger = logging.getLogger(__name__)

DEFAULT_DEPLOYMENT = "default"
_STOP = object()


@dataclass(frozen=True)
class AgentOptions:
    """How an agent serves; the defaults suit one host running every agent of a small deployment."""

    deployment: str = DEFAULT_DEPLOYMENT
    threads: int = 1  # onnxruntime intra-op threads per session
    max_pending: int = 256  # requests held at once; more are refused (backpressure)
    fallback: bool = True  # source device only: answer by itself when downstream is late
    fallback_margin_s: float | None = None  # None: 2 x the whole model's measured time + 50 ms
    local_after_fallback_s: float = 5.0  # after a fallback, serve locally at once this long, then probe again
    request_ttl_s: float = 60.0  # lifetime of a request that carries no deadline
    inbox_size: int = 4096  # messages queued between the network thread and the executor
    emulated_links: Mapping[str, Link] = field(default_factory=dict)  # destination device -> link


@dataclass
class _Request:
    """One request's state on this device."""

    request_id: str
    reply_to: str | None
    deadline: float | None
    expires_s: float
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    done_stages: set[int] = field(default_factory=set)
    trace: list[TraceEvent] = field(default_factory=list)
    answered: bool = False


def zeros_for(specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    """Inputs of the right dtype and shape (symbolic dimensions taken as 1) for a warm-up run."""
    return {spec.name: np.zeros(concrete_shape(spec.shape), spec.dtype) for spec in specs}


class DeviceAgent:
    """Serves one device of a split model until stopped. Use as a context manager or start()/stop()."""

    def __init__(self, manifest: SplitManifest, device: str, broker_url: str,
                 options: AgentOptions = AgentOptions(),
                 transport_options: TransportOptions = TransportOptions(),
                 limits: WireLimits = DEFAULT_LIMITS) -> None:
        if device not in manifest.devices:
            raise EdgecloudError(f"device {device!r} is not in the plan; its devices are {', '.join(manifest.devices)}")
        self.manifest = manifest
        self.device = device
        self.options = options
        self.is_source = device == manifest.source
        self.is_sink = device == manifest.sink
        self.stages = manifest.stages_of(device)
        self.topic = inbox_filter(options.deployment, device)
        self._transport = MqttTransport(broker_url, client_id=f"{options.deployment}-{device}",
                                        options=transport_options, limits=limits)
        self._expected = {item.tensor for stage in self.stages for item in stage.inputs}
        if self.is_sink:
            self._expected |= {item.tensor for item in manifest.sink_inputs}
        self._runner: StageRunner | None = None
        self.fallback_margin_s = 0.0
        self._inbox: queue.Queue[object] = queue.Queue(options.inbox_size)
        self._pending: OrderedDict[str, _Request] = OrderedDict()
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._timers: list[tuple[float, str]] = []
        self._local_until_s = 0.0  # set by a fallback: downstream is presumed down until then
        self._executor: threading.Thread | None = None
        self._emulator: LinkEmulator | None = None
        self.stats: dict[str, int] = defaultdict(int)

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        """Load the sessions, warm them up, connect, subscribe: once this returns, the agent serves."""
        fallback = self.is_source and self.options.fallback
        loaded = self.manifest.stages if fallback else self.stages
        self._runner = StageRunner(self.manifest, loaded, self.options.threads)
        self._warm_up(fallback)
        if self.options.emulated_links:
            self._emulator = LinkEmulator(self.options.emulated_links, self._publish_to_device)  # type: ignore[arg-type]
        self._executor = threading.Thread(target=self._serve, name=f"agent-{self.device}", daemon=True)
        self._executor.start()
        try:
            self._transport.connect()
            self._transport.subscribe_messages(self.topic, self._on_message)
        except BaseException:
            self.stop()
            raise
        logger.info("agent %s serving %d stage(s) on %s%s", self.device, len(self.stages), self.topic,
                    f" (fallback margin {self.fallback_margin_s * 1e3:.0f} ms)" if fallback else "")
        return self

    def stop(self) -> None:
        """Disconnect, then let the executor finish the message in hand and exit (idempotent)."""
        self._transport.close()
        executor, self._executor = self._executor, None
        if executor is not None:
            self._inbox.put(_STOP)
            executor.join()
            logger.info("agent %s stopped (%s)", self.device, dict(self.stats))
        emulator, self._emulator = self._emulator, None
        if emulator is not None:
            emulator.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    def _warm_up(self, fallback: bool) -> None:
        """First onnxruntime runs are slow (allocation, kernel choice): pay that before serving. The
        source also times the whole model here, which sizes its fallback margin."""
        assert self._runner is not None
        if fallback:
            tensors = zeros_for(self.manifest.graph_inputs)
            self._runner.run_remaining(dict(tensors))
            started_s = time.perf_counter()
            self._runner.run_remaining(tensors)
            whole_s = time.perf_counter() - started_s
            margin = self.options.fallback_margin_s
            self.fallback_margin_s = 2.0 * whole_s + 0.05 if margin is None else margin
            return
        self._runner.warm_up()

    # -- network thread -------------------------------------------------------------------------

    def _on_message(self, message: Message, topic: str) -> None:
        """paho's thread: timestamp and queue, nothing else (it must never block)."""
        try:
            self._inbox.put_nowait((message, topic, time.time()))
        except queue.Full:
            self.stats["dropped"] += 1
            logger.warning("agent %s dropped request %s: its inbox of %d messages is full", self.device,
                           message.request_id, self.options.inbox_size)

    # -- executor thread ------------------------------------------------------------------------

    def _serve(self) -> None:
        next_sweep_s = time.time() + 0.5
        while True:
            now = time.time()
            wait_s = min(next_sweep_s, self._timers[0][0] if self._timers else next_sweep_s) - now
            try:
                item = self._inbox.get(timeout=max(wait_s, 0.0))
            except queue.Empty:
                item = None
            if item is _STOP:
                return
            if item is not None:
                message, topic, received_s = item  # type: ignore[misc]
                try:
                    self._handle(message, topic, received_s)
                except Exception:  # one bad request must not end the agent
                    logger.exception("agent %s failed on request %s", self.device, message.request_id)
                    self._fail(message.request_id, "internal error in the agent; see its log")
            now = time.time()
            while self._timers and self._timers[0][0] <= now:
                _, request_id = heapq.heappop(self._timers)
                self._fall_back(request_id)
            if now >= next_sweep_s:
                self._expire(now)
                next_sweep_s = now + 0.5

    def _handle(self, message: Message, topic: str, received_s: float) -> None:
        problem = self._routing_problem(message, topic)
        if problem is not None:
            self._reject(message, problem)
        elif message.kind == "request":
            self._on_request(message, received_s)
        elif message.kind == "activation":
            self._on_activation(message, received_s)
        elif message.kind == "result" and message.meta.get("ack") is True and self.is_source:
            self._finish(message.request_id)
        else:
            self._reject(message, f"a {message.kind!r} message is not for an agent's inbox")

    def _routing_problem(self, message: Message, topic: str) -> str | None:
        """Why the header cannot be trusted, or None. The topic's last level is the sender the broker
        authenticated (with `device_acl`); `reply_to` is where results go, so it must be a base inbox of
        this deployment, not some other topic the replier may write to."""
        topic_sender = topic.rpartition("/")[2]
        if message.sender != topic_sender:
            return f"its header names sender {message.sender!r} but it came on {topic}, the topic of {topic_sender!r}"
        if message.reply_to is not None:
            try:
                deployment, _ = parse_device_topic(message.reply_to)
            except TransportError as error:
                return f"its reply_to is not usable: {error}"
            if deployment != self.options.deployment:
                return f"its reply_to {message.reply_to!r} is outside deployment {self.options.deployment!r}"
        return None

    def _reject(self, message: Message, reason: str) -> None:
        self.stats["rejected"] += 1
        logger.warning("agent %s rejected message %s from %s: %s", self.device, message.request_id,
                       message.sender, reason)

    def _on_request(self, message: Message, received_s: float) -> None:
        if not self.is_source:
            return self._reject(message, f"requests go to the source device {self.manifest.source!r}")
        if message.request_id in self._pending or message.request_id in self._finished:
            return self._reject(message, "its request id is already in use")
        problem = self.manifest.input_problem(message.tensors)
        if problem is not None:
            self._reject(message, problem)
            return self._reply_error(message.request_id, message.reply_to, problem)
        if len(self._pending) >= self.options.max_pending:
            reason = f"the device holds {self.options.max_pending} requests already"
            self._reject(message, reason)
            return self._reply_error(message.request_id, message.reply_to, reason)
        self.stats["requests"] += 1
        request = self._new_request(message)
        self._note_arrival(request, message, received_s)
        if self.options.fallback and time.time() < self._local_until_s:
            request.tensors.update(message.tensors)
            return self._fall_back(message.request_id)
        if self.options.fallback and message.deadline is not None and message.reply_to is not None:
            heapq.heappush(self._timers, (message.deadline - self.fallback_margin_s, message.request_id))
        self._hand_on(request, self.manifest.source_outputs, dict(message.tensors), from_stage=None)
        self._advance(request)
        return None

    def _on_activation(self, message: Message, received_s: float) -> None:
        if message.sender not in self.manifest.devices:
            return self._reject(message, f"sender {message.sender!r} is not a device of this deployment")
        unexpected = set(message.tensors) - self._expected
        if unexpected:
            return self._reject(message, f"this device needs no tensor named {sorted(unexpected)[0]!r}")
        request = self._pending.get(message.request_id)
        if request is None:
            if message.request_id in self._finished:
                logger.debug("agent %s ignored a late message for finished request %s", self.device,
                             message.request_id)
                return None
            if len(self._pending) >= self.options.max_pending:
                return self._reject(message, f"the device holds {self.options.max_pending} requests already")
            request = self._new_request(message)
        self._note_arrival(request, message, received_s)
        request.tensors.update(message.tensors)
        self._advance(request)
        return None

    def _new_request(self, message: Message) -> _Request:
        expires_s = message.deadline if message.deadline is not None else time.time() + self.options.request_ttl_s
        request = _Request(message.request_id, message.reply_to, message.deadline, expires_s)
        self._pending[message.request_id] = request
        return request

    def _note_arrival(self, request: _Request, message: Message, received_s: float) -> None:
        merge(request.trace, parse_trace(message.meta.get("trace")))
        sent_s = message.meta.get("sent_s")
        from_stage = message.meta.get("from_stage")
        if isinstance(sent_s, int | float):
            n_bytes = sum(int(array.nbytes) for array in message.tensors.values())
            sender = CLIENT if message.kind == "request" else message.sender
            merge(request.trace, [transfer_event(sender, self.device, float(sent_s), received_s, n_bytes,
                                                 from_stage if isinstance(from_stage, int) else None)])

    def _advance(self, request: _Request) -> None:
        """Run every stage of this device whose inputs are all present, until none is; answer if sink."""
        assert self._runner is not None
        progressed = True
        while progressed:
            progressed = False
            for stage in self.stages:
                if stage.index in request.done_stages or not self._runner.is_ready(stage, request.tensors):
                    continue
                started_s = time.time()
                try:
                    outputs = self._runner.run(stage, request.tensors)
                except EdgecloudError as error:
                    logger.warning("agent %s: request %s: %s", self.device, request.request_id, error)
                    self._reply_error(request.request_id, request.reply_to, str(error))
                    self._finish(request.request_id)
                    return
                request.done_stages.add(stage.index)
                self.stats["stages_run"] += 1
                request.trace.append(stage_event(stage.index, self.device, started_s, time.time()))
                self._hand_on(request, stage.outputs, outputs, from_stage=stage.index)
                progressed = True
        if self.is_sink and not request.answered and all(item.tensor in request.tensors
                                                         for item in self.manifest.sink_inputs):
            self._answer(request, fell_back=False)
        if request.answered or (not self.is_source and not self.is_sink
                                and len(request.done_stages) == len(self.stages)):
            self._finish(request.request_id)

    def _hand_on(self, request: _Request, outputs: list[StageOutput], values: Mapping[str, np.ndarray],
                 from_stage: int | None) -> None:
        """Keep `values` here for local stages and send each other device one message with its tensors."""
        request.tensors.update(values)
        outgoing: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
        for item in outputs:
            for device in sorted(item.devices(self.manifest.sink) - {self.device}):
                outgoing[device][item.tensor] = values[item.tensor]
        for device, tensors in outgoing.items():
            self._send(device, Message(kind="activation", request_id=request.request_id, sender=self.device,
                                       tensors=tensors, reply_to=request.reply_to, deadline=request.deadline,
                                       meta={"trace": encode_trace(request.trace), "sent_s": time.time(),
                                             "from_stage": from_stage}))

    def _send(self, device: str, message: Message) -> None:
        if self._emulator is not None:
            self._emulator.submit(device, message, sum(int(array.nbytes) for array in message.tensors.values()))
        else:
            self._publish_to_device(device, message)

    def _publish_to_device(self, device: str, message: Message) -> None:
        try:
            self._transport.publish_message(sender_topic(self.options.deployment, device, self.device), message)
        except (TransportError, WireFormatError) as error:
            # The request is not lost: the source's fallback (or the client's deadline) covers it.
            logger.warning("agent %s could not send request %s to %s: %s", self.device, message.request_id,
                           device, error)

    def _answer(self, request: _Request, fell_back: bool) -> None:
        request.answered = True
        if request.reply_to is None:
            logger.warning("agent %s: request %s has no reply topic; its answer is dropped", self.device,
                           request.request_id)
            return
        self.stats["fell_back" if fell_back else "answered"] += 1
        outputs = {spec.name: request.tensors[spec.name] for spec in self.manifest.graph_outputs}
        meta = {"trace": encode_trace(request.trace), "sent_s": time.time(), "fell_back": fell_back}
        self._publish_reply(request.reply_to, Message(kind="result", request_id=request.request_id,
                                                      sender=self.device, tensors=outputs, meta=meta))
        if not self.is_source:
            self._send(self.manifest.source, Message(kind="result", request_id=request.request_id,
                                                     sender=self.device, meta={"ack": True}))

    def _reply_error(self, request_id: str, reply_to: str | None, reason: str) -> None:
        if reply_to is not None:
            self._publish_reply(reply_to, Message(kind="error", request_id=request_id, sender=self.device,
                                                  meta={"error": reason}))

    def _publish_reply(self, reply_to: str, message: Message) -> None:
        try:
            self._transport.publish_message(reply_topic(reply_to, self.device), message)
        except (TransportError, WireFormatError) as error:
            logger.warning("agent %s could not answer request %s: %s", self.device, message.request_id, error)

    def _fail(self, request_id: str, reason: str) -> None:
        request = self._pending.get(request_id)
        if request is not None:
            self._reply_error(request_id, request.reply_to, reason)
            self._finish(request_id)

    def _fall_back(self, request_id: str) -> None:
        """Run the missing stages here and answer: the deadline is near and no answer came, or a recent
        fallback says the other devices are down. Either way the next `local_after_fallback_s` seconds of
        requests are served here at once, instead of each waiting for its deadline; the first request
        after that probes the other devices again."""
        request = self._pending.get(request_id)
        if request is None or request.answered:
            return
        assert self._runner is not None
        now = time.time()
        if now >= self._local_until_s:  # a deadline fallback, not one served in local mode
            logger.warning("agent %s: no answer in time for request %s; serving locally for the next %g s",
                           self.device, request_id, self.options.local_after_fallback_s)
            self._local_until_s = now + self.options.local_after_fallback_s
        try:
            ran = self._runner.run_remaining(request.tensors)
        except EdgecloudError as error:
            self._reply_error(request_id, request.reply_to, str(error))
            self._finish(request_id)
            return
        request.trace.extend(stage_event(index, self.device, started_s, ended_s) for index, started_s, ended_s in ran)
        logger.info("agent %s fell back on request %s: ran stage(s) %s itself", self.device, request_id,
                    [index for index, _, _ in ran])
        self._answer(request, fell_back=True)
        self._finish(request_id)

    def _finish(self, request_id: str) -> None:
        self._pending.pop(request_id, None)
        self._finished[request_id] = None
        while len(self._finished) > 4 * self.options.max_pending:
            self._finished.popitem(last=False)

    def _expire(self, now: float) -> None:
        expired = [request.request_id for request in self._pending.values() if request.expires_s <= now]
        for request_id in expired:
            self.stats["expired"] += 1
            logger.info("agent %s dropped request %s: its deadline passed", self.device, request_id)
            self._finish(request_id)
