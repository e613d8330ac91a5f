"""FastPathClient: byte-identical to paho on the wire, zero-copy payloads, and loud failure if paho's internals move.

The first group pins the private paho API the subclass relies on (see edgecloud/transport/mqtt_fastpath.py):
if one of these fails after a paho upgrade, re-check every override before widening the pin.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
import queue
import re
import socket
import threading
from collections.abc import Iterator

import numpy as np
import paho.mqtt.client as paho
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgecloud.transport.mqtt import MqttTransport, device_topic
from edgecloud.transport.mqtt_fastpath import (
    FIRST_CHUNK_BYTES,
    GATHER_MIN_PAYLOAD_BYTES,
    GatheredPayload,
    _GatheredPacket,
    HEAD_READ_BYTES,
    PAHO_VERSION_RANGE,
    FastPathClient,
    _idle_in_packet,
    _out_packet,
    publish_header_bytes,
)
from edgecloud.transport.wire import Message

PROTOCOLS = (paho.MQTTv311, paho.MQTTv5)
TOPIC = "edgecloud/fast/dev/in"

# Private paho methods the subclass overrides or calls, with the parameters it passes.
PAHO_PRIVATE_SIGNATURES = {
    "_send_publish": ["self", "mid", "topic", "payload", "qos", "retain", "dup", "info", "properties"],
    "_packet_queue": ["self", "command", "packet", "mid", "qos", "info"],
    "_packet_write": ["self"],
    "_packet_read": ["self"],
    "_packet_handle": ["self"],
    "_handle_on_message": ["self", "message"],
    "_handle_publish": ["self"],
    "_handle_pubackcomp": ["self", "cmd"],
    "_do_on_publish": ["self", "mid", "reason_code", "properties"],
    "_send_puback": ["self", "mid"],
    "publish": ["self", "topic", "payload", "qos", "retain", "properties"],
    "_sock_send": ["self", "buf"],
    "_sock_recv": ["self", "bufsize"],
    "_pack_str16": ["self", "packet", "data"],
    "_pack_remaining_length": ["self", "packet", "remaining_length"],
    "_call_socket_register_write": ["self"],
    "_easy_log": ["self", "level", "fmt", "args"],
}


def new_client(cls: type[paho.Client], protocol: int) -> paho.Client:
    return cls(CallbackAPIVersion.VERSION2, client_id="fast", protocol=protocol)


@pytest.fixture()
def wire_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(client end, peer end): small kernel buffers, so that large packets go out in many partial sends."""
    client_end, peer_end = socket.socketpair()
    for end in (client_end, peer_end):
        end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 2**10)
        end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 2**10)
        end.setblocking(False)
    yield client_end, peer_end
    client_end.close()
    peer_end.close()


def drain(peer: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = peer.recv(2**20)
        except BlockingIOError:
            return b"".join(chunks)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def published_bytes(cls: type[paho.Client], protocol: int, payload: bytes, qos: int,
                    properties: Properties | None = None) -> bytes:
    """What `cls` writes for one publish, driven by paho's own write loop (non-threaded mode)."""
    client_end, peer_end = socket.socketpair()
    client_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 2**10)
    client_end.setblocking(False)
    peer_end.setblocking(False)
    client = new_client(cls, protocol)
    client._sock = client_end
    client.publish(TOPIC, payload, qos=qos, properties=properties)
    received = bytearray()
    while client.want_write():
        received += drain(peer_end)
        client.loop_write()
    received += drain(peer_end)
    client_end.close()
    peer_end.close()
    return bytes(received)


# -- the private paho API this module depends on --------------------------------------------------

def test_installed_paho_is_in_the_checked_version_range() -> None:
    low_major, low_minor, high_major, high_minor = map(int, re.fullmatch(r">=(\d+)\.(\d+),<(\d+)\.(\d+)",
                                                                        PAHO_VERSION_RANGE).groups())
    installed = tuple(int(part) for part in importlib.metadata.version("paho-mqtt").split(".")[:2])
    assert (low_major, low_minor) <= installed < (high_major, high_minor), (
        f"paho-mqtt {installed} is outside {PAHO_VERSION_RANGE}: re-check edgecloud/transport/mqtt_fastpath.py")


