"""The device agent: runs one device's stages of a split model and passes activations on over MQTT.

Life of a request (ids and reply topic travel in our wire header, see `edgecloud.transport.wire`):
1. the client sends the graph inputs (kind "request") to the source device's inbox
   `edgecloud/<deployment>/<source>/in/<client>` (every message goes to `<receiver>/in/<sender>`, see
   `edgecloud.transport.topics`; a message whose header `sender` is not the topic's sender is rejected, and so is
   a `reply_to` that is not a base inbox of this deployment);
2. every agent keeps, per request id, the tensors that have arrived; a stage runs as soon as all its
   inputs are there, and its outputs go on to the devices that need them: one "activation" message per
   destination device, carrying all tensors for it;
3. the sink device answers the client's reply topic (kind "result") and, if it is not the source, tells
   the source it answered (a "result" with `meta.ack`), so the source can forget the request. Only the
   sink's acknowledgement of a request the source holds counts: a forged one would make the source drop
   the request and skip its fallback.

What a peer can make an agent hold is bounded on the agent's own terms: every deadline is turned into
one on our clock (`edgecloud.serving.deadlines`: a relative budget, never a sender's absolute time) and capped
at `request_ttl_s`; only a client's request opens an entry on the source, and on other devices each
sending device may open at most `max_pending` entries, with activations that carry a tensor this device
takes from that sender. A request whose deadline passed before it arrived is answered with an error.
Rejections are logged one line each, rate-limited (`edgecloud.serving.log_limit`).

Why one executor thread per agent: paho delivers messages on its network thread, which must never block
(or keepalives and acknowledgements stall), so the callback queues; stages run on the executor. A
message that can run no stage here (a sink's answer, a forward by a device whose stages do not take
those tensors, an acknowledgement), no larger than INLINE_MAX_BYTES, is handled on paho's thread
itself when the executor is idle: routing and one publish, no onnxruntime. That saves the thread
hand-off (a wake-up and a GIL switch) on those hops; one lock keeps the request table single-writer.
What a hop costs beyond the transport is measured by bench/agent_hop.py; on two shared cores every
microsecond of Python in any process is on the critical path, so the per-message work is kept small:
topics are built once per destination (and per client inbox), the inbox is a `queue.SimpleQueue`, a
stage's outgoing trace is encoded once for all its destinations, and the header's absolute `deadline`
is no longer sent (receivers use `meta.budget_s`; one from an older sender is still honoured, see
`edgecloud.serving.deadlines`). A broker's refusal of a message (MQTT 5 PUBACK) is counted in
`stats["refused"]` and logged through the rate limit.
Requests still overlap across devices (pipelining): while the cloud runs request 1, the edge runs
request 2. The pending-request table is bounded and every entry expires at its deadline.

Fallback: the source agent loads every stage, not only its own. If the answer has not come back by
(deadline - margin), it runs whatever stages are still missing on the tensors it holds (the inputs, and
all it computed or received) and answers itself with `meta.fell_back = true`. The margin defaults to twice
the time the whole model took here at start-up plus 50 ms, so that the fallback ends before the deadline.
A request whose budget leaves no time for the planned path is served here at once. When
`misses_before_local` requests in a row got no answer although the other devices had time to give one
(the planned path's time, see `edgecloud.serving.deadlines`), the source serves requests locally at once for
`local_after_fallback_s` (a dead cloud would otherwise cost every request its whole deadline); the first
request after that window goes the planned way again and so probes whether the other devices are back.
A late or short request is no evidence about the link and never opens that window.

Plan sets (`edgecloud plan --adaptive`, see `edgecloud.serving.plan_choice`): the agent holds every
interval's stages (one `_PlanView` each); the source picks the plan of each new request from its link
estimate (`edgecloud.serving.link_estimate`, fed by the timings its messages carry and by probes sent
when it holds no request) and tags the request with it; every message of the request carries the tag
and every agent runs that plan's stages for it, so a switch never mixes two plans in one request.
"""

from __future__ import annotations

import heapq
import logging
import queue
import threading
import time
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

import numpy as np

from edgecloud.serving.deadlines import (SenderClocks, default_deadline_s, expected_path_s, fallback_margin_s,
                                 finite_float)
from edgecloud.errors import EdgecloudError, TransportError, WireFormatError
from edgecloud.serving.link_emulation import LinkEmulator
from edgecloud.serving.link_estimate import MIN_CLASS_SAMPLES, LinkEstimator
from edgecloud.serving.log_limit import RateLimitedLog
from edgecloud.serving.plan_choice import PlanSelector, ServedPlans, single_plan
from edgecloud.serving.stage_runner import StageRunner
from edgecloud.serving.trace import CLIENT, TraceEvent, TraceLog, stage_event, transfer_event
from edgecloud.transport.mqtt import MqttTransport, TransportOptions
from edgecloud.transport.topics import DEFAULT_DEPLOYMENT, inbox_filter, parse_device_topic, reply_topic, sender_topic
from edgecloud.transport.wire import DEFAULT_LIMITS, Message, WireLimits
from devices.profiles import LinkProfile
from partitioner.split.manifest import SplitManifest, StageOutput, TensorSpec, concrete_shape

