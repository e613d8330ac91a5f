"""Transport conformance: the same tests, unchanged, against the embedded amqtt broker and Mosquitto."""

from __future__ import annotations

import hashlib
import logging
import queue
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgecloud.errors import TransportError
from edgecloud.transport.mqtt import MqttTransport, Requester, device_topic
from edgecloud.transport.topics import reply_topic, sender_topic
from edgecloud.transport.wire import DTYPES, Message, WireLimits, encode

RECEIVE_TIMEOUT_S = 10.0


def unique_deployment(request: pytest.FixtureRequest) -> str:
    """A deployment name per test (and broker), so that tests sharing a broker never see each other's traffic."""
    return "t" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:12]


def sample_tensors(seed: int) -> dict[str, np.ndarray]:
    """One tensor per supported dtype made of random bytes (any bit pattern), an empty one, and NaN payload bits."""
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    for dtype_name in DTYPES:
        dtype = np.dtype(dtype_name)
        raw = rng.integers(0, 256, size=(3, 5) if dtype_name != "int8" else (0, 7), dtype=np.uint8)
        size = raw.size - raw.size % dtype.itemsize
        tensors[f"t_{dtype_name}"] = raw.reshape(-1)[:size].view(dtype) if dtype_name != "bool" else raw > 127
    tensors["nan_bits"] = np.array([0x7FC00001, 0xFFFFFFFF, 0x80000000], dtype=np.uint32).view(np.float32)
    return tensors


def test_round_trip_is_bit_exact(broker, request) -> None:
    deployment = unique_deployment(request)
    received: queue.Queue[Message] = queue.Queue()
    sent = Message("activation", "req-1", "edge", sample_tensors(seed=1), reply_to=device_topic(deployment, "edge"),
                   deadline=1.7e9 + 0.25, meta={"stage": 2, "fallback": False, "note": "ü"})
    with MqttTransport(broker.url, f"{deployment}-cloud") as cloud, MqttTransport(broker.url, f"{deployment}-edge") as edge:
        cloud.subscribe_messages(device_topic(deployment, "cloud"), lambda message, topic: received.put(message))
        edge.publish_message(device_topic(deployment, "cloud"), sent)
        got = received.get(timeout=RECEIVE_TIMEOUT_S)
    assert (got.kind, got.request_id, got.sender, got.reply_to, got.deadline, got.meta) == (
        sent.kind, sent.request_id, sent.sender, sent.reply_to, sent.deadline, sent.meta)
    assert list(got.tensors) == list(sent.tensors)
    for name, array in sent.tensors.items():
        assert got.tensors[name].dtype == array.dtype and got.tensors[name].shape == array.shape
        assert got.tensors[name].tobytes() == array.tobytes(), name


def test_qos1_delivers_every_message_once_in_order_without_retain(broker, request) -> None:
    deployment = unique_deployment(request)
    topic = device_topic(deployment, "sink")
    seen: queue.Queue[tuple[int, bool, bytes]] = queue.Queue()
    raw = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{deployment}-raw", protocol=paho.MQTTv311)
    raw.on_message = lambda client, userdata, message: seen.put((message.qos, message.retain, message.payload))
    subscribed = threading.Event()
    raw.on_subscribe = lambda *args: subscribed.set()
    raw.connect(broker.host, broker.port)
    raw.loop_start()
    try:
        raw.subscribe(topic, qos=1)
        assert subscribed.wait(RECEIVE_TIMEOUT_S)
        count = 200
        with MqttTransport(broker.url, f"{deployment}-source") as source:
            for index in range(count):
                source.publish(topic, index.to_bytes(4, "little") * 64)
            deliveries = [seen.get(timeout=RECEIVE_TIMEOUT_S) for _ in range(count)]
        time.sleep(0.2)
        assert seen.empty(), "a message was delivered twice"
    finally:
        raw.disconnect()
        raw.loop_stop()
    assert [qos for qos, _, _ in deliveries] == [1] * count
    assert not any(retain for _, retain, _ in deliveries)
    assert [int.from_bytes(payload[:4], "little") for _, _, payload in deliveries] == list(range(count))