@pytest.mark.parametrize("name", sorted(PAHO_PRIVATE_SIGNATURES))
def test_private_paho_methods_keep_their_signatures(name: str) -> None:
    assert list(inspect.signature(getattr(paho.Client, name)).parameters) == PAHO_PRIVATE_SIGNATURES[name]


def test_packet_dictionaries_match_what_paho_builds() -> None:
    client = new_client(paho.Client, paho.MQTTv311)
    assert client._in_packet == _idle_in_packet()
    client.on_socket_register_write = lambda *args: None  # keep the packet queued instead of writing it
    client._packet_queue(paho.PUBACK, b"\x40\x02\x00\x01", 1, 1)
    assert client._out_packet[0] == _out_packet(paho.PUBACK, b"\x40\x02\x00\x01", 1, 1, None)
    for attribute in ("_sock", "_protocol", "_thread", "_sockpairW", "_out_packet", "_msgtime_mutex",
                      "_last_msg_out", "_last_bytes_received"):
        assert hasattr(client, attribute), attribute
    assert paho.sockpair_data == b"0" and callable(paho.time_func)


# -- sending ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("qos", (0, 1))
@pytest.mark.parametrize("payload_bytes", (10, GATHER_MIN_PAYLOAD_BYTES - 1, GATHER_MIN_PAYLOAD_BYTES, 300_000))
def test_publish_bytes_are_identical_to_paho(protocol: int, qos: int, payload_bytes: int) -> None:
    payload = np.random.default_rng(payload_bytes).integers(0, 256, payload_bytes, dtype=np.uint8).tobytes()
    properties = None
    if protocol == paho.MQTTv5:
        properties = Properties(PacketTypes.PUBLISH)
        properties.ContentType = "application/x-edgecloud"
    expected = published_bytes(paho.Client, protocol, payload, qos, properties)
    assert published_bytes(FastPathClient, protocol, payload, qos, properties) == expected


def gathered_parts(seed: int) -> list[object]:
    rng = np.random.default_rng(seed)
    return [rng.bytes(57), bytes(3), rng.standard_normal((300, 70)).astype(np.float32), np.zeros(0, np.int8),
            rng.integers(0, 2, 5000).astype(bool)]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("qos", (0, 1))
def test_a_gathered_payload_goes_out_as_its_joined_bytes(protocol: int, qos: int) -> None:
    """One writev per send on a plain socket (here partial: the socket takes 16 KiB at a time)."""
    payload = GatheredPayload(gathered_parts(qos))
    assert len(payload) > GATHER_MIN_PAYLOAD_BYTES
    expected = published_bytes(paho.Client, protocol, payload.joined(), qos)
    assert published_bytes(FastPathClient, protocol, payload, qos) == expected
    small = GatheredPayload([b"ab", np.arange(3, dtype=np.int32)])  # below the gather size: paho's path, joined
    assert published_bytes(FastPathClient, protocol, small, qos) == published_bytes(paho.Client, protocol,
                                                                                     small.joined(), qos)


@settings(max_examples=30, deadline=None)
@given(sends=st.lists(st.integers(1, 40_000), min_size=1, max_size=60))
def test_a_gathered_packet_sent_piece_by_piece_is_header_then_parts(sends: list[int]) -> None:
    """The TLS path (no sendmsg): whatever each `send` takes of `next_chunk`, the bytes come out in order,
    and the header never goes out alone."""
    parts = GatheredPayload(gathered_parts(7)).parts
    packet = _GatheredPacket(b"\x32\x05head", parts)
    expected = b"\x32\x05head" + b"".join(parts)
    assert len(packet.next_chunk()) >= min(len(expected), len(packet.header) + FIRST_CHUNK_BYTES)
    sent = bytearray()
    for size in [*sends, *([len(expected)] * len(parts) * 2)]:
        if not len(packet):
            break
        chunk = bytes(packet.next_chunk())[:size]
        sent += chunk
        packet = packet[len(chunk):]
    assert bytes(sent) == expected and len(packet) == 0


