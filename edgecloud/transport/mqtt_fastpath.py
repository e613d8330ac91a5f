"""A paho-mqtt client that moves large PUBLISH payloads without copying them in Python.

Why it exists: paho-mqtt 2.2 copies a payload about six times on its way through the client, which
made a 1 MB activation take ~10x one raw TCP hop through Mosquitto (the broker alone costs ~3x):
- sending, `Client._send_publish` builds the packet by extending a bytearray with the payload, and
  `Client._packet_write` passes `packet[pos:]` to `send` after every partial send, which copies the
  whole unsent rest each time (quadratic in the payload for messages larger than the socket buffer);
- receiving, `Client._packet_read` grows a bytearray with `+=` for every `recv` and
  `_packet.decode_publish` slices the packet with `struct.unpack` three or four times (topic, packet
  id, MQTT 5 properties), each time copying the payload.
See paho's `Client._packet_write`/`_packet_read` and `paho/mqtt/_packet.py` in paho-mqtt 2.2.0.

What this subclass changes, and nothing else:
- `_send_publish`: a payload of at least `GATHER_MIN_PAYLOAD_BYTES` is queued as a header plus a
  read-only view of the caller's payload (`_GatheredPacket`), whose `[pos:]` slice copies nothing;
  smaller payloads take paho's own path.
  A `GatheredPayload` (several buffers, e.g. our wire header and the tensors) is queued the same way
  without ever being joined.
- `_sock_send`: on plain TCP, one `sendmsg` (writev) of the header and every payload buffer left; on
  TLS (no sendmsg) the next piece (header and a first chunk of payload joined, so that no tiny TCP
  segment precedes the payload); other packets as paho's own `_sock_send`.
- `_packet_read`: reads the fixed header as paho does, then `recv_into` preallocated buffers; a QoS 0/1
  PUBLISH is split while it arrives into its variable header and a payload buffer of exactly the
  payload's size (16-byte aligned, so our wire format's 8-aligned tensors stay aligned).
- `_packet_queue` (threaded mode only): a packet is sent right away by the thread that queues it when
  nothing is queued before it, instead of waking the network thread through paho's socket pair (a
  thread handoff and GIL contention per message, or an extra select round on the network thread);
  `_packet_write` takes the same lock, so only one thread writes and the socket sees queue order.
- `_handle_publish`: a split QoS 0/1 PUBLISH without MQTT 5 properties gets its topic and packet id
  read here (no `Properties` object, no slicing), then paho's handlers and PUBACK as paho does; one
  with properties goes through paho's `_handle_publish`, which parses the variable header alone.
- `_handle_pubackcomp`: a successful PUBACK calls paho's `_do_on_publish` with a shared success
  reason code and empty properties instead of decoding new ones (paho builds two of each per PUBACK).
- `_handle_on_message`: attaches the payload to the message just before the callbacks run. QoS 2 and
  all other packets are read whole and go through paho's code unchanged.
- `_packet_read` (threaded mode only) waits in the kernel (select, up to `PAYLOAD_WAIT_S`) for the rest
  of a payload it has begun to receive, unless a packet waits to be written or a publisher woke the loop.
- `max_packet_bytes` (None: no limit): a PUBLISH whose packet is larger is read through a small
  scratch buffer and dropped with a logged warning (paho still acknowledges it, so the broker does
  not resend it); any other packet that large ends the connection as a protocol error. Why: an MQTT
  3.1.1 broker has no way to learn our limit, and paho would buffer a 200 MiB message whole.
Consequence for users: `MQTTMessage.payload` of a QoS 0/1 message is a read-only `memoryview` (zero
copy), not `bytes`; `bytes(message.payload)` copies it if needed. Paho's debug log reports such a
payload as 0 bytes.

The overridden methods are private paho API: the supported range is `PAHO_VERSION_RANGE` (pin it in
pyproject.toml), and tests/test_mqtt_fastpath.py fails loudly when their signatures or the packet
dictionaries they share with paho change. Plain TCP and TLS sockets only (paho's websocket wrapper
has no `recv_into`).
"""

from __future__ import annotations

import dataclasses
import logging
import select
import socket
import ssl
import struct
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