logger = logging.getLogger(__name__)

_STOP = object()
_WAKE = object()  # a timer was set off the executor: it recomputes how long to sleep
MAX_REPLY_TOPICS = 1024  # checked reply_to topics remembered with the topic we answer them on
INLINE_MAX_BYTES = 256 * 2**10  # larger messages go to the executor: encoding them would hold paho's thread
# A large probe takes about PROBE_S at the estimated rate: long enough to time, short enough to cost little.
PROBE_S = 0.004
PROBE_MIN_LARGE_BYTES = 16 * 2**10  # 1.3 ms at 100 Mbit/s, 26 ms at 5 Mbit/s
PROBE_MAX_BYTES = 256 * 2**10
# Every other large probe is twice the size: two large probes, each after an idle gap, are a pair that
# cancels what a token bucket lets through at once (edgecloud.serving.link_estimate.BURST_FREE_BYTES).
PROBE_LARGE_FACTORS = (1, 2)
IDLE_PROBE_S = 1.0  # the executor's timer probes only a source idle this long (see DeviceAgent._maybe_probe)


def large_probe_bytes(rate_bps: float, index: int) -> int:
    """The `index`-th large probe's size at an estimated `rate_bps`: about PROBE_S of transfer, rounded
    to a power of two (so that probes repeat exact sizes while the estimate wobbles: the estimator's
    size classes need two samples each), at least PROBE_MIN_LARGE_BYTES, times PROBE_LARGE_FACTORS in turn."""
    base = max(rate_bps * PROBE_S / 8, PROBE_MIN_LARGE_BYTES)
    base = 2 ** int(np.round(np.log2(base)))
    return int(min(PROBE_LARGE_FACTORS[index % len(PROBE_LARGE_FACTORS)] * base, PROBE_MAX_BYTES))


@dataclass(frozen=True)
class AgentOptions:
    """How an agent serves; the defaults suit one host running every agent of a small deployment."""

    deployment: str = DEFAULT_DEPLOYMENT
    threads: int = 1  # onnxruntime intra-op threads per session
    max_pending: int = 256  # requests held at once; more are refused (backpressure)
    fallback: bool = True  # source device only: answer by itself when downstream is late
    fallback_margin_s: float | None = None  # None: 2 x the whole model's measured time + 50 ms
    local_after_fallback_s: float = 5.0  # after misses, serve locally at once this long, then probe again
    misses_before_local: int = 2  # answers in a row the other devices failed to give before going local
    predicted_s: float | None = None  # the plan's predicted latency: sizes the default deadline
    request_ttl_s: float = 60.0  # the longest any request is held, whatever its deadline says
    inbox_size: int = 4096  # messages queued between the network thread and the executor
    emulated_links: Mapping[str, LinkProfile] = field(default_factory=dict)  # destination device -> link
    probe_interval_s: float = 0.5  # adaptive source: the least time between two probes of an idle link
    # ... and while the plan in use sends nothing across, so that probes are the only samples:
    local_probe_interval_s: float = 0.1  # ... after a step or a switch; doubling per probe while the link holds
    switching: bool = True  # adaptive source: follow the link estimate (False: stay on `start_plan`)
    start_plan: int | None = None  # adaptive source: the plan served until the link is measured (None: the last)


@dataclass
class _Request:
    """One request's state on this device."""

    request_id: str
    reply_to: str | None
    deadline: float  # on this host's clock (see edgecloud.serving.deadlines)
    opened_by: str  # the sender whose message created the entry: each sender has a quota
    handed_on_s: float | None = None  # source: when the inputs went on to the other devices
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    done_stages: set[int] = field(default_factory=set)
    trace: TraceLog = field(default_factory=TraceLog)
    answered: bool = False
    plan: int = 0  # which of the served plans it runs under (see edgecloud.serving.plan_choice)