def test_hundred_concurrent_requests_are_matched_by_request_id(broker, request) -> None:
    deployment = unique_deployment(request)
    server_topic = sender_topic(deployment, "server", "client")
    rng = random.Random(7)
    with (MqttTransport(broker.url, f"{deployment}-server") as server,
          MqttTransport(broker.url, f"{deployment}-client") as client,
          ThreadPoolExecutor(max_workers=8) as workers):

        def answer(message: Message) -> None:
            time.sleep(rng.uniform(0, 0.01))  # replies leave out of order
            server.publish_message(reply_topic(message.reply_to, "server"),
                                   Message("result", message.request_id, "server", {"y": message.tensors["x"] * 3}))

        server.subscribe_messages(server_topic, lambda message, topic: workers.submit(answer, message))
        requester = Requester(client, reply_topic=device_topic(deployment, "client"), max_in_flight=100)
        futures = {index: requester.submit(server_topic, Message("request", f"req-{index}", "client",
                                                                 {"x": np.full((2, 2), index, np.int64)}))
                   for index in range(100)}
        replies = {index: future.result(RECEIVE_TIMEOUT_S) for index, future in futures.items()}
        assert requester.in_flight == 0
    for index, reply in replies.items():
        assert reply.request_id == f"req-{index}"
        np.testing.assert_array_equal(reply.tensors["y"], np.full((2, 2), 3 * index, np.int64))


def test_requests_in_flight_are_bounded_and_a_timeout_frees_the_slot(broker, request) -> None:
    deployment = unique_deployment(request)
    nobody = device_topic(deployment, "nobody")
    with MqttTransport(broker.url, f"{deployment}-client") as client:
        requester = Requester(client, reply_topic=device_topic(deployment, "client"), max_in_flight=1)
        pending = requester.submit(nobody, Message("request", "r1", "client"))
        with pytest.raises(TransportError, match="already in flight"):
            requester.submit(nobody, Message("request", "r2", "client"), timeout_s=0.1)
        pending.cancel()  # the caller gave up: its slot is free again
        with pytest.raises(TransportError, match="no reply"):
            requester.request(nobody, Message("request", "r3", "client"), timeout_s=0.3)
        assert requester.in_flight == 0
        with pytest.raises(TransportError, match="no reply"):  # the timed-out request released its slot too
            requester.request(nobody, Message("request", "r4", "client"), timeout_s=0.3)


def test_malformed_truncated_and_oversized_messages_are_rejected_and_serving_continues(
        broker, request, caplog: pytest.LogCaptureFixture) -> None:
    deployment = unique_deployment(request)
    topic = device_topic(deployment, "agent")
    limits = WireLimits(max_message_bytes=64 * 2**10)
    good = encode(Message("activation", "good", "edge", {"x": np.arange(10, dtype=np.float32)}))
    oversized = encode(Message("activation", "big", "edge", {"x": np.zeros(100_000, np.uint8)}))
    bad_payloads = {
        "garbage": b"not an edgecloud message at all",
        "truncated": good[:-3],
        "oversized": oversized,
        "bad-json": good[:12] + b"\xff" + good[13:],
    }
    served: queue.Queue[str] = queue.Queue()
    caplog.set_level(logging.WARNING, logger="edgecloud.transport.mqtt")
    with (MqttTransport(broker.url, f"{deployment}-agent", limits=limits) as agent,
          MqttTransport(broker.url, f"{deployment}-sender") as sender):
        agent.subscribe_messages(topic, lambda message, _: served.put(message.request_id))
        for payload in bad_payloads.values():
            sender.publish(topic, payload)
            sender.publish(topic, good)
        assert [served.get(timeout=RECEIVE_TIMEOUT_S) for _ in bad_payloads] == ["good"] * len(bad_payloads)
    rejections = [record.getMessage() for record in caplog.records if "rejected" in record.getMessage()]
    assert len(rejections) == len(bad_payloads)
    assert "magic" in rejections[0]
    assert "past the end" in rejections[1] or "accounts for" in rejections[1]
    assert "more than the limit" in rejections[2]
    assert "JSON" in rejections[3]


@pytest.mark.parametrize("kind", ["embedded", "mosquitto"])
def test_reconnects_and_resubscribes_after_broker_restart(kind: str, broker_factory, request) -> None:
    deployment = unique_deployment(request)
    topic = device_topic(deployment, "agent")
    first = broker_factory(kind)
    received: queue.Queue[str] = queue.Queue()
    with MqttTransport(first.url, f"{deployment}-agent") as agent, MqttTransport(first.url, f"{deployment}-sender") as sender:
        agent.subscribe_messages(topic, lambda message, _: received.put(message.request_id))
        first.stop()
        deadline = time.monotonic() + RECEIVE_TIMEOUT_S
        while agent.is_connected and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not agent.is_connected
        broker_factory(kind, port=first.port)
        assert agent.wait_connected(RECEIVE_TIMEOUT_S) and sender.wait_connected(RECEIVE_TIMEOUT_S)
        # the agent re-subscribes in its connect callback; publish until that has reached the broker
        for attempt in range(50):
            sender.publish_message(topic, Message("activation", f"after-{attempt}", "sender"))
            try:
                first_after = received.get(timeout=0.2)
                break
            except queue.Empty:
                continue
        else:
            pytest.fail("no message arrived after the broker restarted")
    assert first_after.startswith("after-")
