"""Serving under attack, transport side (issue 9): refused publishes surface as errors, a second client
with a taken identity is refused, oversized messages are never buffered whole. Real brokers, real sockets."""

from __future__ import annotations

import logging
import queue
import time
import tracemalloc
import uuid
from pathlib import Path

import numpy as np
import pytest
from serving_helpers import write_plan
from typer.testing import CliRunner

from edgecloud.cli.app import app
from edgecloud.errors import IdentityInUseError, TransportError
from edgecloud.serving.agent_processes import AgentProcesses
from edgecloud.serving.client import InferenceClient
from edgecloud.transport.broker import device_acl
from edgecloud.transport.mqtt import MqttTransport, Requester
from edgecloud.transport.topics import device_topic, sender_topic
from edgecloud.transport.wire import Message, WireLimits

DEPLOYMENT = "guarded"
PASSWORDS = {"edge": "edge-pw", "cloud": "cloud-pw", "app": "app-pw"}


@pytest.fixture()
def guarded_broker(broker_factory):
    acl = device_acl(DEPLOYMENT, devices=["edge", "cloud"], clients=["app"])
    return broker_factory("mosquitto", passwords=PASSWORDS, acl=acl)


def login_url(broker, user: str) -> str:
    return f"mqtt://{user}:{PASSWORDS[user]}@{broker.host}:{broker.port}"


def test_a_request_the_acl_refuses_fails_at_once_with_the_brokers_reason(guarded_broker) -> None:
    with MqttTransport(login_url(guarded_broker, "app"), "app") as app_transport:
        assert app_transport.protocol == "5"
        requester = Requester(app_transport, device_topic(DEPLOYMENT, "app"))
        started_s = time.monotonic()
        with pytest.raises(TransportError, match="refused the message .* Not authorized"):
            requester.request(sender_topic(DEPLOYMENT, "edge", "client-1234"), Message("request", "r1", "client-1234"),
                              timeout_s=5.0)
        assert time.monotonic() - started_s < 2.0
        accepted = app_transport.publish(sender_topic(DEPLOYMENT, "edge", "app"), b"x")
        assert accepted.result(timeout=5.0) is None


def test_the_inference_client_speaks_as_its_login_and_a_forged_name_is_refused_quickly(
        bundled_models, guarded_broker, tmp_path: Path) -> None:
    plan_path = write_plan(bundled_models["mlp"], tmp_path, runs=2)
    assert InferenceClient(plan_path, login_url(guarded_broker, "app"), deployment=DEPLOYMENT).client_name == "app"
    with InferenceClient(plan_path, login_url(guarded_broker, "app"), deployment=DEPLOYMENT,
                         client_name="someone-else") as forged:
        started_s = time.monotonic()
        with pytest.raises(TransportError, match="Not authorized"):
            forged.infer(np.zeros((1, 784), np.float32), deadline_s=3.0)
        assert time.monotonic() - started_s < 2.0


def test_a_second_client_with_a_taken_identity_is_refused_and_the_first_keeps_serving(
        guarded_broker, caplog: pytest.LogCaptureFixture) -> None:
    seen: queue.Queue[bytes] = queue.Queue()
    with caplog.at_level(logging.WARNING, logger="edgecloud.transport.mqtt"), \
            MqttTransport(login_url(guarded_broker, "edge"), f"{DEPLOYMENT}-edge") as first:
        first.subscribe(f"edgecloud/{DEPLOYMENT}/edge/in/+", lambda payload, _: seen.put(payload))
        # another client id, the same login: `use_username_as_clientid` makes it the same identity
        with pytest.raises(IdentityInUseError, match="another client is connected .* as 'edge'"):
            MqttTransport(login_url(guarded_broker, "edge"), "a-second-edge-agent").connect()
        assert first.wait_connected(5.0)
        time.sleep(1.0)  # room for a knock-off war to show in the log
        with MqttTransport(login_url(guarded_broker, "cloud"), "cloud") as cloud:
            cloud.publish(sender_topic(DEPLOYMENT, "edge", "cloud"), b"still there?").result(timeout=5.0)
        assert seen.get(timeout=5.0) == b"still there?"
    assert caplog.text.count("lost the broker connection") <= 1
    # once the first has gone, the identity is free again at once (its session is dropped on close)
    with MqttTransport(login_url(guarded_broker, "edge"), "edge-again"):
        pass