def zeros_for(specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    """Inputs of the right dtype and shape (symbolic dimensions taken as 1) for a warm-up run."""
    return {spec.name: np.zeros(concrete_shape(spec.shape), spec.dtype) for spec in specs}


class _PlanView:
    """What one plan asks of this device: its stages, which tensors each sender may send, and their sessions."""

    def __init__(self, manifest: SplitManifest, device: str) -> None:
        self.manifest = manifest
        self.stages = manifest.stages_of(device)
        inputs = [item for stage in self.stages for item in stage.inputs]
        if device == manifest.sink:
            inputs += manifest.sink_inputs
        expected: dict[str, set[str]] = defaultdict(set)  # an activation carrying anything else is refused
        for item in inputs:
            sender = manifest.source if item.origin is None else item.origin.device
            if sender != device:
                expected[sender].add(item.tensor)
        self.expected_from = dict(expected)
        stage_inputs = {item.tensor for stage in self.stages for item in stage.inputs}
        self.forward_only_from = frozenset(sender for sender, tensors in self.expected_from.items()
                                           if not tensors & stage_inputs)  # their tensors feed no stage here
        self.inputs_feed_no_stage = not {spec.name for spec in manifest.graph_inputs} & stage_inputs
        self.stages_of = {name: {stage.index for stage in manifest.stages_of(name)} for name in manifest.devices}
        # nothing of a request under this plan crosses a link: the source's probes are its only samples
        self.local_only = manifest.sink == device and all(stage.device == device for stage in manifest.stages)
        self.runner: StageRunner | None = None


class DeviceAgent:
    """Serves one device of a split model (or of every plan of a plan set) until stopped. Use as a
    context manager or start()/stop()."""

    def __init__(self, manifest: SplitManifest | ServedPlans, device: str, broker_url: str,
                 options: AgentOptions = AgentOptions(),
                 transport_options: TransportOptions = TransportOptions(),
                 limits: WireLimits = DEFAULT_LIMITS) -> None:
        self.plans = manifest if isinstance(manifest, ServedPlans) else single_plan(manifest, options.predicted_s)
        manifest = self.plans.manifests[0]  # devices, source, sink, graph inputs and outputs: shared by all plans
        if device not in manifest.devices:
            raise EdgecloudError(f"device {device!r} is not in the plan; its devices are {', '.join(manifest.devices)}")
        self.manifest = manifest
        self.device = device
        self.options = options
        self.is_source = device == manifest.source
        self.is_sink = device == manifest.sink
        self._views = [_PlanView(plan, device) for plan in self.plans.manifests]
        self.stages = self._views[0].stages
        self.topic = inbox_filter(options.deployment, device)
        self._device_topics = {name: sender_topic(options.deployment, name, device)
                               for name in manifest.devices if name != device}
        self._reply_topics: dict[str, str] = {}  # a checked reply_to -> where this device answers it
        self._transport = MqttTransport(broker_url, client_id=f"{options.deployment}-{device}",
                                        options=transport_options, limits=limits)
        self._state_lock = threading.Lock()  # the request table has one writer at a time (see the docstring)
        self._executor_wakes_s = 0.0  # when the idle executor looks at its timers next
        self.link = LinkEstimator()  # source: the link to the other devices, from its own traffic and probes
        start = options.start_plan if options.start_plan is not None else len(self.plans.manifests) - 1
        self.selector = PlanSelector(self.plans.bounds_bps, start)
        self._last_probe_s = 0.0
        self._large_probes = 0  # large probes sent: their size alternates by PROBE_LARGE_FACTORS
        self._blind_probes = 0  # probes sent without an estimate: each size MIN_CLASS_SAMPLES times in a row
        # while the plan keeps everything local: the gap before the next probe, doubled after each one
        # up to probe_interval_s while there is an estimate, back to local_probe_interval_s after a step or
        # a switch (the steps and the plan it was reset at)
        self._local_gap_s = self.options.local_probe_interval_s
        self._gap_reset_at: tuple[int, int] = (0, self.selector.current)
        self._last_finished_s = 0.0  # when the source's last request ended (probes go right after one)
        self.fallback_margin_s = 0.0
        self.default_deadline_s = options.request_ttl_s  # the source derives its own in _warm_up
        self._path_s = 0.0  # source: how long the other devices may take before a missing answer counts
        self._misses = 0  # requests in a row the other devices did not answer in time
        self._clocks = SenderClocks()
        self._opened: Counter[str] = Counter()
        self._log = RateLimitedLog(logger)
        self._inbox: queue.SimpleQueue[object] = queue.SimpleQueue()  # bounded by _on_message
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
        for view in self._views:
            view.runner = StageRunner(view.manifest, view.manifest.stages if fallback else view.stages,
                                      self.options.threads)
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
        logger.info("agent %s serving %d plan(s), %d stage(s) on %s%s", self.device, len(self._views),
                    sum(len(view.stages) for view in self._views), self.topic,
                    f" (fallback margin {self.fallback_margin_s * 1e3:.0f} ms, default deadline "
                    f"{self.default_deadline_s * 1e3:.0f} ms)" if fallback else "")
        return self

    def stop(self) -> None:
        """Disconnect, then let the executor finish the message in hand and exit (idempotent)."""
        self._transport.close()
        executor, self._executor = self._executor, None
        if executor is not None:
            self._inbox.put(_STOP)
            executor.join()
            self._log.flush()
            logger.info("agent %s stopped (%s)", self.device, dict(self.stats))
        emulator, self._emulator = self._emulator, None
        if emulator is not None:
            emulator.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    def use_plan(self, index: int) -> None:
        """Source of a plan set: serve new requests under plan `index` from now on (an operator's pin, or
        a test's switch); the link estimate moves it again unless `options.switching` is off. Requests
        already under way finish under the plan they started with."""
        if not 0 <= index < len(self._views):
            raise EdgecloudError(f"there is no plan {index + 1}; this agent serves {len(self._views)}")
        with self._state_lock:
            self.selector.current = index

    def _warm_up(self, fallback: bool) -> None:
        """First onnxruntime runs are slow (allocation, kernel choice): pay that before serving. The
        source also times the whole model here, which sizes its fallback margin."""
        runners = [view.runner for view in self._views if view.runner is not None]
        if fallback:
            tensors = zeros_for(self.manifest.graph_inputs)
            for runner in runners:
                runner.run_remaining(dict(tensors))
            started_s = time.perf_counter()
            runners[0].run_remaining(tensors)
            whole_s = time.perf_counter() - started_s
            margin = self.options.fallback_margin_s
            self.fallback_margin_s = fallback_margin_s(whole_s) if margin is None else margin
            self.default_deadline_s = default_deadline_s(self.options.predicted_s, whole_s, self.fallback_margin_s)
            self._path_s = expected_path_s(self.options.predicted_s, whole_s)
            return
        for runner in runners:
            runner.warm_up()

    # -- network thread -------------------------------------------------------------------------

    def _on_message(self, message: Message, topic: str) -> None:
        """paho's thread: handle a message that runs no stage at once if the executor is idle, else
        timestamp and queue it (this thread must never block)."""
        if (self._inbox.qsize() == 0 and self._runs_no_stage(message)
                and self._state_lock.acquire(blocking=False)):
            try:
                self.stats["handled_inline"] += 1
                self._handle_safely(message, topic, time.time())
            finally:
                self._state_lock.release()
        elif self._inbox.qsize() < self.options.inbox_size:
            self._inbox.put((message, topic, time.time()))
        else:
            self.stats["dropped"] += 1
            self._log.warning("agent %s dropped request %s: its inbox of %d messages is full", self.device,
                              message.request_id, self.options.inbox_size)

    def _runs_no_stage(self, message: Message) -> bool:
        """Whether handling `message` certainly runs no onnxruntime stage here (nor the fallback)."""
        if sum(int(array.nbytes) for array in message.tensors.values()) > INLINE_MAX_BYTES or self.plans.adaptive:
            return False  # adaptive: plans are chosen, and probes answered, on the executor
        view = self._views[0]
        if message.kind == "activation":
            return message.sender in view.forward_only_from
        if message.kind == "request":
            if not view.inputs_feed_no_stage:
                return False
            if not self.options.fallback:
                return True
            budget_s = finite_float(message.meta.get("budget_s"))  # a short one is served locally at once
            return time.time() >= self._local_until_s and (budget_s is None or budget_s > 2 * self.fallback_margin_s)
        return message.kind == "result"

    # -- executor thread ------------------------------------------------------------------------

    def _serve(self) -> None:
        next_sweep_s = time.time() + 0.5
        while True:
            now = time.time()
            with self._state_lock:
                self._executor_wakes_s = min(next_sweep_s, self._timers[0][0] if self._timers else next_sweep_s)
            try:
                item = self._inbox.get(timeout=max(self._executor_wakes_s - now, 0.0))
            except queue.Empty:
                item = None
            if item is _STOP:
                return
            if item is _WAKE:
                item = None
            with self._state_lock:
                if item is not None:
                    self._handle_safely(*item)  # type: ignore[misc]
                now = time.time()
                while self._timers and self._timers[0][0] <= now:
                    _, request_id = heapq.heappop(self._timers)
                    self._fall_back(request_id)
                if now >= next_sweep_s:
                    self._expire(now)
                    self._maybe_probe(now, just_finished=False)
                    self._log.flush()
                    next_sweep_s = now + 0.5

    def _handle_safely(self, message: Message, topic: str, received_s: float) -> None:
        """`_handle`, with the lock held; one bad request must not end the agent, nor flood its log."""
        try:
            self._handle(message, topic, received_s)
        except Exception as error:
            logger.debug("agent %s failed on request %s", self.device, message.request_id, exc_info=True)
            self._log.warning("agent %s failed on request %s: %s: %s", self.device, message.request_id,
                              type(error).__name__, error)
            self._fail(message.request_id, "internal error in the agent; see its log")

    def _handle(self, message: Message, topic: str, received_s: float) -> None:
        problem = self._routing_problem(message, topic)
        if problem is not None:
            self._reject(message, problem)
        elif message.kind == "request":
            self._on_request(message, received_s)
        elif message.kind == "activation" and message.meta.get("probe") is True:
            self._on_probe(message, received_s)
        elif message.kind == "activation" and message.meta.get("probe_echo") is True:
            self._on_probe_echo(message, received_s)
        elif message.kind == "activation":
            self._on_activation(message, received_s)
        elif message.kind == "result" and message.meta.get("ack") is True:
            self._on_ack(message, received_s)
        else:
            self._reject(message, f"a {message.kind!r} message is not for an agent's inbox")

    def _routing_problem(self, message: Message, topic: str) -> str | None:
        """Why the header cannot be trusted, or None. The topic's last level is the sender the broker
        authenticated (with `device_acl`); `reply_to` is where results go, so it must be a base inbox of
        this deployment, not some other topic the replier may write to."""
        topic_sender = topic.rpartition("/")[2]
        if message.sender != topic_sender:
            return f"its header names sender {message.sender!r} but it came on {topic}, the topic of {topic_sender!r}"
        if message.reply_to is not None and message.reply_to not in self._reply_topics:
            try:
                deployment, _ = parse_device_topic(message.reply_to)
            except TransportError as error:
                return f"its reply_to is not usable: {error}"
            if deployment != self.options.deployment:
                return f"its reply_to {message.reply_to!r} is outside deployment {self.options.deployment!r}"
            if len(self._reply_topics) >= MAX_REPLY_TOPICS:
                self._reply_topics.clear()
            self._reply_topics[message.reply_to] = reply_topic(message.reply_to, self.device)
        return None

    def _reject(self, message: Message, reason: str) -> None:
        self.stats["rejected"] += 1
        self._log.warning("agent %s rejected message %s from %s: %s", self.device, message.request_id,
                          message.sender, reason)

    def _on_ack(self, message: Message, received_s: float) -> None:
        """The sink answered the client: forget the request. Only the sink may say so, and only for a
        request held here; anyone else could otherwise cancel a request and its fallback."""
        if not self.is_source or self.is_sink:
            return self._reject(message, "this device takes no acknowledgements: it answers its requests itself"
                                if self.is_source else "acknowledgements go to the source device")
        if message.sender != self.manifest.sink:
            return self._reject(message, f"only the sink device {self.manifest.sink!r} acknowledges requests")
        if message.request_id not in self._pending:
            if message.request_id not in self._finished:
                self._reject(message, "it acknowledges a request this device does not hold")
            return None
        self._misses = 0
        self._note_arrival(self._pending[message.request_id], message, received_s)  # the link's samples
        self._finish(message.request_id)
        return None

    # -- the link estimate and the plan (adaptive serving, see edgecloud.serving.plan_choice) ------

    def _message_plan(self, message: Message) -> int | None:
        """The plan a message runs under: the one it names, or a single plan's when it names none."""
        tag = message.meta.get("plan")
        if tag is None and not self.plans.adaptive:
            return 0
        return self.plans.index_of(tag)

    def _choose_plan(self, now_s: float) -> int:
        """The source's plan for a new request: the interval holding the link's estimate (hysteresis
        in PlanSelector); the starting plan until the link is measured."""
        if not self.plans.adaptive or not self.options.switching:
            return self.selector.current
        estimate = self.link.estimate(now_s)
        if estimate is not None:
            logger.debug("agent %s: link estimate %.2f Mbit/s from %d pairs at %.4f", self.device,
                         estimate.bandwidth_bps / 1e6, estimate.pairs, now_s)
            before = self.selector.current
            if self.selector.update(estimate.bandwidth_bps) != before:
                self.stats["switches"] += 1
                logger.info("agent %s: link estimate %.1f Mbit/s, %.2f ms: plan %d -> %d", self.device,
                            estimate.bandwidth_bps / 1e6, estimate.latency_s * 1e3, before + 1, self.selector.current + 1)
        return self.selector.current

    def _learn_link(self, events: list[TraceEvent], message: Message, received_s: float) -> None:
        """Source, adaptive: samples of the link from a message's own hop and the hops of ours that its
        trace reports (each once: the trace log keeps only new events)."""
        for event in events:
            if event.kind == "transfer" and event.sender == self.device and event.device in self._device_topics:
                self.link.add("up", event.bytes, event.start_s, event.end_s)
        sent_s = finite_float(message.meta.get("sent_s"))
        if sent_s is not None and message.sender in self._device_topics:
            self.link.add("down", sum(int(array.nbytes) for array in message.tensors.values()), sent_s, received_s)

    def _maybe_probe(self, now_s: float, just_finished: bool = True) -> None:
        """Source, adaptive: when no request of ours is on the link and none was probed for
        `probe_interval_s`, right after one of its requests ended (`just_finished`) or, from the executor's
        timer, only once it has been idle for IDLE_PROBE_S: a probe from the timer could land just before
        the next request, and its echo then arrived during that request, on the edge's CPU quota (the
        source's own requests ran up to +13 % slower than the same plan pinned, with +1 ms of edge CPU
        a request), while right after a request the source is idle for as long as requests are apart
        (while the plan in use sends nothing across, as when it keeps everything on the
        source, `local_probe_interval_s` after a step or a switch, doubling per probe up to
        `probe_interval_s` while the link holds: the probes are then the only samples, and quick ones
        after a change, but each costs the edge's CPU quota; with no estimate, as right after a step, every
        local_probe_interval_s whatever the plan, each size twice in a row: on all-cloud at 100 -> 5 Mbit/s
        the source otherwise waited 8 requests for two probes of one size, and one size alone never made
        a pair of classes on all-edge, where probes are the only traffic: no estimate after 5 -> 50), send each other device one probe of about PROBE_S at the estimated
        rate (`large_probe_bytes`, two sizes in turn): the estimator then has sizes besides the plan's own
        traffic, and pairs of large probes cancel a token bucket (a plan's activation against a tiny probe
        read 50 Mbit/s ~10 % high on the testbed). No tiny probe beside it: the echo is the tiny sample
        (down), and each message costs the edge's CPU quota (the source's 64 B probe and its echo made about
        half of the +2 ms of edge CPU per request that adaptive cost against the same plan pinned)."""
        if not self.plans.adaptive or not self.is_source or not self.options.switching or self._pending:
            return
        if just_finished:
            self._last_finished_s = now_s
        elif now_s - self._last_finished_s < IDLE_PROBE_S:
            return
        local = self._views[self.selector.current].local_only
        if (self.link.steps, self.selector.current) != self._gap_reset_at:
            self._gap_reset_at = (self.link.steps, self.selector.current)
            self._local_gap_s = self.options.local_probe_interval_s
        estimate = self.link.estimate(now_s)
        gap_s = self._local_gap_s if local else self.options.probe_interval_s
        if now_s - self._last_probe_s < (gap_s if estimate is not None else self.options.local_probe_interval_s):
            return
        if local and estimate is not None:  # no estimate (as right after a step): keep probing quickly
            self._local_gap_s = min(2 * self._local_gap_s, max(self.options.probe_interval_s, self._local_gap_s))
        if estimate is not None:
            n_bytes = large_probe_bytes(estimate.bandwidth_bps, self._large_probes)
            self._large_probes += 1
        else:  # as right after a step: each size twice in a row, so that four probes make a pair of classes
            n_bytes = large_probe_bytes(self.plans.bounds_bps[self.selector.current][0],
                                        self._blind_probes // MIN_CLASS_SAMPLES)
            self._blind_probes += 1
        self._last_probe_s = now_s
        self.stats["probes"] += 1
        for device in self._device_topics:
            self._send(device, Message(kind="activation", request_id=f"probe-{self.stats['probes']}",
                                       sender=self.device, tensors={"probe": np.zeros(n_bytes, np.uint8)},
                                       meta={"probe": True, "sent_s": time.time()}))

    def _on_probe(self, message: Message, received_s: float) -> None:
        """Another device: echo the source's probe with when it arrived (a tiny message: no amplification)."""
        sent_s = finite_float(message.meta.get("sent_s"))
        if message.sender != self.manifest.source or self.is_source or sent_s is None:
            return self._reject(message, "only the source device probes the link, with its send time")
        n_bytes = sum(int(array.nbytes) for array in message.tensors.values())
        self._send(message.sender, Message(kind="activation", request_id=message.request_id, sender=self.device,
                                           meta={"probe_echo": True, "sent_s": time.time(), "probe_sent_s": sent_s,
                                                 "probe_received_s": received_s, "probe_bytes": n_bytes}))
        return None

    def _on_probe_echo(self, message: Message, received_s: float) -> None:
        """Source: an echo gives two samples, the probe's way up and the echo's way down."""
        meta = message.meta
        probe_sent_s, probe_received_s = finite_float(meta.get("probe_sent_s")), finite_float(meta.get("probe_received_s"))
        n_bytes = meta.get("probe_bytes")
        if (not self.is_source or message.sender not in self._device_topics or probe_sent_s is None
                or probe_received_s is None or isinstance(n_bytes, bool) or not isinstance(n_bytes, int)
                or not 0 <= n_bytes <= PROBE_MAX_BYTES):
            return self._reject(message, "it is not an echo of a probe of this device")
        self.link.add("up", n_bytes, probe_sent_s, probe_received_s)
        self._learn_link([], message, received_s)
        return None

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
        request = self._new_request(message, received_s, self.default_deadline_s, self._choose_plan(received_s))
        if request is None:
            return self._reply_error(message.request_id, message.reply_to, "its deadline passed before it arrived")
        self.stats["requests"] += 1
        self._note_arrival(request, message, received_s)
        fall_back = self.options.fallback and message.reply_to is not None
        if fall_back and (time.time() < self._local_until_s
                          or request.deadline - self.fallback_margin_s <= time.time()):
            # Local mode, or too short a budget for the planned path: answer here at once.
            request.tensors.update(message.tensors)
            return self._fall_back(message.request_id)
        if fall_back:
            due_s = request.deadline - self.fallback_margin_s
            heapq.heappush(self._timers, (due_s, message.request_id))
            if due_s < self._executor_wakes_s and threading.current_thread() is not self._executor:
                self._inbox.put(_WAKE)  # handled inline: the sleeping executor must learn of this timer
        request.handed_on_s = time.time()
        self._hand_on(request, self._views[request.plan].manifest.source_outputs, dict(message.tensors),
                      from_stage=None)
        self._advance(request)
        return None

    def _on_activation(self, message: Message, received_s: float) -> None:
        plan = self._message_plan(message)
        if plan is None:
            return self._reject(message, f"it names plan {message.meta.get('plan')!r}, not one this device holds")
        problem = self._activation_problem(message, self._views[plan])
        if problem is not None:
            return self._reject(message, problem)
        request = self._pending.get(message.request_id)
        if request is None:
            if message.request_id in self._finished:
                logger.debug("agent %s ignored a late message for finished request %s", self.device,
                             message.request_id)
                return None
            if self.is_source:  # the client's request opened every request the source holds
                return self._reject(message, "the source holds no such request")
            if self._opened[message.sender] >= self.options.max_pending:
                return self._reject(message, f"{message.sender!r} has {self.options.max_pending} requests open "
                                             "here already")
            request = self._new_request(message, received_s, self.options.request_ttl_s, plan)
            if request is None:
                return None
        elif request.plan != plan:
            return self._reject(message, f"it runs under plan {plan + 1}, the request under plan {request.plan + 1}")
        else:
            present = set(message.tensors) & set(request.tensors)
            if present:
                return self._reject(message, f"this device already holds tensor {sorted(present)[0]!r} of the request")
            self._misses = 0  # the other devices answer
        self._note_arrival(request, message, received_s)
        request.tensors.update(message.tensors)
        self._advance(request)
        return None

    def _activation_problem(self, message: Message, view: _PlanView) -> str | None:
        """Why an activation is not one this device takes from its sender (by the manifest), or None."""
        if message.sender not in self.manifest.devices or message.sender == self.device:
            return f"sender {message.sender!r} is not another device of this deployment"
        if not message.tensors:
            return "it carries no tensor"
        unexpected = set(message.tensors) - view.expected_from.get(message.sender, set())
        if unexpected:
            return f"this device needs no tensor named {sorted(unexpected)[0]!r} from {message.sender!r}"
        from_stage = message.meta.get("from_stage")
        if from_stage is not None and (isinstance(from_stage, bool) or not isinstance(from_stage, int)
                                       or from_stage not in view.stages_of[message.sender]):
            return f"from_stage {from_stage!r} is not a stage of {message.sender!r}"
        return None

    def _new_request(self, message: Message, received_s: float, default_s: float, plan: int) -> _Request | None:
        """A pending entry with a deadline on our clock, at most `request_ttl_s` away; None (and the
        message rejected) when that deadline passed before the message arrived."""
        arrival = self._clocks.arrival(message.sender, message.meta, message.deadline, received_s, default_s)
        if arrival.deadline_s <= received_s:
            self.stats["late"] += 1
            self._reject(message, f"its deadline passed {(received_s - arrival.deadline_s) * 1e3:.0f} ms before it "
                                  f"arrived (it was {arrival.staleness_s * 1e3:.0f} ms late on the way)")
            return None
        deadline_s = min(arrival.deadline_s, received_s + self.options.request_ttl_s)
        request = _Request(message.request_id, message.reply_to, deadline_s, message.sender, plan=plan)
        self._pending[message.request_id] = request
        self._opened[message.sender] += 1
        return request

    def _note_arrival(self, request: _Request, message: Message, received_s: float) -> None:
        known = len(request.trace.events)
        request.trace.merge_raw(message.meta.get("trace"))
        if self.is_source and self.plans.adaptive:
            self._learn_link(request.trace.events[known:], message, received_s)
        sent_s = finite_float(message.meta.get("sent_s"))
        from_stage = message.meta.get("from_stage")  # checked by _activation_problem
        if sent_s is not None:
            n_bytes = sum(int(array.nbytes) for array in message.tensors.values())
            sender = CLIENT if message.kind == "request" else message.sender
            request.trace.add(transfer_event(sender, self.device, sent_s, received_s, n_bytes,
                                             from_stage if message.kind == "activation" else None))

    def _advance(self, request: _Request) -> None:
        """Run every stage of this device whose inputs are all present, until none is; answer if sink."""
        view = self._views[request.plan]
        assert view.runner is not None
        progressed = True
        while progressed:
            progressed = False
            for stage in view.stages:
                if stage.index in request.done_stages or not view.runner.is_ready(stage, request.tensors):
                    continue
                started_s = time.time()
                try:
                    outputs = view.runner.run(stage, request.tensors)
                except EdgecloudError as error:
                    self._log.warning("agent %s: request %s: %s", self.device, request.request_id, error)
                    self._reply_error(request.request_id, request.reply_to, str(error))
                    self._finish(request.request_id)
                    return
                request.done_stages.add(stage.index)
                self.stats["stages_run"] += 1
                request.trace.add(stage_event(stage.index, self.device, started_s, time.time()))
                self._hand_on(request, stage.outputs, outputs, from_stage=stage.index)
                progressed = True
        if self.is_sink and not request.answered and all(item.tensor in request.tensors
                                                         for item in view.manifest.sink_inputs):
            self._answer(request, fell_back=False)
        if request.answered or (not self.is_source and not self.is_sink
                                and len(request.done_stages) == len(view.stages)):
            self._finish(request.request_id)

    def _hand_on(self, request: _Request, outputs: list[StageOutput], values: Mapping[str, np.ndarray],
                 from_stage: int | None) -> None:
        """Keep `values` here for local stages and send each other device one message with its tensors."""
        request.tensors.update(values)
        outgoing: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
        for item in outputs:
            for device in sorted(item.devices(self.manifest.sink) - {self.device}):
                outgoing[device][item.tensor] = values[item.tensor]
        if not outgoing:
            return
        trace = request.trace.snapshot()  # once for every destination
        for device, tensors in outgoing.items():
            now = time.time()
            self._send(device, Message(kind="activation", request_id=request.request_id, sender=self.device,
                                       tensors=tensors, reply_to=request.reply_to,
                                       meta={"trace": trace, "sent_s": now, "budget_s": request.deadline - now,
                                             "from_stage": from_stage, "plan": self.plans.tag(request.plan)}))

    def _send(self, device: str, message: Message) -> None:
        if self._emulator is not None:
            self._emulator.submit(device, message, sum(int(array.nbytes) for array in message.tensors.values()))
        else:
            self._publish_to_device(device, message)

    def _publish_to_device(self, device: str, message: Message) -> None:
        self._publish(self._device_topics[device], message)

    def _publish(self, topic: str, message: Message) -> None:
        """Publish; a failure is logged (rate-limited), never raised: the request is not lost, the
        source's fallback (or the client's deadline) covers it."""
        try:
            acked = self._transport.publish_message(topic, message)
        except (TransportError, WireFormatError) as error:
            self._log.warning("agent %s could not send request %s to %s: %s", self.device, message.request_id,
                              topic, error)
            return
        acked.add_done_callback(lambda done: self._on_acked(done, message.request_id))

    def _on_acked(self, acked: Future[None], request_id: str) -> None:
        """paho's thread: an MQTT 5 broker refused a message (e.g. its ACL); counted and rate-limited."""
        error = acked.exception()
        if error is not None:
            self.stats["refused"] += 1
            self._log.warning("agent %s: the broker refused a message of request %s: %s", self.device, request_id, error)

    def _answer(self, request: _Request, fell_back: bool) -> None:
        request.answered = True
        if request.reply_to is None:
            self._log.warning("agent %s: request %s has no reply topic; its answer is dropped", self.device,
                              request.request_id)
            return
        self.stats["fell_back" if fell_back else "answered"] += 1
        outputs = {spec.name: request.tensors[spec.name] for spec in self.manifest.graph_outputs}
        trace, plan = request.trace.snapshot(), self.plans.tag(request.plan)
        meta = {"trace": trace, "sent_s": time.time(), "fell_back": fell_back, "plan": plan}
        self._publish_reply(request.reply_to, Message(kind="result", request_id=request.request_id,
                                                      sender=self.device, tensors=outputs, meta=meta))
        if not self.is_source:
            self._send(self.manifest.source, Message(kind="result", request_id=request.request_id,
                                                     sender=self.device,
                                                     meta={"ack": True, "sent_s": time.time(), "plan": plan,
                                                           # adaptive: the source learns the link from it
                                                           "trace": trace if self.plans.adaptive else None}))

    def _reply_error(self, request_id: str, reply_to: str | None, reason: str) -> None:
        if reply_to is not None:
            self._publish_reply(reply_to, Message(kind="error", request_id=request_id, sender=self.device,
                                                  meta={"error": reason}))

    def _publish_reply(self, reply_to: str, message: Message) -> None:
        topic = self._reply_topics.get(reply_to)
        if topic is None:  # checked by _routing_problem when it arrived, forgotten since (the cache was full)
            topic = reply_topic(reply_to, self.device)
        self._publish(topic, message)

    def _fail(self, request_id: str, reason: str) -> None:
        request = self._pending.get(request_id)
        if request is not None:
            self._reply_error(request_id, request.reply_to, reason)
            self._finish(request_id)

    def _fall_back(self, request_id: str) -> None:
        """Run the missing stages here and answer: the deadline is near and no answer came, the budget
        was too short for the planned path, or recent misses say the other devices are down."""
        request = self._pending.get(request_id)
        if request is None or request.answered:
            return
        runner = self._views[request.plan].runner
        assert runner is not None
        if request.handed_on_s is not None:
            self._count_miss(request)
        try:
            ran = runner.run_remaining(request.tensors)
        except EdgecloudError as error:
            self._reply_error(request_id, request.reply_to, str(error))
            self._finish(request_id)
            return
        for index, started_s, ended_s in ran:
            request.trace.add(stage_event(index, self.device, started_s, ended_s))
        logger.info("agent %s fell back on request %s: ran stage(s) %s itself", self.device, request_id,
                    [index for index, _, _ in ran])
        self._answer(request, fell_back=True)
        self._finish(request_id)

    def _count_miss(self, request: _Request) -> None:
        """A deadline fallback is evidence against the link only when the other devices had the planned
        path's time and gave no answer; `misses_before_local` of those in a row start local mode, so
        that the next `local_after_fallback_s` seconds of requests do not each wait for their deadline."""
        now = time.time()
        assert request.handed_on_s is not None
        if now - request.handed_on_s < self._path_s or now < self._local_until_s:
            return
        self._misses += 1
        if self._misses >= self.options.misses_before_local:
            logger.warning("agent %s: %d request(s) in a row got no answer in time, the last %s; serving locally "
                           "for the next %g s", self.device, self._misses, request.request_id,
                           self.options.local_after_fallback_s)
            self._local_until_s = now + self.options.local_after_fallback_s
            self._misses = 0

    def _finish(self, request_id: str) -> None:
        request = self._pending.pop(request_id, None)
        if request is not None:
            self._opened[request.opened_by] -= 1
            if not self._opened[request.opened_by]:
                del self._opened[request.opened_by]
        self._finished[request_id] = None
        while len(self._finished) > 4 * self.options.max_pending:
            self._finished.popitem(last=False)
        self._maybe_probe(time.time())

    def _expire(self, now: float) -> None:
        expired = [request.request_id for request in self._pending.values() if request.deadline <= now]
        for request_id in expired:
            self.stats["expired"] += 1
            logger.info("agent %s dropped request %s: its deadline passed", self.device, request_id)
            self._finish(request_id)