__all__ = ["FastPathClient", "GATHER_MIN_PAYLOAD_BYTES", "GatheredPayload", "PAHO_VERSION_RANGE", "publish_header_bytes"]

PAHO_VERSION_RANGE = ">=2.2,<2.3"  # the versions whose private methods this module was checked against
# Below this size a payload copy costs less than the Python bookkeeping that avoids it.
GATHER_MIN_PAYLOAD_BYTES = 64 * 2**10
# The header goes out joined with this much payload: one segment instead of a tiny one first.
FIRST_CHUNK_BYTES = 64 * 2**10
# Bytes read first into the small buffer that receives a PUBLISH's topic, packet id and properties.
HEAD_READ_BYTES = 1024
MAX_REMAINING_LENGTH_BYTES = 4  # MQTT encodes the remaining length in at most 4 bytes
RECV_CALLS_PER_READ = 100  # as paho: let the loop serve writes and pings during a huge message
PAYLOAD_ALIGNMENT_BYTES = 16
DISCARD_CHUNK_BYTES = 256 * 2**10  # scratch buffer that an oversized payload is read into and dropped
# How long one read waits in the kernel for the rest of a payload it has begun to receive, instead of
# going back through paho's loop for every segment; beyond it paho's loop runs (keepalive) and reading resumes.
PAYLOAD_WAIT_S = 0.05
# How long a publishing thread waits for the network thread's non-blocking write to finish (see
# `FastPathClient._send_queued`) before it hands its packet to the network thread instead.
WRITE_LOCK_WAIT_S = 0.01

logger = logging.getLogger(__name__)
# What paho builds for every successful PUBACK (two objects of each on MQTT 5), built once: the
# on_publish callback only reads them.
_PUBACK_SUCCESS = ReasonCode(PacketTypes.PUBACK)
_NO_PUBACK_PROPERTIES = Properties(PacketTypes.PUBACK)