def test_publisher_thread_sends_directly_and_keeps_the_queue_order(wire_pair) -> None:
    client_end, peer_end = wire_pair
    client = new_client(FastPathClient, paho.MQTTv311)
    client._sock = client_end
    client._thread = threading.Thread(target=lambda: None)  # "threaded mode", and we are not that thread
    payload = bytes(range(256)) * 4000  # far more than the socket takes at once
    client.publish(TOPIC, payload, qos=1)
    first_part = drain(peer_end)
    assert 0 < len(first_part) < len(payload) and client.want_write()  # sent directly, the rest is queued
    client._packet_queue(paho.PUBACK, b"\x40\x02\x00\x07", 7, 1)  # queued behind the unfinished publish
    received = bytearray(first_part)
    while client.want_write():  # what the network thread does
        client.loop_write()
        received += drain(peer_end)
    expected = published_bytes(paho.Client, paho.MQTTv311, payload, qos=1)
    assert bytes(received) == expected + b"\x40\x02\x00\x07"


def test_the_network_thread_sends_its_own_packets_without_waking_itself(wire_pair) -> None:
    client_end, peer_end = wire_pair
    client = new_client(FastPathClient, paho.MQTTv311)
    client._sock = client_end
    client._thread = threading.current_thread()  # we are the network thread
    wake_end, wake_peer = socket.socketpair()
    with wake_end, wake_peer:
        client._sockpairW = wake_end
        client._packet_queue(paho.PUBACK, b"\x40\x02\x00\x07", 7, 1)
        assert drain(peer_end) == b"\x40\x02\x00\x07" and not client.want_write()
        wake_peer.setblocking(False)
        assert drain(wake_peer) == b""  # paho would have written the socket pair


def test_a_publisher_sends_only_after_releasing_paho_s_out_message_lock(wire_pair) -> None:
    """The network thread takes that lock for every PUBACK: it must not wait for our `send`."""
    client_end, peer_end = wire_pair
    client = new_client(FastPathClient, paho.MQTTv311)
    client._sock = client_end
    client._thread = threading.Thread(target=lambda: None)
    lock_free_during_send: list[bool] = []
    real_send = client._sock_send

    def observing_send(buf: bytes) -> int:
        def probe() -> None:
            got = client._out_message_mutex.acquire(timeout=0.5)
            lock_free_during_send.append(got)
            if got:
                client._out_message_mutex.release()
        prober = threading.Thread(target=probe)
        prober.start()
        prober.join()
        return real_send(buf)

    client._sock_send = observing_send
    client.publish(TOPIC, b"small", qos=1)
    client.publish(TOPIC, bytes(GATHER_MIN_PAYLOAD_BYTES), qos=1)
    assert lock_free_during_send and all(lock_free_during_send)
    assert drain(peer_end).startswith(published_bytes(paho.Client, paho.MQTTv311, b"small", qos=1))


# -- receiving --------------------------------------------------------------------------------------

def feed(client: paho.Client, peer: socket.socket, data: bytes, chunk_bytes: int) -> None:
    """Write `data` in chunks of at most `chunk_bytes`, letting the client read after each."""
    peer.setblocking(False)
    sent = 0
    while True:
        try:
            sent += peer.send(data[sent:sent + chunk_bytes]) if sent < len(data) else 0
        except BlockingIOError:
            pass
        rc = client._packet_read()
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            rc = client._packet_read()
        assert rc == MQTTErrorCode.MQTT_ERR_AGAIN, rc
        if sent == len(data) and client._in_packet["command"] == 0:
            return


def receiving_client(protocol: int, sock: socket.socket) -> tuple[paho.Client, list[paho.MQTTMessage]]:
    client = new_client(FastPathClient, protocol)
    client._sock = sock
    delivered: list[paho.MQTTMessage] = []
    client.on_message = lambda _client, _userdata, message: delivered.append(message)
    return client, delivered


@settings(max_examples=25, deadline=None)
@given(protocol=st.sampled_from(PROTOCOLS), qos=st.sampled_from((0, 1)),
       payload_bytes=st.sampled_from((0, 1, 900, 5000, 200_000)), topic_chars=st.sampled_from((1, 40, 3000)),
       chunk_bytes=st.sampled_from((1, 7, 1500, 2**20)))
