"""A minimal MQTT 3.1.1 client on a plain socket (QoS 0, no keepalive traffic): the broker's floor.

Why: what any client must pay through a broker at least, so that the broker path's cost can be told
apart from our client's (paho + wire format + acknowledgements). `edgecloud calibrate` and
bench/transport.py ping-pong through it. No login: a broker with passwords is measured with our client
alone. TLS (an `ssl.SSLContext`) only so that bench/transport.py can tell the broker's and the
cipher's share of a TLS hop from our client's.
"""

from __future__ import annotations

import select
import socket
import ssl
import struct
from collections.abc import Callable


def recv_exactly(connection: socket.socket, buffer: memoryview) -> None:
    received = 0
    while received < len(buffer):
        count = connection.recv_into(buffer[received:])
        if count == 0:
            raise ConnectionError("peer closed the connection")
        received += count


def _varint(value: int) -> bytes:
    encoded = bytearray()
    while True:
        value, digit = divmod(value, 128)
        encoded.append(digit | (0x80 if value else 0))
        if not value:
            return bytes(encoded)


def _mqtt_string(text: str) -> bytes:
    return struct.pack("!H", len(text)) + text.encode()


def read_packet(connection: socket.socket) -> bytearray:
    """The body (after the fixed header) of the next packet."""
    byte = bytearray(1)
    recv_exactly(connection, memoryview(byte))  # packet type
    length, multiplier = 0, 1
    while True:
        recv_exactly(connection, memoryview(byte))
        length += (byte[0] & 0x7F) * multiplier
        multiplier *= 128
        if not byte[0] & 0x80:
            break
    body = bytearray(length)
    recv_exactly(connection, memoryview(body))
    return body


def connect(host: str, port: int, client_id: str, subscribe_to: str,
            tls: ssl.SSLContext | None = None) -> socket.socket:
    """A connected, subscribed socket with TCP_NODELAY (CONNACK and SUBACK read), wrapped in `tls` if given."""
    connection = socket.create_connection((host, port))
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls is not None:
        connection = tls.wrap_socket(connection, server_hostname=host)
    hello = _mqtt_string("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 0) + _mqtt_string(client_id)
    connection.sendall(bytes([0x10]) + _varint(len(hello)) + hello)
    read_packet(connection)  # CONNACK
    subscribe = struct.pack("!H", 1) + _mqtt_string(subscribe_to) + bytes([0])
    connection.sendall(bytes([0x82]) + _varint(len(subscribe)) + subscribe)
    read_packet(connection)  # SUBACK
    return connection


def publish_header(topic: str, payload_bytes: int) -> bytes:
    """Fixed and variable header of a QoS 0 PUBLISH of `payload_bytes` to `topic`."""
    encoded_topic = _mqtt_string(topic)
    return bytes([0x30]) + _varint(len(encoded_topic) + payload_bytes) + encoded_topic


def echo(connection: socket.socket, answer_topic: str, stopped: Callable[[], bool]) -> None:
    """Republish every payload arriving on `connection` to `answer_topic`, untouched, until `stopped()`."""
    while not stopped():
        # a TLS socket may hold decrypted bytes that select cannot see
        buffered = isinstance(connection, ssl.SSLSocket) and connection.pending() > 0
        if not buffered and not select.select([connection], [], [], 0.2)[0]:
            continue
        body = read_packet(connection)
        topic_bytes = struct.unpack_from("!H", body)[0]
        payload = memoryview(body)[2 + topic_bytes:]
        connection.sendall(publish_header(answer_topic, len(payload)))
        connection.sendall(payload)