def test_an_identity_is_free_at_once_after_close_even_with_messages_unread(guarded_broker) -> None:
    """A client that closes while messages wait unread in its socket used to make the kernel answer with
    a reset, which discards the DISCONNECT before the broker reads it: the broker kept the session for
    SESSION_EXPIRY_S, and the next run of the same device within that second was refused as a second
    agent (seen in CI as a parameter server that could not start right after the previous one stopped)."""
    with MqttTransport(login_url(guarded_broker, "cloud"), "cloud") as sender:
        for attempt in range(3):
            busy = MqttTransport(login_url(guarded_broker, "edge"), "edge").connect()
            busy.subscribe(f"edgecloud/{DEPLOYMENT}/edge/in/+", lambda payload, _: time.sleep(0.2))
            sent = [sender.publish(sender_topic(DEPLOYMENT, "edge", "cloud"), bytes(200_000)) for _ in range(30)]
            for future in sent:
                future.result(timeout=10.0)
            time.sleep(0.2)  # the broker forwards them; the slow handler leaves most unread in the socket
            busy.close()
            with MqttTransport(login_url(guarded_broker, "edge"), "edge"):  # raised IdentityInUseError
                pass


@pytest.mark.parametrize("kind", ["embedded", "mosquitto"])
def test_a_handler_that_closes_its_own_transport_does_not_wait_for_the_broker(broker_factory, kind: str) -> None:
    """On paho's own thread the DISCONNECT goes out only after the handler returns, so holding the
    connection for the broker's close there would stall the handler for close_confirm_timeout_s (2 s)."""
    broker = broker_factory(kind)
    closed_in: queue.Queue[float] = queue.Queue()
    transport = MqttTransport(broker.url, f"closer-{kind}").connect()

    def close_on_message(payload: bytes, topic: str) -> None:
        started_s = time.monotonic()
        transport.close()
        closed_in.put(time.monotonic() - started_s)

    transport.subscribe("edgecloud/closing/closer/in/+", close_on_message)
    with MqttTransport(broker.url, f"sender-{kind}") as sender:
        sender.publish("edgecloud/closing/closer/in/sender", b"stop").result(timeout=5.0)
        assert closed_in.get(timeout=10.0) < 0.5 * transport.options.close_confirm_timeout_s


def test_a_second_agent_for_the_same_device_exits_with_a_clear_error(
        bundled_models, broker_factory, tmp_path: Path) -> None:
    broker = broker_factory("mosquitto")
    plan_path = write_plan(bundled_models["mlp"], tmp_path, runs=2)
    deployment = f"d{uuid.uuid4().hex[:8]}"
    with AgentProcesses(plan_path, ["edge", "cloud"], broker.url, deployment) as agents:
        outcome = CliRunner().invoke(app, ["agent", "--plan", str(plan_path), "--device", "edge", "--broker", broker.url,
                                           "--deployment", deployment])
        assert outcome.exit_code == 2, outcome.output
        assert "another client is connected" in outcome.output and "second agent" in outcome.output
        time.sleep(1.0)  # the first edge agent was knocked off once by that attempt: its reconnect takes 0.2 s
        with InferenceClient(plan_path, broker.url, deployment=deployment) as client:
            assert not client.infer(np.zeros((1, 784), np.float32), deadline_s=10.0).fell_back
        edge_log = agents.log_text("edge")
    assert edge_log.count("lost the broker connection") <= 1, edge_log


@pytest.mark.parametrize("kind", ["embedded", "mosquitto"])
def test_an_oversized_message_is_never_buffered_whole(broker_factory, kind: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """The broker here lets 64 MiB through (as a plain Mosquitto or amqtt would); the receiver's wire limit
    is 1 MiB. Mosquitto must not send it (MQTT 5 Maximum Packet Size), over amqtt's MQTT 3.1.1 the client
    must read it through a small buffer and drop it: the receiver's allocations stay far below its size."""
    broker = broker_factory(kind, **({"max_message_bytes": 64 * 2**20} if kind == "mosquitto" else {}))
    oversized = bytes(32 * 2**20)
    seen: queue.Queue[int] = queue.Queue()
    with caplog.at_level(logging.WARNING), \
            MqttTransport(broker.url, "small-receiver", limits=WireLimits(max_message_bytes=2**20)) as receiver, \
            MqttTransport(broker.url, "big-sender") as sender:
        receiver.subscribe("big/x", lambda payload, _: seen.put(len(payload)))
        tracemalloc.start()
        try:
            sender.publish("big/x", oversized).result(timeout=30.0)
            sender.publish("big/x", b"small").result(timeout=10.0)
            assert seen.get(timeout=30.0) == len(b"small")  # the connection survived, the big one never arrived
            peak_bytes = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert seen.empty()
    assert peak_bytes < 4 * 2**20, f"{peak_bytes / 2**20:.1f} MiB allocated while a 32 MiB message was refused"
    if kind == "embedded":
        assert "dropped a 33554432-byte message on big/x unread: more than the limit" in caplog.text
