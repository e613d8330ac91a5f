"""Messages beyond one packet over real brokers: 100 MB through Mosquitto with and without TLS arrives
exactly once and intact, in chunks no larger than the broker's packet limit; a message beyond the
receiver's chunk limits is refused without allocating it."""

from __future__ import annotations

import queue
import threading
import time

import numpy as np
import pytest

from edgecloud.errors import TransportError
from edgecloud.transport.broker import MosquittoBroker, TlsFiles
from edgecloud.transport.chunks import ChunkLimits
from edgecloud.transport.mqtt import MqttTransport, TransportOptions
from edgecloud.transport.wire import Message

TOPIC = "edgecloud/chunks/receiver/in/sender"
HUNDRED_MB = 100 * 10**6


def _big_message(n_bytes: int) -> Message:
    values = np.random.default_rng(n_bytes).integers(0, 256, n_bytes, dtype=np.uint8)
    return Message(kind="activation", request_id="big", sender="sender", tensors={"x": values})


def _send_and_receive(url: str, message: Message, options: TransportOptions = TransportOptions(),
                      receiver_options: TransportOptions = TransportOptions(), wait_s: float = 120.0) -> list[Message]:
    received: queue.Queue[Message] = queue.Queue()
    with MqttTransport(url, "receiver", receiver_options) as receiver, MqttTransport(url, "sender", options) as sender:
        receiver.subscribe_messages("edgecloud/chunks/receiver/in/+", lambda m, _topic: received.put(m))
        done = threading.Event()

        def send() -> None:  # from a thread of our own, as the agents' executors publish
            sender.publish_message(TOPIC, message).result(timeout=wait_s)
            done.set()

        thread = threading.Thread(target=send)
        thread.start()
        thread.join(wait_s)
        assert done.is_set(), "the sender did not get the last chunk acknowledged"
        first = received.get(timeout=wait_s)
        try:
            extra = [received.get(timeout=0.5)]
        except queue.Empty:
            extra = []
    return [first, *extra]


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_100_megabytes_through_mosquitto_arrive_once_and_intact(tls: bool, self_signed_tls) -> None:
    cert, key = self_signed_tls
    message = _big_message(HUNDRED_MB)
    with MosquittoBroker(tls=TlsFiles(certfile=cert, keyfile=key) if tls else None) as broker:
        url = broker.url + (f"?ca={cert}" if tls else "")
        arrived = _send_and_receive(url, message)
    assert len(arrived) == 1
    got = arrived[0].tensors["x"]
    assert got.shape == (HUNDRED_MB,) and np.array_equal(got, message.tensors["x"])


def test_chunks_fit_under_a_broker_with_a_small_packet_limit() -> None:
    """A broker whose packets are capped at 1 MiB still carries a 5 MB message: the sender's chunks fit."""
    message = _big_message(5 * 10**6)
    with MosquittoBroker(max_message_bytes=2**20) as broker:
        small = TransportOptions(chunk_bytes=2**20 - 4096)
        arrived = _send_and_receive(broker.url, message, small, wait_s=60.0)
    assert len(arrived) == 1 and np.array_equal(arrived[0].tensors["x"], message.tensors["x"])


def test_a_message_beyond_the_receivers_limit_is_dropped_not_allocated(caplog) -> None:
    message = _big_message(3 * 10**6)
    with MosquittoBroker() as broker:
        received: queue.Queue[Message] = queue.Queue()
        tight = TransportOptions(chunk_limits=ChunkLimits(max_message_bytes=10**6))
        with MqttTransport(broker.url, "receiver", tight) as receiver, \
                MqttTransport(broker.url, "sender", TransportOptions(chunk_bytes=2**20)) as sender:
            receiver.subscribe_messages("edgecloud/chunks/receiver/in/+", lambda m, _t: received.put(m))
            sender.publish_message(TOPIC, message).result(timeout=30)
            sender.publish_message(TOPIC, _big_message(1000)).result(timeout=30)  # a small one still arrives
            assert received.get(timeout=30).tensors["x"].size == 1000
        assert received.empty()
    assert "exceeds the 1000000-byte limit" in caplog.text


def test_the_embedded_broker_carries_a_chunked_message_too(broker_factory) -> None:
    message = _big_message(40 * 10**6)
    running = broker_factory("embedded")
    arrived = _send_and_receive(running.url, message, wait_s=120.0)
    assert len(arrived) == 1 and np.array_equal(arrived[0].tensors["x"], message.tensors["x"])


def test_a_slow_subscriber_gets_a_message_larger_than_the_brokers_queue(caplog) -> None:
    """MQTT has no end-to-end flow control: Mosquitto drops what overflows a slow subscriber's queue.
    The receiver's chunk credits make the sender wait instead, so nothing is dropped; the sender waits
    on its own thread, so its keepalive (1 s here, the wait ~2.5 s) keeps the connection up."""
    first, second = _big_message(2 * 10**6), _big_message(6 * 10**6)
    received: queue.Queue[Message] = queue.Queue()

    def slow_handler(message: Message, _topic: str) -> None:
        received.put(message)
        time.sleep(2.5)  # on paho's network thread: nothing more is read meanwhile

    small_chunks = TransportOptions(chunk_bytes=256 * 2**10, chunk_credit_timeout_s=30.0, keepalive_s=1)
    # the broker holds 2 MiB for the receiver beyond 2 messages in flight to it: more than the sender's
    # window (4 x 256 KiB) and far less than the 6 MB message
    with MosquittoBroker(max_queued_bytes=2 * 2**20, extra_config="max_inflight_messages 2\n") as broker, \
            MqttTransport(broker.url, "receiver") as receiver, \
            MqttTransport(broker.url, "sender", small_chunks) as sender:
        receiver.subscribe_messages("edgecloud/chunks/receiver/in/+", slow_handler)
        for message in (first, second):
            sender.publish_message(TOPIC, message).result(timeout=60)
        arrived = [received.get(timeout=30), received.get(timeout=30)]
    assert [m.tensors["x"].size for m in arrived] == [first.tensors["x"].size, second.tensors["x"].size]
    assert np.array_equal(arrived[1].tensors["x"], second.tensors["x"])
    assert "lost the broker connection" not in caplog.text


def test_a_sender_whose_receiver_grants_no_credit_fails_with_a_reason() -> None:
    """A subscriber of raw payloads (`subscribe`) takes chunks but never reassembles nor credits them."""
    options = TransportOptions(chunk_bytes=2**20, chunk_credit_timeout_s=1.0)
    with MosquittoBroker() as broker, MqttTransport(broker.url, "receiver") as receiver, \
            MqttTransport(broker.url, "sender", options) as sender:
        receiver.subscribe("edgecloud/chunks/receiver/in/+", lambda _payload, _topic: None)
        with pytest.raises(TransportError, match="took no chunk for 1 s"):
            sender.publish_message(TOPIC, _big_message(8 * 10**6))