def test_received_payload_is_a_read_only_aligned_view_with_the_sent_bytes(
        protocol: int, qos: int, payload_bytes: int, topic_chars: int, chunk_bytes: int) -> None:
    payload = np.random.default_rng(payload_bytes).integers(0, 256, payload_bytes, dtype=np.uint8).tobytes()
    topic = "t" * topic_chars
    sender = new_client(paho.Client, protocol)
    packet = build_publish(sender, topic, payload, qos)
    client_end, peer_end = socket.socketpair()
    with client_end, peer_end:
        client_end.setblocking(False)
        client, delivered = receiving_client(protocol, client_end)
        chunk = chunk_bytes if payload_bytes < 100_000 or chunk_bytes > 1 else 4096  # keep 1-byte feeds short
        feed(client, peer_end, packet + b"\xd0\x00", chunk)  # a PINGRESP right behind it
        assert len(delivered) == 1
        message = delivered[0]
        assert (message.topic, message.qos, message.mid) == (topic, qos, 1 if qos else 0)
        assert isinstance(message.payload, memoryview) and message.payload.readonly
        assert bytes(message.payload) == payload
        if payload_bytes:
            assert np.frombuffer(message.payload, np.uint8).ctypes.data % 16 == 0
        peer_end.setblocking(False)
        assert drain(peer_end) == (b"\x40\x02\x00\x01" if qos else b"")  # paho acknowledged it
        assert client._in_packet == _idle_in_packet()


@pytest.mark.parametrize(("protocol", "puback_body", "failure"), [
    (paho.MQTTv311, b"", False), (paho.MQTTv5, b"", False), (paho.MQTTv5, b"\x00", False),
    (paho.MQTTv5, b"\x00\x00", False), (paho.MQTTv5, b"\x87", True), (paho.MQTTv5, b"\x10\x00", False),
])
def test_puback_completes_the_publish_with_its_reason(wire_pair, protocol: int, puback_body: bytes,
                                                      failure: bool) -> None:
    """Success PUBACKs take the shortcut, refusals (0x87 Not authorized) and 0x10 (no subscribers) paho's path."""
    client_end, peer_end = wire_pair
    client = new_client(FastPathClient, protocol)
    client._sock = client_end
    acknowledged: list[tuple[int, bool, str]] = []
    client.on_publish = lambda _c, _u, mid, reason, _p: acknowledged.append((mid, reason.is_failure, reason.getName()))
    info = client.publish(TOPIC, b"payload", qos=1)
    drain(peer_end)
    feed(client, peer_end, bytes([0x40, 2 + len(puback_body)]) + info.mid.to_bytes(2, "big") + puback_body, 4096)
    assert [(mid, is_failure) for mid, is_failure, _ in acknowledged] == [(info.mid, failure)]
    assert info.is_published() and not client._out_messages
    if puback_body[:1] == b"\x10":
        assert acknowledged[0][2] == "No matching subscribers"


def test_network_thread_waits_for_the_rest_of_a_payload_in_one_read(wire_pair) -> None:
    """Threaded mode: a payload arriving in pieces is read by one `_packet_read`, not one paho loop per piece;
    a publisher's wake through the socket pair ends the wait at once."""
    client_end, peer_end = wire_pair
    client, delivered = receiving_client(paho.MQTTv311, client_end)
    client._thread = threading.current_thread()
    packet = build_publish(new_client(paho.Client, paho.MQTTv311), TOPIC, b"p" * 100_000, 0)
    peer_end.setblocking(True)
    peer_end.sendall(packet[:5000])
    later = threading.Timer(0.01, peer_end.sendall, args=(packet[5000:],))
    later.start()
    assert client._packet_read() == MQTTErrorCode.MQTT_ERR_SUCCESS  # not AGAIN after the first piece
    later.join()
    assert [bytes(message.payload) for message in delivered] == [b"p" * 100_000]
    wake_end, wake_peer = socket.socketpair()
    with wake_end, wake_peer:
        client._sockpairR = wake_peer
        peer_end.sendall(packet[:5000])
        wake_end.send(paho.sockpair_data)
        assert client._packet_read() == MQTTErrorCode.MQTT_ERR_AGAIN and len(delivered) == 1


