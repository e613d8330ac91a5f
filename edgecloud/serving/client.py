"""Send inputs to a split model's source agent and get the outputs back (`edgecloud infer`).

    from edgecloud.serving.client import InferenceClient
    with InferenceClient("plan.json", "mqtt://127.0.0.1:1883") as client:
        result = client.infer(x, deadline_s=2.0)        # x: np.ndarray or {input name: array}
        result.outputs["output"], result.fell_back, result.timings.total_s

`submit` returns a future instead, for many requests in flight at once. A request carries its deadline
as a budget relative to when it was sent (or none: the source agent then derives one from the plan's
prediction and the whole model's time measured there); the source agent falls back to running the model
itself when the answer would otherwise miss it, and `fell_back` says so.

Identity: the client speaks as `client_name`, by default the broker URL's user (so that a login made
by `edgecloud fleet init --client NAME` works under the fleet's ACL, which lets login NAME write only
as NAME), else a random `client-<hex>` for brokers without logins. A request the broker refuses fails
at once with TransportError (MQTT 5 says why); over MQTT 3.1.1 the timeout says whether the broker
acknowledged the request at all.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np

from edgecloud.errors import EdgecloudError, TransportError
from edgecloud.serving.deadlines import finite_float
from edgecloud.serving.expiry import ExpiryTimer
from edgecloud.serving.trace import CLIENT, TraceEvent, parse_trace, transfer_event
from edgecloud.transport.mqtt import MqttTransport, Requester, TransportOptions
from edgecloud.transport.topics import DEFAULT_DEPLOYMENT, device_topic, sender_topic
from edgecloud.transport.wire import Message
from partitioner.split.manifest import SplitManifest

# How long past its deadline the client still waits: the fallback answer is sent just before the
# deadline and needs a moment to travel back.
REPLY_GRACE_S = 0.5
# How long a request without a deadline is waited for: the agents' default `request_ttl_s`, the most any
# agent holds a request (the source answers far sooner, at the deadline it derived).
AGENT_DEADLINE_WAIT_S = 60.0
MAX_REASON_CHARS = 500


class RequestTimings:
    """Where one request's time went, as measured by the agents and the client.

    The agents' trace is parsed (and checked entry by entry) when `events` is first read, not for
    every answer: that was ~10 % of the client's CPU per request (bench/agent_hop.py), and most callers
    never look."""

    def __init__(self, total_s: float, raw_trace: Any = None, last_hop: TraceEvent | None = None) -> None:
        self.total_s = total_s
        self._raw_trace = raw_trace
        self._last_hop = last_hop
        self._events: list[TraceEvent] | None = None

    @property
    def events(self) -> list[TraceEvent]:
        if self._events is None:
            self._events = parse_trace(self._raw_trace) + ([] if self._last_hop is None else [self._last_hop])
        return self._events

    @property
    def stages(self) -> list[TraceEvent]:
        return sorted((event for event in self.events if event.kind == "stage"), key=lambda event: event.start_s)

    @property
    def transfers(self) -> list[TraceEvent]:
        return sorted((event for event in self.events if event.kind == "transfer"), key=lambda event: event.start_s)


@dataclass
class InferenceResult:
    outputs: dict[str, np.ndarray]
    fell_back: bool
    timings: RequestTimings
    answered_by: str
    plan: int | None = None  # the index of the plan (plan-set interval) the agents ran it under, if named
    plan_id: str | None = None  # that plan's content hash (edgecloud.serving.plan_choice.plan_id)


class InferenceClient:
    """A connection to a deployment's broker that sends requests to the source device's agent."""

    def __init__(self, plan: str | Path | SplitManifest, broker_url: str, deployment: str = DEFAULT_DEPLOYMENT,
                 max_in_flight: int = 128, transport_options: TransportOptions = TransportOptions(),
                 client_name: str | None = None) -> None:
        # A plan (or plan-set) file is split on first use and the split cached beside it (the agents find
        # it there). The plans of a set share their inputs and outputs: the first one's are checked.
        if isinstance(plan, SplitManifest):
            self.manifest = plan
        else:  # splitting needs onnx: a client given a manifest (or importing this module) never loads it
            from edgecloud.serving.plan_choice import load_served_plans

            self.manifest = load_served_plans(plan).manifests[0]
        self.deployment = deployment
        self._transport = MqttTransport(broker_url, client_id="", options=transport_options)
        self.client_name = client_name or self._transport.address.username or f"client-{uuid.uuid4().hex[:12]}"
        self._transport.client_id = f"{deployment}-{self.client_name}"
        self._max_in_flight = max_in_flight
        self._requester: Requester | None = None
        self._source_topic = sender_topic(deployment, self.manifest.source, self.client_name)
        self._timeouts = ExpiryTimer(f"{self.client_name}-timeouts")  # one thread for every request's timeout

    def connect(self) -> Self:
        self._transport.connect()
        self._requester = Requester(self._transport, device_topic(self.deployment, self.client_name),
                                    self._max_in_flight)
        return self

    def close(self) -> None:
        self._transport.close()
        self._timeouts.close()
        self._timeouts = ExpiryTimer(f"{self.client_name}-timeouts")  # a client may connect again
        self._requester = None

    def __enter__(self) -> Self:
        return self.connect()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def named_inputs(self, inputs: Mapping[str, np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
        """The inputs by name, checked against the model's here rather than refused by the agent later."""
        if isinstance(inputs, Mapping):
            named = {name: np.asarray(value) for name, value in inputs.items()}
        else:
            names = [spec.name for spec in self.manifest.graph_inputs]
            if len(names) != 1:
                raise EdgecloudError(f"the model takes {len(names)} inputs ({', '.join(names)}); pass a dict by name")
            named = {names[0]: np.asarray(inputs)}
        problem = self.manifest.input_problem(named)
        if problem is not None:
            raise EdgecloudError(problem)
        return named

    def submit(self, inputs: Mapping[str, np.ndarray] | np.ndarray,
               deadline_s: float | None = None) -> Future[InferenceResult]:
        """Send one request; the future gives its InferenceResult (or raises EdgecloudError). With no
        `deadline_s` the source agent sets one from the plan's prediction and the whole model's time
        measured there (`edgecloud.serving.deadlines.default_deadline_s`); the client waits up to
        AGENT_DEADLINE_WAIT_S."""
        if self._requester is None:
            raise TransportError("the inference client is not connected; use it as a context manager or call connect()")
        request_id = uuid.uuid4().hex
        sent_s = time.time()
        # The budget is relative, so that the agents' clocks need not agree with ours (edgecloud.serving.deadlines);
        # the header's absolute `deadline` is left empty (agents still honour it from older clients).
        meta = {"sent_s": sent_s} if deadline_s is None else {"sent_s": sent_s, "budget_s": deadline_s}
        message = Message(kind="request", request_id=request_id, sender=self.client_name,
                          tensors=self.named_inputs(inputs), meta=meta)
        wait_s = AGENT_DEADLINE_WAIT_S if deadline_s is None else deadline_s
        reply_future = self._requester.submit(self._source_topic, message, timeout_s=wait_s)
        result: Future[InferenceResult] = Future()
        timer = self._timeouts.schedule(wait_s + REPLY_GRACE_S,
                                        lambda: self._expire(reply_future, result, request_id, wait_s))

        def on_reply(done: Future[Message]) -> None:
            timer.cancel()
            if done.cancelled() or result.done():
                return
            try:
                result.set_result(self._result(done.result(), sent_s, time.time()))
            except EdgecloudError as error:  # also a refusal by the broker, raised by done.result()
                result.set_exception(error)
            except Exception as error:  # whatever a peer sent, the future must resolve
                result.set_exception(EdgecloudError(f"the answer to request {request_id} could not be read: {error}"))

        reply_future.add_done_callback(on_reply)
        return result

    def _expire(self, reply_future: Future[Message], result: Future[InferenceResult], request_id: str,
                deadline_s: float) -> None:
        requester = self._requester
        reason = (requester.timeout_reason(request_id, deadline_s) if requester is not None
                  else f"no reply to request {request_id!r} within {deadline_s:g} s.")
        if reply_future.cancel() and not result.done():
            result.set_exception(TransportError(reason))

    def infer(self, inputs: Mapping[str, np.ndarray] | np.ndarray, deadline_s: float | None = None) -> InferenceResult:
        """Send one request and wait for its outputs (at most the deadline plus a short grace)."""
        wait_s = AGENT_DEADLINE_WAIT_S if deadline_s is None else deadline_s
        return self.submit(inputs, deadline_s).result(wait_s + 2 * REPLY_GRACE_S)

    def _result(self, reply: Message, sent_s: float, received_s: float) -> InferenceResult:
        if reply.kind == "error":
            reason = reply.meta.get("error")  # a peer's text: one bounded line, whatever it sent
            reason = " ".join(reason.split())[:MAX_REASON_CHARS] if isinstance(reason, str) and reason.strip() else None
            raise EdgecloudError(f"device {reply.sender!r} refused the request: {reason or 'no reason given'}")
        expected = {spec.name for spec in self.manifest.graph_outputs}
        if set(reply.tensors) != expected:
            raise EdgecloudError(f"the answer carries {sorted(reply.tensors)}, the model's outputs are {sorted(expected)}")
        reply_sent_s = finite_float(reply.meta.get("sent_s"))
        last_hop = None
        if reply_sent_s is not None:
            n_bytes = sum(int(array.nbytes) for array in reply.tensors.values())
            last_hop = transfer_event(reply.sender, CLIENT, reply_sent_s, received_s, n_bytes)
        return InferenceResult(outputs={name: np.array(array) for name, array in reply.tensors.items()},
                               fell_back=reply.meta.get("fell_back") is True,
                               timings=RequestTimings(received_s - sent_s, reply.meta.get("trace"), last_hop),
                               answered_by=reply.sender, **_plan_named(reply.meta.get("plan")))


def _plan_named(tag: Any) -> dict[str, Any]:
    """The plan an answer names (`meta.plan` = [index, id]), if it names one in that form."""
    if (isinstance(tag, list) and len(tag) == 2 and isinstance(tag[0], int) and not isinstance(tag[0], bool)
            and isinstance(tag[1], str) and len(tag[1]) <= 64):
        return {"plan": tag[0], "plan_id": tag[1]}
    return {}
