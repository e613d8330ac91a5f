"""MQTT transport for edgecloud messages (paho-mqtt 2.x), with request/response on top.

API (stable; used by the agents and the client):

    from edgecloud.transport.mqtt import MqttTransport, Requester
    from edgecloud.transport.topics import device_topic, inbox_filter, reply_topic, sender_topic
    with MqttTransport("mqtt://127.0.0.1:1883", client_id="edge") as transport:   # connects
        transport.subscribe_messages(inbox_filter("demo", "edge"), on_message)    # on_message(Message, topic)
        acked = transport.publish_message(sender_topic("demo", "cloud", "edge"), message)  # encodes, QoS 1
        acked.result(timeout=5.0)         # the broker's PUBACK; TransportError if an MQTT 5 broker refused it
        transport.publish(topic, payload_bytes)                                   # raw bytes, QoS 1
        transport.subscribe(topic, on_payload)                                    # on_payload(bytes, topic)

    requester = Requester(transport, reply_topic=device_topic("demo", "client"), max_in_flight=64)
    reply = requester.request(sender_topic("demo", "edge", "client"), message, timeout_s=5.0)   # blocking
    future = requester.submit(sender_topic("demo", "edge", "client"), message)                 # pipelined
    # a server answers on reply_topic(request.reply_to, itself), i.e. edgecloud/demo/client/in/edge

Handlers run on paho's network thread, one at a time: keep them quick (hand work to a queue or
an executor), never block on another request there, and do not call `subscribe` from them. An
exception in a handler is logged and the transport keeps running. `subscribe_messages` decodes
with `edgecloud.transport.wire.decode`; a message that fails validation is dropped with a logged warning
(its reason) and the next one is served.

Behaviour that matters, and why:
- MQTT 5 is tried first and MQTT 3.1.1 used when the broker refuses it (the embedded amqtt broker
  speaks 3.1.1 only); nothing depends on MQTT 5, since request id and reply topic travel in our
  wire header. What MQTT 5 adds where the broker speaks it: the broker's reason when it refuses a
  message (a refused request fails at once instead of at its timeout), Maximum Packet Size (the
  broker drops what is above our wire limit instead of sending it), and a 1 s session expiry with
  `clean_start=False`, so that a session present on our first connect reveals another live client
  with our identity (`IdentityInUseError`, instead of the two knocking each other off for ever).
- Credentials from the URL, a password file or the environment (`edgecloud.transport.mqtt_url`), masked in logs.
- QoS 1, never retained: activations must arrive, and a stale retained one must never be replayed.
- TCP_NODELAY on the client socket: without it a 10 KB message waits ~20 ms for Nagle vs delayed
  ACK (measured on this machine).
- A bounded outgoing queue (publish raises TransportError when full, instead of paho's default of
  buffering without limit), a bounded QoS 1 in-flight window, and a bounded number of pending
  requests in `Requester` — backpressure instead of unbounded memory.
- Reconnects with exponential back-off and re-subscribes; a generous keepalive so that a large
  transfer does not starve the ping (paho issue 914).
- A message encoding to more than `TransportOptions.chunk_bytes` (the wire limit, 16 MiB, less a chunk
  header: what fits one packet goes whole, sparing every hop the chunks' copies and CRCs) goes as chunks
  (`edgecloud.transport.chunks`: bounded, checksummed, reassembled within `chunk_limits`), so that
  no packet exceeds the broker's limit and keepalives and acknowledgements interleave with it.
- The paho client is `edgecloud.transport.mqtt_fastpath.FastPathClient`: large payloads are neither copied
  on send nor on receive (paho 2.2 copies them about six times); `subscribe_messages` decodes
  straight from the received buffer, `subscribe` hands its handler `bytes` as before; `publish_message`
  sends a large message's tensors from their own memory (one writev with our header). A publish
  from a thread other than paho's is sent by that thread (no handoff), into a 4 MiB send buffer.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edgecloud.errors import IdentityInUseError, TransportError, WireFormatError
from edgecloud.transport.broker import MQTT_PACKET_OVERHEAD_BYTES
from edgecloud.transport.chunks import (CHUNK_HEADER_BYTES, ChunkLimits, Reassembler, chunk_frames, credit_frame,
                                        is_chunk, is_credit, new_transfer_id, parse_credit)
from edgecloud.transport.held_close import HeldConnection
from edgecloud.transport.mqtt_fastpath import GATHER_MIN_PAYLOAD_BYTES, FastPathClient, GatheredPayload
from edgecloud.transport.mqtt_url import BrokerAddress, parse_broker_url, resolve_credentials
from edgecloud.transport.topics import device_topic, inbox_filter, parse_device_topic, parse_sender_topic, sender_topic
from edgecloud.transport.wire import DEFAULT_LIMITS, Message, WireLimits, decode, encoded_parts

__all__ = ["MqttTransport", "Requester", "TransportOptions", "device_topic", "sender_topic"]

logger = logging.getLogger(__name__)

QOS = 1
PayloadHandler = Callable[[bytes, str], None]
BufferHandler = Callable[[bytes | memoryview, str], None]  # what the client delivers (read-only)
MessageHandler = Callable[[Message, str], None]
SEND_BUFFER_BYTES = 4 * 2**20  # the kernel caps it at net.core.wmem_max (4 MiB by default)
CHUNK_ACK_TIMEOUT_S = 60.0  # one chunk (16 MiB by default) acknowledged, even over a slow link
UNSUPPORTED_PROTOCOL_VERSION = 0x84  # MQTT 5 reason code; paho maps a 3.1.1 refusal onto it too
# MQTT 5 only: how long the broker keeps a session after its connection drops. Not zero, because a
# session that outlives no connection is never reported as present, and "present on our first
# connect" is how we learn that another client holds our identity (see `IdentityInUseError`).
SESSION_EXPIRY_S = 1


@dataclass(frozen=True)
class TransportOptions:
    """Tuning of one MQTT connection; the defaults suit loopback and LAN deployments."""

    keepalive_s: int = 60
    connect_timeout_s: float = 10.0
    subscribe_timeout_s: float = 10.0
    max_queued_messages: int = 1000
    max_inflight_messages: int = 100
    reconnect_min_delay_s: float = 0.2
    reconnect_max_delay_s: float = 10.0
    close_flush_timeout_s: float = 2.0
    # for the broker to close the connection after our DISCONNECT: what close() adds when a broker hangs
    close_confirm_timeout_s: float = 2.0
    # A message encoding to more than this goes as chunks (edgecloud.transport.chunks), at most
    # `chunk_window` of them unacknowledged at once, so a sender holds a bounded share of a big message.
    # A sender waits up to `chunk_credit_timeout_s` for the receiver's credit (see `chunks`) before it
    # sends a chunk beyond the window: a slow receiver slows the sender instead of overflowing the broker,
    # provided the broker can queue one window (`chunk_window * chunk_bytes`, 64 MiB by default) per
    # subscriber (MosquittoBroker: 256 MiB).
    chunk_bytes: int = DEFAULT_LIMITS.max_message_bytes - CHUNK_HEADER_BYTES
    chunk_window: int = 4
    chunk_limits: ChunkLimits = ChunkLimits()
    chunk_credit_timeout_s: float = 60.0


class MqttTransport:
    """One MQTT connection with a fixed client id (= the device's identity on the broker)."""

    def __init__(self, url: str, client_id: str, options: TransportOptions = TransportOptions(),
                 limits: WireLimits = DEFAULT_LIMITS) -> None:
        self.address: BrokerAddress = resolve_credentials(parse_broker_url(url))
        self.client_id = client_id
        self.options = options
        self.limits = limits
        self.protocol: str | None = None  # "5" or "3.1.1" once connected
        self._client: paho.Client | None = None
        self._handlers: dict[str, BufferHandler] = {}
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._connack_answered = threading.Event()
        self._connack_reason: ReasonCode | None = None
        self._session_present = False
        self._suback_waiters: dict[int, tuple[threading.Event, list[ReasonCode]]] = {}
        self._network_thread: threading.Thread | None = None
        self._closing = False
        self._last_publish: paho.MQTTMessageInfo | None = None
        self._ack_lock = threading.Lock()  # never held while calling paho: its PUBACK handler holds paho's lock
        self._ack_waiters: dict[int, tuple[str, Future[None]]] = {}
        self._early_acks: dict[int, ReasonCode] = {}
        self._credit_changed = threading.Condition()
        self._credits: dict[bytes, tuple[str, int]] = {}  # transfer id -> (credit topic, chunks held by the receiver)

    # -- connection -------------------------------------------------------------------------

    def connect(self) -> Self:
        """Connect (MQTT 5, else 3.1.1) and start the network thread; TransportError when refused,
        IdentityInUseError when (over MQTT 5) another client is connected with this identity."""
        if self._client is not None:
            return self
        for protocol, label in ((paho.MQTTv5, "5"), (paho.MQTTv311, "3.1.1")):
            client = self._new_client(protocol)
            reason = self._first_connect(client)
            if reason is None:
                self._client, self.protocol = client, label
                logger.info("%s connected to %s:%d over MQTT %s", self.client_id, self.address.host,
                            self.address.port, label)
                return self
            if reason.value != UNSUPPORTED_PROTOCOL_VERSION:
                raise TransportError(f"broker {self.address.host}:{self.address.port} refused client "
                                     f"{self.client_id!r}: {reason.getName()} (check the URL's scheme, "
                                     f"credentials and TLS options).")
            logger.info("broker %s:%d refused MQTT 5; using MQTT 3.1.1", self.address.host, self.address.port)
        raise TransportError(f"broker {self.address.host}:{self.address.port} accepts neither MQTT 5 nor 3.1.1.")

    def _new_client(self, protocol: int) -> paho.Client:
        client = FastPathClient(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=protocol,
                             clean_session=None if protocol == paho.MQTTv5 else True)
        client.max_packet_bytes = self.max_packet_bytes  # also on MQTT 3.1.1, where the broker cannot be told
        client.max_queued_messages_set(self.options.max_queued_messages)
        client.max_inflight_messages_set(self.options.max_inflight_messages)
        client.reconnect_delay_set(self.options.reconnect_min_delay_s, self.options.reconnect_max_delay_s)  # type: ignore[arg-type]
        if self.address.username is not None:
            client.username_pw_set(self.address.username, self.address.password)
        if self.address.tls:
            self._set_tls(client)
        client.on_socket_open = self._on_socket_open
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        client.on_message = self._on_unrouted_message
        return client

    def _set_tls(self, client: paho.Client) -> None:
        """TLS from the URL's options; TransportError names the file that is missing or unusable
        (ssl's own errors say "No such file or directory" without saying which)."""
        files = {"ca": self.address.ca_file, "cert": self.address.cert_file, "key": self.address.key_file}
        for option, path in files.items():
            if path is not None and not os.path.isfile(path):
                raise TransportError(f"broker URL option {option}={path} names no file.")
        try:
            client.tls_set(ca_certs=self.address.ca_file, certfile=self.address.cert_file,
                           keyfile=self.address.key_file)
        except (OSError, ValueError) as error:  # ssl.SSLError is an OSError
            named = ", ".join(f"{option}={path}" for option, path in files.items() if path is not None)
            raise TransportError(f"cannot use the TLS files of the broker URL ({named}): {error}.") from None
        client.tls_insecure_set(self.address.insecure)

    def _first_connect(self, client: paho.Client) -> ReasonCode | None:
        """Connect `client` once; None on success, else the broker's refusal (client stopped)."""
        self._connack_answered.clear()
        self._connack_reason = None
        try:
            if client.protocol == paho.MQTTv5:
                client.connect(self.address.host, self.address.port, keepalive=self.options.keepalive_s,
                               clean_start=False, properties=self._connect_properties())
            else:
                client.connect(self.address.host, self.address.port, keepalive=self.options.keepalive_s)
        except (OSError, ValueError) as error:
            raise TransportError(f"cannot reach broker {self.address.host}:{self.address.port}: {error}.") from None
        client.loop_start()
        if not self._connack_answered.wait(self.options.connect_timeout_s):
            client.loop_stop()
            client.disconnect()
            raise TransportError(f"broker {self.address.host}:{self.address.port} did not answer CONNECT "
                                 f"within {self.options.connect_timeout_s:g} s.")
        reason = self._connack_reason
        if reason is None or not reason.is_failure:
            if self._session_present:
                self._disconnect_and_stop(client)
                raise IdentityInUseError(
                    f"another client is connected to broker {self.address.host}:{self.address.port} as "
                    f"{self._broker_client_id(client)!r}, so this one stops instead of knocking it off: is a "
                    f"second agent running for the same device (or one that stopped less than "
                    f"{SESSION_EXPIRY_S} s ago, or whose machine vanished less than "
                    f"{1.5 * self.options.keepalive_s:g} s ago)?")
            return None
        client.disconnect()
        client.loop_stop()
        return reason

    def _connect_properties(self) -> Properties:
        """MQTT 5 CONNECT properties. Maximum Packet Size makes the broker drop a message bigger than
        our wire limit instead of sending it (we would have to receive it whole before refusing it);
        a short session expiry lets us see a session that someone else's live connection holds."""
        properties = Properties(PacketTypes.CONNECT)
        properties.MaximumPacketSize = self.max_packet_bytes
        properties.SessionExpiryInterval = SESSION_EXPIRY_S
        return properties

    @property
    def max_packet_bytes(self) -> int:
        """The largest MQTT packet we take: our wire limit plus room for topic and framing."""
        return self.limits.max_message_bytes + MQTT_PACKET_OVERHEAD_BYTES

    def _broker_client_id(self, client: paho.Client) -> str:
        """The id the broker knows us by (Mosquitto's `use_username_as_clientid` replaces ours with the login)."""
        return self.address.username if self.address.username is not None else self.client_id

    def _disconnect_and_stop(self, client: paho.Client) -> None:
        """DISCONNECT (on MQTT 5 with session expiry 0, so that the broker forgets our session at once),
        stop the network thread, and return once the broker closed the connection (see `held_close`),
        so that the identity is free for the next client at once. Called on paho's own thread (a handler
        that closes its transport), loop_stop cannot wait for the DISCONNECT to go out: nothing is held."""
        on_network_thread = threading.current_thread() is self._network_thread
        with HeldConnection(None if on_network_thread else client.socket()) as held:
            if client.protocol == paho.MQTTv5:
                properties = Properties(PacketTypes.DISCONNECT)
                properties.SessionExpiryInterval = 0
                client.disconnect(properties=properties)
            else:
                client.disconnect()
            client.loop_stop()
            if held.holding and not held.wait_for_peer_close(self.options.close_confirm_timeout_s):
                logger.info("%s: broker %s:%d did not close the connection within %g s of DISCONNECT",
                            self.client_id, self.address.host, self.address.port, self.options.close_confirm_timeout_s)

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # the largest buffer the kernel allows: a publisher thread hands a whole activation to
            # the kernel in one non-blocking send instead of waking paho's thread for the rest
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        except (OSError, AttributeError) as error:  # e.g. a websocket wrapper without setsockopt
            logger.warning("could not set TCP_NODELAY and the send buffer on the MQTT socket: %s", error)

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any) -> None:
        self._network_thread = threading.current_thread()
        self._connack_reason = reason
        self._session_present = bool(getattr(flags, "session_present", False))
        self._connack_answered.set()
        if reason.is_failure:
            return
        self._connected.set()
        with self._lock:
            topics = list(self._handlers)
        for topic in topics:  # (re)subscribe: the session is clean on every connect
            client.subscribe(topic, qos=QOS)

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any) -> None:
        self._connected.clear()
        if not self._connack_answered.is_set():  # closed before CONNACK (e.g. plain MQTT to a TLS port)
            self._connack_reason = reason
            self._connack_answered.set()
            return
        if not self._closing and self._client is client:
            logger.warning("%s lost the broker connection (%s); reconnecting with back-off", self.client_id,
                           reason.getName())

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: list[ReasonCode], properties: Any) -> None:
        with self._lock:
            waiter = self._suback_waiters.pop(mid, None)
        if waiter is not None:
            waiter[1].extend(reasons)
            waiter[0].set()

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode, properties: Any) -> None:
        with self._ack_lock:
            waiter = self._ack_waiters.pop(mid, None)
            if waiter is None:  # acknowledged before `publish` registered it
                self._early_acks[mid] = reason
                return
        self._resolve_ack(*waiter, reason)

    def _resolve_ack(self, topic: str, acked: Future[None], reason: ReasonCode) -> None:
        if not reason.is_failure:
            acked.set_result(None)
            return
        # Not a warning here: a peer can make the broker refuse at will, so the caller, which gets the
        # error from the future, decides how loudly to say so (the agents: rate-limited).
        logger.debug("broker refused the message %s published to %s: %s", self.client_id, topic, reason.getName())
        acked.set_exception(TransportError(
            f"broker refused the message to {topic}: {reason.getName()} (with the fleet's ACL a login may write "
            f"only edgecloud/<deployment>/<device>/in/<its own name>)."))

    def _on_unrouted_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        logger.debug("%s dropped a message on %s: no handler", self.client_id, message.topic)

    @property
    def is_connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout_s: float) -> bool:
        """True once connected (again), False after `timeout_s`."""
        return self._connected.wait(timeout_s)

    def close(self) -> None:
        """Wait briefly for the last publish to be acknowledged, then disconnect and stop (idempotent)."""
        client, self._client = self._client, None
        if client is None:
            return
        self._closing = True
        last = self._last_publish
        if last is not None and self.is_connected:
            try:  # QoS 1 messages go out in order: once the last is acknowledged, all are
                last.wait_for_publish(self.options.close_flush_timeout_s)
            except (RuntimeError, ValueError) as error:
                logger.warning("%s closed with unacknowledged messages: %s", self.client_id, error)
        self._disconnect_and_stop(client)
        self._connected.clear()

    def __enter__(self) -> Self:
        return self.connect()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def _require_client(self) -> paho.Client:
        if self._client is None:
            raise TransportError(f"transport {self.client_id!r} is not connected; call connect() first.")
        return self._client

    # -- publish ----------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes) -> Future[None]:
        """Queue `payload` for `topic` at QoS 1 (sent after a reconnect if the link is down).

        The returned future resolves once the broker acknowledged the message, and fails with
        TransportError when an MQTT 5 broker refuses it (e.g. the ACL: "Not authorized"). An MQTT 3.1.1
        broker cannot say no: Mosquitto acknowledges a refused message as if it were delivered.
        Raises TransportError when the bounded outgoing queue is full: the caller is producing
        faster than the broker takes messages and must slow down.
        """
        info = self._require_client().publish(topic, payload, qos=QOS, retain=False)
        self._last_publish = info
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            raise TransportError(f"outgoing queue of {self.client_id!r} is full "
                                 f"({self.options.max_queued_messages} messages); the broker is not keeping up.")
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise TransportError(f"publishing to {topic} failed: {paho.error_string(info.rc)}.")
        acked: Future[None] = Future()
        with self._ack_lock:
            early = self._early_acks.pop(info.mid, None)
            if early is None:
                self._ack_waiters[info.mid] = (topic, acked)
        if early is not None:
            self._resolve_ack(topic, acked, early)
        return acked

    def publish_message(self, topic: str, message: Message) -> Future[None]:
        """Encode `message` with our wire limits and publish it (see `publish` for the future); one
        encoding to more than `options.chunk_bytes` goes as chunks, up to `chunk_limits`' size.

        A message of at least `GATHER_MIN_PAYLOAD_BYTES` that goes whole is sent from its tensors' own
        memory (no copy; see `GatheredPayload`): do not modify its arrays in place until the future resolves.
        """
        chunked = self.options.chunk_bytes < self.limits.max_message_bytes
        payload = GatheredPayload(encoded_parts(message, self._chunked_limits if chunked else self.limits))
        if chunked and len(payload) > self.options.chunk_bytes:
            return self._publish_chunks(topic, payload.joined())
        return self.publish(topic, payload if len(payload) >= GATHER_MIN_PAYLOAD_BYTES else payload.joined())

    @property
    def _chunked_limits(self) -> WireLimits:
        """Our wire limits with a whole message as large as the chunk limits allow."""
        return dataclasses.replace(self.limits, max_message_bytes=self.options.chunk_limits.max_message_bytes)

    def _publish_chunks(self, topic: str, payload: bytes) -> Future[None]:
        """Publish `payload` chunk by chunk, at most `chunk_window` of them beyond what the receiver
        holds (its credits, see `chunks`) and beyond what the broker acknowledged; the waits are never on
        paho's own thread, which reads credits and acknowledgements (there, chunks are only queued).
        Memory: the sender holds at most `chunk_window` chunk copies besides `payload`.
        The future is the last chunk's: it fails if any chunk was refused."""
        chunk_bytes = min(self.options.chunk_bytes, self.limits.max_message_bytes - CHUNK_HEADER_BYTES)
        window: list[Future[None]] = []
        waits = threading.current_thread() is not self._network_thread
        transfer_id = new_transfer_id()
        credit_topic = self._credit_topic(topic) if waits else None
        if credit_topic is not None:
            self._listen_for_credits(credit_topic)
            with self._credit_changed:
                self._credits[transfer_id] = (credit_topic, 0)
        try:
            for index, frame in enumerate(chunk_frames(payload, chunk_bytes, transfer_id)):
                if credit_topic is not None:
                    self._wait_credit(transfer_id, index, topic)
                if waits and len(window) >= self.options.chunk_window:
                    self._wait_acked(window.pop(0), topic)
                window.append(self.publish(topic, frame))
        finally:
            with self._credit_changed:
                self._credits.pop(transfer_id, None)
        if waits:
            for acked in window[:-1]:
                self._wait_acked(acked, topic)
        return window[-1]

    @staticmethod
    def _credit_topic(topic: str) -> str | None:
        """Where the receiver of a message on `topic` grants credits: our inbox, from it. None for a
        topic outside our scheme (no receiver to name): its chunks go at the broker's pace alone."""
        try:
            deployment, receiver, sender = parse_sender_topic(topic)
        except TransportError:
            logger.debug("no flow control for chunks on %s: not an edgecloud/<dep>/<to>/in/<from> topic", topic)
            return None
        return sender_topic(deployment, sender, receiver)

    def _listen_for_credits(self, credit_topic: str) -> None:
        """Subscribe to our inbox unless a subscription already covers `credit_topic` (every one of
        ours takes credit frames, see `_subscribe_buffers`); what else arrives there has no handler."""
        with self._lock:
            covered = any(paho.topic_matches_sub(topic, credit_topic) for topic in self._handlers)
        if not covered:
            deployment, sender = parse_device_topic(credit_topic.rpartition("/")[0])
            self._subscribe_buffers(inbox_filter(deployment, sender), self._drop_unhandled)

    def _drop_unhandled(self, payload: bytes | memoryview, topic: str) -> None:
        logger.debug("%s dropped a message on %s: subscribed for chunk credits only", self.client_id, topic)

    def _on_credit(self, topic: str, payload: bytes | memoryview) -> None:
        try:
            transfer_id, chunks_held = parse_credit(payload)
        except WireFormatError as error:
            logger.warning("%s rejected a credit frame on %s: %s", self.client_id, topic, error)
            return
        with self._credit_changed:
            expected = self._credits.get(transfer_id)
            if expected is None or expected[0] != topic:  # finished, or not from that transfer's receiver
                return
            if chunks_held > expected[1]:
                self._credits[transfer_id] = (topic, chunks_held)
                self._credit_changed.notify_all()

    def _wait_credit(self, transfer_id: bytes, index: int, topic: str) -> None:
        window = self.options.chunk_window
        with self._credit_changed:
            if not self._credit_changed.wait_for(lambda: self._credits[transfer_id][1] > index - window,
                                                 self.options.chunk_credit_timeout_s):
                raise TransportError(
                    f"the receiver on {topic} took no chunk for {self.options.chunk_credit_timeout_s:g} s "
                    f"(it holds {self._credits[transfer_id][1]} of the chunks sent; is it subscribed with "
                    "subscribe_messages, and connected?).")

    def _grant_credit(self, topic: str, transfer_id: bytes, chunks_held: int) -> None:
        """Tell the sender of a chunk on `topic` how many chunks of its transfer we hold (on paho's thread)."""
        credit_topic = self._credit_topic(topic)
        if credit_topic is None:
            return
        try:
            self.publish(credit_topic, credit_frame(transfer_id, chunks_held))
        except TransportError as error:  # the sender then times out, with its own reason
            logger.warning("%s could not grant chunk credit on %s: %s", self.client_id, credit_topic, error)

    def _wait_acked(self, acked: Future[None], topic: str) -> None:
        try:
            acked.result(timeout=CHUNK_ACK_TIMEOUT_S)
        except FutureTimeoutError:
            raise TransportError(f"the broker did not acknowledge a chunk published to {topic} within "
                                 f"{CHUNK_ACK_TIMEOUT_S:g} s.") from None

    # -- subscribe --------------------------------------------------------------------------

    def subscribe(self, topic: str, handler: PayloadHandler) -> None:
        """Call `handler(payload, topic)` for each message on `topic` (wildcards allowed).

        Returns once the broker acknowledged the subscription, so that a message published
        afterwards is delivered; TransportError when the broker refuses it.
        """
        self._subscribe_buffers(topic, lambda payload, message_topic: handler(bytes(payload), message_topic))

    def _subscribe_buffers(self, topic: str, handler: BufferHandler) -> None:
        """`subscribe` without the copy into `bytes`: `handler` gets the client's read-only buffer."""
        client = self._require_client()

        def dispatch(_client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
            try:
                if is_credit(message.payload):  # the chunk protocol's, never the application's
                    self._on_credit(message.topic, message.payload)
                    return
                handler(message.payload, message.topic)
            except Exception:  # a handler bug must not kill the network thread
                logger.exception("handler for %s failed on a message from topic %s", topic, message.topic)

        with self._lock:
            self._handlers[topic] = handler
        client.message_callback_add(topic, dispatch)
        if threading.current_thread() is self._network_thread:
            client.subscribe(topic, qos=QOS)  # waiting here would block the thread that reads the SUBACK
            return
        done, reasons = threading.Event(), []
        with self._lock:
            result, mid = client.subscribe(topic, qos=QOS)
            if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return  # not connected now: on_connect subscribes after the reconnect
            self._suback_waiters[mid] = (done, reasons)
        if not done.wait(self.options.subscribe_timeout_s):
            raise TransportError(f"broker did not acknowledge the subscription to {topic} "
                                 f"within {self.options.subscribe_timeout_s:g} s.")
        refused = [reason for reason in reasons if reason.is_failure]
        if refused:
            raise TransportError(f"broker refused the subscription to {topic}: {refused[0].getName()}.")

    def subscribe_messages(self, topic: str, handler: MessageHandler) -> None:
        """Like `subscribe`, but decodes and validates each payload first (see module docstring)."""

        # called from paho's one thread only; holds one buffer per open transfer, within chunk_limits
        reassembler = Reassembler(self.options.chunk_limits, on_progress=self._grant_credit)

        def decode_then_handle(payload: bytes | memoryview, message_topic: str) -> None:
            try:
                if is_chunk(payload):
                    whole = reassembler.add(message_topic, payload)
                    if whole is None:
                        return
                    message = decode(whole, self._chunked_limits)
                else:
                    message = decode(payload, self.limits)
            except WireFormatError as error:
                logger.warning("%s rejected a %d-byte message on %s: %s", self.client_id, len(payload),
                               message_topic, error)
                return
            handler(message, message_topic)

        self._subscribe_buffers(topic, decode_then_handle)

    def unsubscribe(self, topic: str) -> None:
        """Stop delivering `topic` (and stop re-subscribing to it after reconnects)."""
        client = self._require_client()
        with self._lock:
            self._handlers.pop(topic, None)
        client.message_callback_remove(topic)
        client.unsubscribe(topic)


class Requester:
    """Request/response over a transport, matched by the request id in our wire header.

    `reply_topic` is a base inbox (`device_topic`); each request's `reply_to` is set to it and replies
    (kind "result" or "error") arrive on its per-sender topics (`reply_topic/<replier>`, see
    `edgecloud.transport.topics`). A reply whose header `sender` differs from the topic's sender is dropped with
    a logged reason: with the broker's ACL (`device_acl`), the topic is the authenticated sender.
    At most `max_in_flight` requests are pending: `submit` blocks (up to `timeout_s`) for a slot.
    A reply to an unknown or abandoned request id is logged and dropped.
    """

    def __init__(self, transport: MqttTransport, reply_topic: str, max_in_flight: int = 64) -> None:
        self.transport = transport
        self.reply_topic = reply_topic
        self.max_in_flight = max_in_flight
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._pending: dict[str, Future[Message]] = {}
        self._acks: dict[str, Future[None]] = {}  # the broker's acknowledgement of each pending request
        self._lock = threading.Lock()
        parse_device_topic(reply_topic)  # a base inbox, or replies could never match `reply_topic/<replier>`
        transport.subscribe_messages(f"{reply_topic}/+", self._on_reply)

    def _on_reply(self, message: Message, topic: str) -> None:
        topic_sender = topic.rpartition("/")[2]
        if message.sender != topic_sender:
            logger.warning("reply topic %s got a message for %s claiming sender %r; dropped", topic,
                           message.request_id, message.sender)
            return
        if message.kind not in ("result", "error"):
            logger.warning("reply topic %s got a %r message for %s; dropped", topic, message.kind, message.request_id)
            return
        with self._lock:
            future = self._pending.get(message.request_id)
        if future is None:
            logger.info("dropped a reply to unknown or abandoned request %s", message.request_id)
            return
        try:
            future.set_result(message)
        except InvalidStateError:  # cancelled by a caller that stopped waiting a moment ago
            logger.info("dropped a reply to abandoned request %s", message.request_id)

    def submit(self, topic: str, message: Message, timeout_s: float | None = None) -> Future[Message]:
        """Send `message` to `topic`; the future resolves to the reply.

        If you stop waiting for the future, cancel it: that frees its in-flight slot.
        """
        if not self._slots.acquire(timeout=timeout_s):
            raise TransportError(f"{self.max_in_flight} requests are already in flight; none finished within {timeout_s:g} s.")
        future: Future[Message] = Future()
        with self._lock:
            if message.request_id in self._pending:
                self._slots.release()
                raise TransportError(f"request id {message.request_id!r} is already in flight.")
            self._pending[message.request_id] = future

        def finish(_: Future[Message]) -> None:
            with self._lock:
                self._pending.pop(message.request_id, None)
            self._slots.release()

        future.add_done_callback(finish)
        try:
            acked = self.transport.publish_message(topic, dataclasses.replace(message, reply_to=self.reply_topic))
        except (TransportError, WireFormatError):
            future.cancel()
            raise
        self._acks[message.request_id] = acked
        future.add_done_callback(lambda _: self._acks.pop(message.request_id, None))
        acked.add_done_callback(lambda done: self._fail_if_refused(future, done))
        return future

    @staticmethod
    def _fail_if_refused(future: Future[Message], acked: Future[None]) -> None:
        """A request the broker refused never gets an answer: fail it now rather than at its timeout."""
        error = acked.exception()
        if error is not None:
            try:
                future.set_exception(error)
            except InvalidStateError:  # answered or cancelled meanwhile
                pass

    def request(self, topic: str, message: Message, timeout_s: float) -> Message:
        """Send and wait for the reply; TransportError when the broker refuses the request or no
        reply arrives within `timeout_s`."""
        future = self.submit(topic, message, timeout_s)
        try:
            return future.result(timeout_s)
        except FutureTimeoutError:
            raise TransportError(self.timeout_reason(message.request_id, timeout_s)) from None
        finally:
            future.cancel()

    def timeout_reason(self, request_id: str, timeout_s: float) -> str:
        """Why request `request_id` went unanswered, as far as we can tell (call before cancelling it):
        an MQTT 3.1.1 broker says nothing when it refuses a message, but it acknowledges what it accepted."""
        acked = self._acks.get(request_id)
        if acked is not None and not acked.done():
            return (f"the broker did not even acknowledge request {request_id!r} within {timeout_s:g} s "
                    "(refused, or the connection is down).")
        return f"no reply to request {request_id!r} within {timeout_s:g} s."

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._pending)