def build_publish(sender: paho.Client, topic: str, payload: bytes, qos: int) -> bytes:
    """The PUBLISH packet plain paho writes (mid 1)."""
    client_end, peer_end = socket.socketpair()
    with client_end, peer_end:
        sender._sock = client_end
        sender._send_publish(1, topic.encode(), payload, qos, info=paho.MQTTMessageInfo(1))
        peer_end.setblocking(False)
        return drain(peer_end)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_qos2_and_mqtt5_properties_take_paho_s_own_path(wire_pair, protocol: int) -> None:
    client_end, peer_end = wire_pair
    client, delivered = receiving_client(protocol, client_end)
    properties = None
    if protocol == paho.MQTTv5:
        properties = Properties(PacketTypes.PUBLISH)
        properties.UserProperty = ("stage", "2")
    sender = new_client(paho.Client, protocol)
    sender_end, sender_peer = socket.socketpair()
    with sender_end, sender_peer:
        sender._sock = sender_end
        sender._send_publish(9, TOPIC.encode(), b"x" * 70_000, 2, properties=properties)
        sender._send_publish(10, TOPIC.encode(), b"y" * 70_000, 1, properties=properties)
        sender_peer.setblocking(False)
        packets = drain(sender_peer)
    feed(client, peer_end, packets, 4096)
    assert [bytes(message.payload)[:1] for message in delivered] == [b"y"]  # QoS 2 waits for PUBREL
    feed(client, peer_end, b"\x62\x02\x00\x09", 4096)  # PUBREL
    assert [(bytes(message.payload), message.qos) for message in delivered][1] == (b"x" * 70_000, 2)
    if protocol == paho.MQTTv5:
        assert all(message.properties.UserProperty == [("stage", "2")] for message in delivered)


@pytest.mark.parametrize("body", (b"\x00\x09edge", b"\x00", b"\x00\x02ab\x00\x01\xff\xff\xff\xff\x01"))
def test_malformed_publish_is_a_protocol_error(wire_pair, body: bytes) -> None:
    client_end, peer_end = wire_pair
    client, delivered = receiving_client(paho.MQTTv5, client_end)
    peer_end.sendall(bytes([0x32, len(body)]) + body)
    results = {client._packet_read() for _ in range(3)}
    assert MQTTErrorCode.MQTT_ERR_PROTOCOL in results and not delivered


@pytest.mark.parametrize(("head", "qos", "mqtt5", "expected"), [
    (b"", 0, False, None), (b"\x00", 1, False, None), (b"\x00\x03", 0, False, 5), (b"\x00\x03", 1, False, 7),
    (b"\x00\x03abc\x00\x01", 1, True, None), (b"\x00\x03abc\x00\x01\x00", 1, True, 8),
    (b"\x00\x03abc\x00\x01\x85", 1, True, None), (b"\x00\x03abc\x00\x01\x85\x01", 1, True, 9 + 133),
])
def test_publish_header_bytes(head: bytes, qos: int, mqtt5: bool, expected: int | None) -> None:
    assert publish_header_bytes(head, qos, mqtt5) == expected
    assert HEAD_READ_BYTES >= 2


# -- through real brokers ---------------------------------------------------------------------------

def test_large_messages_round_trip_through_the_broker(broker, request) -> None:
    deployment = "f" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:12]
    decoded: queue.Queue[Message] = queue.Queue()
    raw: queue.Queue[bytes] = queue.Queue()
    tensors = [np.random.default_rng(seed).standard_normal(seed * 250_000).astype(np.float32) for seed in (1, 2, 3)]
    with MqttTransport(broker.url, f"{deployment}-a") as sender, MqttTransport(broker.url, f"{deployment}-b") as receiver:
        receiver.subscribe_messages(device_topic(deployment, "b"), lambda message, topic: decoded.put(message))
        receiver.subscribe(device_topic(deployment, "raw"), lambda payload, topic: raw.put(payload))
        publishers = [threading.Thread(target=sender.publish_message, args=(
            device_topic(deployment, "b"), Message("activation", f"r{index}", "a", {"x": array})))
            for index, array in enumerate(tensors)]
        for publisher in publishers:
            publisher.start()
        for publisher in publishers:
            publisher.join()
        sender.publish(device_topic(deployment, "raw"), b"z" * 200_000)
        got = {message.request_id: message for message in (decoded.get(timeout=20) for _ in tensors)}
        assert raw.get(timeout=20) == b"z" * 200_000
    for index, array in enumerate(tensors):
        received = got[f"r{index}"].tensors["x"]
        assert not received.flags.writeable and received.flags.aligned
        assert np.array_equal(received, array)