def publish_header_bytes(head: bytes | bytearray | memoryview, qos: int, mqtt5: bool) -> int | None:
    """Length of a PUBLISH variable header (topic, packet id, MQTT 5 properties) starting `head`.

    None while `head` holds too few bytes to tell; MalformedPacket for an impossible properties length.
    """
    if len(head) < 2:
        return None
    length = 2 + int.from_bytes(head[:2], "big") + (2 if qos else 0)
    if not mqtt5:
        return length
    properties_bytes = 0
    for index in range(MAX_REMAINING_LENGTH_BYTES):
        if len(head) <= length + index:
            return None
        byte = head[length + index]
        properties_bytes += (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            return length + index + 1 + properties_bytes
    raise MalformedPacket("PUBLISH properties length takes more than 4 bytes")


class GatheredPayload(bytes):
    """A payload made of several buffers (e.g. our wire header and the tensors' own memory), published
    without joining them: paho accepts only `bytes`, so this is an empty `bytes` whose `len` is the total.

    Only `FastPathClient` reads it (`_send_publish`); paho merely stores it for a resend and takes its
    `len`. The buffers are read when the socket takes them (and again on a resend after a reconnect),
    so they must not change until the publish is acknowledged.
    """

    parts: tuple[memoryview, ...]
    total_bytes: int

    def __new__(cls, parts: list[Any]) -> GatheredPayload:
        payload = super().__new__(cls)
        payload.parts = tuple(memoryview(part).cast("B") for part in parts)
        payload.total_bytes = sum(len(part) for part in payload.parts)
        return payload

    def __len__(self) -> int:
        return self.total_bytes

    def joined(self) -> bytes:
        return b"".join(self.parts)


@dataclass(frozen=True)
class _GatheredPacket:
    """An outgoing PUBLISH as header + payload views; `[pos:]` moves an offset instead of copying.

    paho's `_packet_write` only ever takes `len()` of a queued packet and slices it `[pos:]`.
    """

    header: bytes
    parts: tuple[memoryview, ...]
    offset: int = 0

    def __len__(self) -> int:
        return len(self.header) + sum(len(part) for part in self.parts) - self.offset

    def __getitem__(self, index: slice) -> _GatheredPacket:
        if not isinstance(index, slice) or index.stop is not None or index.step not in (None, 1):
            raise TypeError("a gathered packet only supports [start:] slices")
        return dataclasses.replace(self, offset=self.offset + (index.start or 0))

    def buffers(self) -> list[memoryview]:
        """What is left to send, as views (for one `sendmsg`)."""
        left: list[memoryview] = []
        skip = self.offset
        for buffer in (memoryview(self.header), *self.parts):
            if skip >= len(buffer):
                skip -= len(buffer)
                continue
            left.append(buffer[skip:])
            skip = 0
        return left

    def next_chunk(self) -> bytes | memoryview:
        """The bytes to hand to one `send` call: header rest plus a first payload chunk, or the current part's rest."""
        left = self.buffers()
        if self.offset < len(self.header):
            first = bytearray(left[0])
            for buffer in left[1:]:
                if len(first) >= len(self.header) - self.offset + FIRST_CHUNK_BYTES:
                    break
                first += buffer[:FIRST_CHUNK_BYTES]
            return bytes(first)
        return left[0]


@dataclass
class _IncomingBody:
    """Receive state of one packet body (everything after the fixed header).

    `head` receives the whole body of most packets; for a QoS 0/1 PUBLISH only its variable header
    (plus whatever arrived with it, moved to `payload` once the header length is known).
    """

    command: int
    remaining_bytes: int
    split_publish: bool
    head: bytearray
    head_filled: int = 0
    header_bytes: int | None = None
    payload: memoryview | None = None
    payload_filled: int = 0
    discard: bool = False  # an oversized payload: `payload` is a scratch buffer, `payload_filled` counts bytes dropped

    @property
    def payload_bytes(self) -> int:
        return self.remaining_bytes - (self.header_bytes or 0)

    @property
    def complete(self) -> bool:
        if not self.split_publish:
            return self.head_filled == self.remaining_bytes
        return self.payload is not None and self.payload_filled == self.payload_bytes

    def free_space(self) -> memoryview:
        if self.payload is not None:
            if self.discard:
                return self.payload[:min(len(self.payload), self.payload_bytes - self.payload_filled)]
            return self.payload[self.payload_filled:]
        return memoryview(self.head)[self.head_filled:]

    def took(self, count: int, mqtt5: bool, max_packet_bytes: int | None = None) -> None:
        """Account for `count` bytes just received into `free_space()`."""
        if self.payload is not None:
            self.payload_filled += count
            return
        self.head_filled += count
        if self.split_publish:
            self._find_payload(mqtt5, max_packet_bytes)

    def _find_payload(self, mqtt5: bool, max_packet_bytes: int | None) -> None:
        qos = (self.command & 0x06) >> 1
        header_bytes = publish_header_bytes(memoryview(self.head)[:self.head_filled], qos, mqtt5)
        if header_bytes is None:
            if self.head_filled == self.remaining_bytes:
                raise MalformedPacket("PUBLISH packet ends inside its variable header")
            if self.head_filled == len(self.head):  # a long topic or many properties: read more
                self.head.extend(bytes(min(len(self.head), self.remaining_bytes - len(self.head))))
            return
        if header_bytes > self.remaining_bytes:
            raise MalformedPacket(f"PUBLISH header of {header_bytes} bytes exceeds its {self.remaining_bytes}-byte packet")
        if header_bytes > self.head_filled:  # its length is known, its bytes have not all arrived
            if header_bytes > len(self.head):
                self.head.extend(bytes(header_bytes - len(self.head)))
            return
        self.header_bytes = header_bytes
        early = self.head_filled - header_bytes  # payload bytes that arrived with the header
        if max_packet_bytes is not None and self.remaining_bytes > max_packet_bytes:
            self.discard = True
            self.payload = memoryview(bytearray(min(DISCARD_CHUNK_BYTES, self.payload_bytes)))
        else:
            self.payload = _aligned_buffer(self.payload_bytes)
            self.payload[:early] = memoryview(self.head)[header_bytes:self.head_filled]
        self.payload_filled = early


def _aligned_buffer(size_bytes: int) -> memoryview:
    """Uninitialised writable bytes starting at an aligned address (recv fills them)."""
    storage = np.empty(size_bytes + PAYLOAD_ALIGNMENT_BYTES, np.uint8)
    start = -storage.ctypes.data % PAYLOAD_ALIGNMENT_BYTES
    return memoryview(storage[start:start + size_bytes])


def _tracked(command: int, qos: int) -> bool:
    """Whether paho's `_packet_write` does work when this packet is written (QoS 0 PUBLISH: on_publish;
    DISCONNECT: closing), so that only paho's own write path may send it."""
    return (command & 0xF0 == paho.PUBLISH and qos == 0) or command & 0xF0 == paho.DISCONNECT


def _out_packet(command: int, packet: bytes | bytearray, mid: int, qos: int,
                info: paho.MQTTMessageInfo | None) -> dict[str, Any]:
    """An entry of paho's `_out_packet` queue, as paho's `_packet_queue` builds it (checked by the tests)."""
    return {"command": command, "mid": mid, "qos": qos, "pos": 0, "to_process": len(packet), "packet": packet,
            "info": info}


def _idle_in_packet() -> dict[str, Any]:
    """paho's `_in_packet` as paho sets it between packets (checked against paho by the tests)."""
    return {"command": 0, "have_remaining": 0, "remaining_count": [], "remaining_mult": 1, "remaining_length": 0,
            "packet": bytearray(b""), "to_process": 0, "pos": 0}


class FastPathClient(paho.Client):
    """`paho.mqtt.client.Client` with zero-copy large payloads; see the module docstring for why and how."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._incoming_body: _IncomingBody | None = None
        self._received_payload: memoryview | None = None
        self._write_lock = threading.Lock()  # one writer on the socket: the network thread or a publisher
        self._publishing = threading.local()  # `entry`: the PUBLISH that `publish` sends once paho's lock is free
        self.max_packet_bytes: int | None = None  # see the module docstring
        self._dropped_payload_bytes = 0

    # -- sending --------------------------------------------------------------------------------

    def _send_publish(self, mid: int, topic: bytes, payload: bytes | bytearray = b"", qos: int = 0,
                      retain: bool = False, dup: bool = False, info: paho.MQTTMessageInfo | None = None,
                      properties: paho.Properties | None = None) -> MQTTErrorCode:
        if len(payload) < GATHER_MIN_PAYLOAD_BYTES or self._sock is None or not isinstance(topic, bytes):
            if isinstance(payload, GatheredPayload):
                payload = payload.joined()  # paho's own path reads the bytes
            return super()._send_publish(mid, topic, payload, qos, retain, dup, info, properties)
        variable_header = bytearray()
        self._pack_str16(variable_header, topic)
        if qos > 0:
            variable_header += struct.pack("!H", mid)
        if self._protocol == paho.MQTTv5:
            variable_header += b"\x00" if properties is None else properties.pack()
        header = bytearray([paho.PUBLISH | ((dup & 0x1) << 3) | (qos << 1) | retain])
        self._pack_remaining_length(header, len(variable_header) + len(payload))
        header += variable_header
        self._easy_log(paho.MQTT_LOG_DEBUG, "Sending PUBLISH (d%d, q%d, r%d, m%d), '%s', ... (%d bytes, not copied)",
                       dup, qos, retain, mid, topic, len(payload))
        parts = payload.parts if isinstance(payload, GatheredPayload) else (memoryview(payload).toreadonly(),)
        packet = _GatheredPacket(bytes(header), parts)
        return self._packet_queue(paho.PUBLISH, packet, mid, qos, info)  # type: ignore[arg-type]

    def _packet_queue(self, command: int, packet: bytes | bytearray, mid: int, qos: int,
                      info: paho.MQTTMessageInfo | None = None) -> MQTTErrorCode:
        """Send what the socket takes now instead of waking the network thread.

        paho 2.2 in threaded mode always queues and wakes the network thread through a socket pair,
        even when the network thread itself queues (a PUBACK, a handler's publish): per message a
        thread handoff or an extra send, recv and select (measured: ~3 selects and 4 sends per
        message an echo answers). The packet is queued first and sent directly, with whatever is
        queued before it, while we hold the write lock, so the byte order on the socket is the
        queue order. Only packets whose completion paho's `_packet_write` does not track go out
        directly (not QoS 0 PUBLISH, not DISCONNECT); paho's other loop modes are unchanged. What
        the socket does not take now is written by the network thread, which selects for writing
        whenever the queue is not empty (so it needs no wake for its own packets).
        """
        if _tracked(command, qos) or self._thread is None or self.on_socket_register_write is not None:
            return super()._packet_queue(command, packet, mid, qos, info)
        entry = _out_packet(command, packet, mid, qos, info)
        self._out_packet.append(entry)
        if getattr(self._publishing, "active", False) and command & 0xF0 == paho.PUBLISH:
            self._publishing.entry = entry  # `publish` sends it as soon as it released paho's lock
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        self._send_queued(entry)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def publish(self, *args: Any, **kwargs: Any) -> paho.MQTTMessageInfo:
        """paho's `publish`, with the direct send (see `_packet_queue`) after paho's `_out_message_mutex`
        is released: the network thread takes that lock for every PUBACK, and was measured waiting
        ~0.25 ms per message on a publisher blocked in `send` while holding it."""
        self._publishing.active = True
        try:
            info = super().publish(*args, **kwargs)
        finally:
            self._publishing.active = False
        entry = self._publishing.__dict__.pop("entry", None)
        if entry is not None:
            self._send_queued(entry)
        return info

    def _send_queued(self, entry: dict[str, Any]) -> None:
        """Send the queue up to and including `entry` now; else leave it to the network thread (woken
        when we are not it).

        A thread other than the network thread waits (up to WRITE_LOCK_WAIT_S) for the write lock and
        also sends what is queued before `entry`: the network thread holds the lock only for
        non-blocking sends, typically the PUBACK of the message that made the caller publish, and
        handing the publish to it instead was measured at ~0.1 ms per message (a sockpair wake, a
        select round and GIL hand-offs). The network thread itself never waits for the lock.
        """
        waits = threading.current_thread() is not self._thread
        if self._write_lock.acquire(timeout=WRITE_LOCK_WAIT_S if waits else 0):
            try:
                if self._send_through(entry):
                    return
            finally:
                self._write_lock.release()
        if self._sockpairW is not None and waits:
            try:  # the rest is the network thread's: wake its select, as paho does
                self._sockpairW.send(paho.sockpair_data)
            except BlockingIOError:
                pass

    def _send_through(self, entry: dict[str, Any]) -> bool:
        """With the write lock held: send the queue's head packets until `entry` went out (True), or
        until the socket is full or a packet whose completion paho tracks heads the queue (False)."""
        while self._out_packet:
            head = self._out_packet[0]
            if _tracked(head["command"], head["qos"]) or not self._send_now(head):
                return False
            if head is entry:
                return True
        return False  # `entry` is gone: paho cleared the queue on a reconnect

    def _send_now(self, entry: dict[str, Any]) -> bool:
        """Send what the socket takes of the queue's head `entry` without blocking; True when all went out.

        Any socket error leaves the entry queued: the network thread retries and reports it.
        """
        while entry["to_process"] > 0:
            try:
                sent_bytes = self._sock_send(entry["packet"][entry["pos"]:])
            except OSError:  # BlockingIOError included: the socket buffer is full
                break
            if sent_bytes <= 0:
                break
            entry["pos"] += sent_bytes
            entry["to_process"] -= sent_bytes
        with self._msgtime_mutex:
            self._last_msg_out = paho.time_func()
        if entry["to_process"] > 0:
            return False
        if self._out_packet and self._out_packet[0] is entry:  # paho clears the queue on reconnect
            self._out_packet.popleft()
        return True

    def _packet_write(self) -> MQTTErrorCode:
        with self._write_lock:
            return super()._packet_write()

    def _sock_send(self, buf: bytes | bytearray) -> int:
        if not isinstance(buf, _GatheredPacket):
            return super()._sock_send(buf)
        if type(self._sock) is not socket.socket:  # TLS has no sendmsg
            return super()._sock_send(buf.next_chunk())  # type: ignore[arg-type]
        try:  # plain TCP: header and every part in one writev, nothing joined
            return self._sock.sendmsg(buf.buffers())
        except BlockingIOError as err:
            self._call_socket_register_write()
            raise BlockingIOError() from err

    # -- receiving ------------------------------------------------------------------------------

    def _sock_recv_into(self, target: memoryview) -> int:
        """`recv_into` with the exception mapping of paho's `_sock_recv` (TLS wants -> BlockingIOError)."""
        if self._sock is None:
            raise ConnectionError("self._sock is None")
        try:
            return self._sock.recv_into(target)  # type: ignore[union-attr]
        except ssl.SSLWantReadError as err:
            raise BlockingIOError() from err
        except ssl.SSLWantWriteError as err:
            self._call_socket_register_write()
            raise BlockingIOError() from err

    def _read_fixed_header(self) -> MQTTErrorCode | None:
        """Read the command byte and remaining length into `_in_packet`; None once both are complete."""
        incoming = self._in_packet
        while incoming["command"] == 0 or not incoming["have_remaining"]:
            try:
                byte = self._sock_recv(1)
            except BlockingIOError:
                return MQTTErrorCode.MQTT_ERR_AGAIN
            except OSError as err:
                self._easy_log(paho.MQTT_LOG_ERR, "failed to receive on socket: %s", err)
                return MQTTErrorCode.MQTT_ERR_CONN_LOST
            if not byte:
                return MQTTErrorCode.MQTT_ERR_CONN_LOST
            if incoming["command"] == 0:
                incoming["command"] = byte[0]
                continue
            incoming["remaining_count"].append(byte[0])
            if len(incoming["remaining_count"]) > MAX_REMAINING_LENGTH_BYTES:
                return MQTTErrorCode.MQTT_ERR_PROTOCOL
            incoming["remaining_length"] += (byte[0] & 0x7F) * incoming["remaining_mult"]
            incoming["remaining_mult"] *= 128
            if not byte[0] & 0x80:
                incoming["have_remaining"] = 1
                incoming["to_process"] = incoming["remaining_length"]
        return None

    def _packet_read(self) -> MQTTErrorCode:
        if self._in_packet["command"] == 0 or not self._in_packet["have_remaining"]:
            self._incoming_body = None  # also after paho reset `_in_packet` on a reconnect
            rc = self._read_fixed_header()
            if rc is not None:
                return rc
        body = self._incoming_body
        if body is None:
            command, remaining_bytes = self._in_packet["command"], self._in_packet["remaining_length"]
            # too short for a topic length: paho's own decode reports it as malformed
            split_publish = command & 0xF0 == paho.PUBLISH and (command & 0x06) >> 1 < 2 and remaining_bytes >= 2
            if not split_publish and self.max_packet_bytes is not None and remaining_bytes > self.max_packet_bytes:
                self._easy_log(paho.MQTT_LOG_ERR, "refusing a %d-byte packet (type 0x%02x): limit %d bytes",
                               remaining_bytes, command, self.max_packet_bytes)
                return MQTTErrorCode.MQTT_ERR_PROTOCOL
            head_bytes = min(remaining_bytes, HEAD_READ_BYTES) if split_publish else remaining_bytes
            body = self._incoming_body = _IncomingBody(command, remaining_bytes, split_publish, bytearray(head_bytes))
        mqtt5 = self._protocol == paho.MQTTv5
        for _ in range(RECV_CALLS_PER_READ):
            if body.complete:
                break
            try:
                received = self._sock_recv_into(body.free_space())
            except BlockingIOError:
                if body.payload is not None and self._rest_arrives():
                    continue
                return MQTTErrorCode.MQTT_ERR_AGAIN
            except OSError as err:
                self._easy_log(paho.MQTT_LOG_ERR, "failed to receive on socket: %s", err)
                return MQTTErrorCode.MQTT_ERR_CONN_LOST
            if received == 0:
                return MQTTErrorCode.MQTT_ERR_CONN_LOST
            try:
                body.took(received, mqtt5, self.max_packet_bytes)
            except MalformedPacket as exc:
                self._easy_log(paho.MQTT_LOG_DEBUG, "Received malformed packet: %s", exc)
                return MQTTErrorCode.MQTT_ERR_PROTOCOL
            with self._msgtime_mutex:
                self._last_bytes_received = paho.time_func()
        if not body.complete:
            return MQTTErrorCode.MQTT_ERR_AGAIN
        return self._handle_body(body)

    def _rest_arrives(self) -> bool:
        """Wait up to PAYLOAD_WAIT_S for more of a payload being received; False when the wait should be
        paho's loop's instead: a packet waits to be written, a publisher woke the loop, or nothing came.

        Why: a large payload arrives in many segments, and paho's loop costs a select plus its own
        bookkeeping for each (measured: the receiving end of a 1 MB ping-pong spent ~0.3 ms in it).
        """
        if self._thread is None or self._out_packet or self._sock is None:  # not our loop, or writes pending
            return False
        watched = [self._sock] if self._sockpairR is None else [self._sock, self._sockpairR]
        readable = select.select(watched, [], [], PAYLOAD_WAIT_S)[0]
        return readable == [self._sock]

    def _handle_body(self, body: _IncomingBody) -> MQTTErrorCode:
        """Let paho handle the complete packet; a split PUBLISH reaches paho without its payload."""
        if body.split_publish:
            self._in_packet["packet"] = bytes(memoryview(body.head)[:body.header_bytes])
            if body.discard:
                self._dropped_payload_bytes = body.payload_bytes
            else:
                self._received_payload = body.payload.toreadonly() if body.payload is not None else None
        else:
            self._in_packet["packet"] = body.head
        self._in_packet["to_process"] = 0
        self._in_packet["pos"] = 0
        try:
            rc = self._packet_handle()
        except MalformedPacket as exc:
            self._easy_log(paho.MQTT_LOG_DEBUG, "Received malformed packet: %s", exc)
            rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
        finally:
            self._received_payload = None
            self._dropped_payload_bytes = 0
            self._incoming_body = None
            self._in_packet = _idle_in_packet()  # type: ignore[assignment]
        with self._msgtime_mutex:
            self._last_bytes_received = paho.time_func()
        return rc

    def _handle_publish(self) -> MQTTErrorCode:
        """A split QoS 0/1 PUBLISH without MQTT 5 properties (all of ours: we send none) is handled
        here; anything else by paho. paho's `decode_publish` builds an MQTT 5 `Properties` object and
        slices the header with `struct.unpack` for every message (measured: two `Properties` objects
        per message an echo answers). What paho does after decoding is kept: the message handlers,
        then the PUBACK (QoS 1, unless manual acknowledgement is on)."""
        header = self._in_packet["packet"]
        command = self._in_packet["command"]
        qos = (command & 0x06) >> 1
        topic_end = 2 + int.from_bytes(header[:2], "big")
        properties_at = topic_end + (2 if qos else 0)
        mqtt5 = self._protocol == paho.MQTTv5
        if (self._received_payload is None or qos > 1 or len(header) != properties_at + mqtt5
                or (mqtt5 and header[properties_at] != 0) or (not mqtt5 and topic_end == 2)):
            return super()._handle_publish()
        mid = int.from_bytes(header[topic_end:properties_at], "big") if qos else 0
        message = paho.MQTTMessage(mid, header[2:topic_end])
        message.dup, message.qos, message.retain = bool(command & 0x08), qos, bool(command & 0x01)
        message.timestamp = paho.time_func()
        self._handle_on_message(message)
        if qos == 0 or self._manual_ack:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return self._send_puback(mid)

    def _handle_pubackcomp(self, cmd: str) -> MQTTErrorCode:
        """A PUBACK meaning success (MQTT 5: reason code 0 or none, no properties) is handled here without
        decoding it into new `ReasonCode` and `Properties` objects; anything else by paho."""
        packet = self._in_packet["packet"]
        if cmd != "PUBACK" or not (len(packet) == 2 or (len(packet) in (3, 4) and self._protocol == paho.MQTTv5
                                                          and not any(packet[2:]))):
            return super()._handle_pubackcomp(cmd)  # type: ignore[arg-type]
        mid = int.from_bytes(packet[:2], "big")
        with self._out_message_mutex:
            if mid in self._out_messages:
                return self._do_on_publish(mid, _PUBACK_SUCCESS, _NO_PUBACK_PROPERTIES)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_on_message(self, message: paho.MQTTMessage) -> None:
        if self._dropped_payload_bytes:
            logger.warning("dropped a %d-byte message on %s unread: more than the limit of %d bytes per packet",
                           self._dropped_payload_bytes, message.topic, self.max_packet_bytes)
            return  # paho acknowledges it after this returns
        if self._received_payload is not None:
            message.payload, self._received_payload = self._received_payload, None  # type: ignore[assignment]
        super()._handle_on_message(message)
