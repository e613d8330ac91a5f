"""What a message costs on a deployment's broker path beyond the wire, measured: `edgecloud calibrate`.

Why: the link model (8*b/bandwidth + latency) says a 40-byte answer costs nothing on a fast link, yet
through Mosquitto it took ~0.3-1 ms here. The plan can only be right if that is priced, and it depends
on the broker(s), the hosts and their load, so it is measured once per deployment and stored in the
link profile that `plan --link edge-cloud=FILE` reads (`devices.profiles.LinkProfile`).

Method: ping-pong (one clock; one-way = round trip / 2) between this process and an echo process, at a
small and a large size; per path the fixed cost per message and the cost per byte are the line through
the two medians. Paths:
- ours: `MqttTransport` and our wire format at both ends, QoS 1 (what agents pay);
- floor: a bare MQTT socket client at both ends (`edgecloud.transport.bare_mqtt`), QoS 0: the broker
  path alone. ours - floor is our client libraries' share (`message_s`), floor is the broker path's
  (`broker_s`: device -> broker -> device is two transfers; across a bridge, three and two brokers).
With a peer broker (the cloud's, bridged to ours with `edgecloud/#` both ways) the echo connects there,
so that every message crosses the bridge; the same is measured on the local broker alone, and their
difference is the bridge hop, reported apart. The client's own hops (to the source and back from the
sink) use the local broker only: `client_link`.
"""

from __future__ import annotations

import logging
import os
import queue
import select
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import numpy as np

from edgecloud.errors import TransportError
from edgecloud.transport import bare_mqtt
from edgecloud.transport.mqtt import MqttTransport
from edgecloud.transport.mqtt_url import parse_broker_url, split_password
from edgecloud.transport.topics import device_topic, inbox_filter, sender_topic
from edgecloud.transport.wire import Message, encode

logger = logging.getLogger(__name__)

SMALL_BYTES = 64
LARGE_BYTES = 256 * 2**10
WARMUP = 5
ROUNDS = 4
READY_TIMEOUT_S = 30.0
REPLY_TIMEOUT_S = 10.0
CLIENT_BANDWIDTH_BPS = 1e10  # the client's link is local (loopback or LAN): its bytes are priced per byte measured

RoundTrip = Callable[[], None]


@dataclass(frozen=True)
class PathCost:
    """One path's one-way time at the two sizes, and the line through them."""

    small_s: float
    large_s: float
    samples: int

    @property
    def s_per_byte(self) -> float:
        return max(0.0, (self.large_s - self.small_s) / (LARGE_BYTES - SMALL_BYTES))

    @property
    def fixed_s(self) -> float:
        return max(0.0, self.small_s - self.s_per_byte * SMALL_BYTES)

    def to_dict(self) -> dict[str, float]:
        return {"one_way_small_s": self.small_s, "one_way_large_s": self.large_s, "fixed_s": self.fixed_s,
                "s_per_byte": self.s_per_byte, "samples": self.samples}


@dataclass(frozen=True)
class HopCosts:
    """The measured paths: ours and the floor on the local broker, and across the bridge if one was given."""

    ours_local: PathCost
    floor_local: PathCost | None  # None: the broker needs a login or TLS, which the bare client lacks
    ours_bridged: PathCost | None = None
    floor_bridged: PathCost | None = None

    @property
    def bridged(self) -> bool:
        return self.ours_bridged is not None

    def link_figures(self) -> dict[str, float]:
        """message_s, broker_s, host_s_per_byte of the device-to-device path (bridged if measured)."""
        ours = self.ours_bridged if self.ours_bridged is not None else self.ours_local
        floor = self.floor_bridged if self.ours_bridged is not None else self.floor_local
        return _split(ours, floor)

    def client_figures(self) -> dict[str, float]:
        """The same for the client's hops, which use the local broker only."""
        return _split(self.ours_local, self.floor_local)

    @property
    def bridge_s(self) -> float | None:
        """What the bridge adds per message (bridged floor - local floor; ours if no floor)."""
        if self.ours_bridged is None:
            return None
        if self.floor_bridged is not None and self.floor_local is not None:
            return self.floor_bridged.fixed_s - self.floor_local.fixed_s
        return self.ours_bridged.fixed_s - self.ours_local.fixed_s


def _split(ours: PathCost, floor: PathCost | None) -> dict[str, float]:
    broker_s = 0.0 if floor is None else min(floor.fixed_s, ours.fixed_s)
    return {"message_s": ours.fixed_s - broker_s, "broker_s": broker_s, "host_s_per_byte": ours.s_per_byte}


# -- echo processes ------------------------------------------------------------------------------
# Each echo is `python -m edgecloud.transport.hop_costs KIND DEPLOYMENT` with the broker URL in the
# environment (a password never goes on a command line); it prints "ready" once subscribed and exits
# when its stdin closes, so it cannot outlive us.

ECHO_URL_ENV = "EDGECLOUD_CALIBRATE_ECHO_URL"
READY_LINE = "ready"


def echo_ours(url: str, deployment: str, serve: Callable[[], None]) -> None:
    """Answer every message to `echo` with the same tensors, to `pinger`, while `serve()` blocks."""
    with MqttTransport(url, f"{deployment}-echo") as transport:
        back = sender_topic(deployment, "pinger", "echo")
        transport.subscribe_messages(inbox_filter(deployment, "echo"), lambda message, _: transport.publish_message(
            back, Message("result", message.request_id, "echo", message.tensors)))
        serve()


def echo_floor(url: str, deployment: str, serve: Callable[[], None]) -> None:
    """The bare client's echo (in a thread, while `serve()` blocks)."""
    address = parse_broker_url(url)
    stopped = threading.Event()
    with bare_mqtt.connect(address.host, address.port, f"{deployment}-floor-echo",
                           device_topic(deployment, "floor-echo")) as connection:
        worker = threading.Thread(target=bare_mqtt.echo, args=(connection, device_topic(deployment, "floor-pinger"),
                                                               stopped.is_set), daemon=True)
        worker.start()
        try:
            serve()
        finally:
            stopped.set()
            worker.join()


ECHOES = {"ours": echo_ours, "floor": echo_floor}


@contextmanager
def _child(kind: str, url: str, deployment: str) -> Iterator[None]:
    process = subprocess.Popen([sys.executable, "-m", __name__, kind, deployment], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, env={**os.environ, ECHO_URL_ENV: url}, text=True)
    try:
        assert process.stdout is not None
        ready = select.select([process.stdout], [], [], READY_TIMEOUT_S)[0]
        if not ready or process.stdout.readline().strip() != READY_LINE:
            raise TransportError(f"the calibration echo ({kind}) did not connect to {split_password(url)[0]} "
                                 f"within {READY_TIMEOUT_S:g} s.")
        yield
    finally:
        stop_by_closing_stdin(process)


def stop_by_closing_stdin(process: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """End a helper process whose cue to exit is the end of its stdin; kill it if it outlives `timeout_s`."""
    if process.stdin is not None:
        process.stdin.close()
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _serve_until_stdin_closes() -> None:
    print(READY_LINE, flush=True)
    sys.stdin.read()


def _payload(size_bytes: int) -> Message:
    return Message("activation", uuid.uuid4().hex, "pinger", {"x": np.ones(max(1, size_bytes // 4), np.float32)})


@contextmanager
def _ours(pinger_url: str, echo_url: str) -> Iterator[Callable[[int], RoundTrip]]:
    deployment = f"calibrate{uuid.uuid4().hex[:8]}"
    replies: queue.Queue[Message] = queue.Queue()
    with _child("ours", echo_url, deployment), MqttTransport(pinger_url, f"{deployment}-pinger") as pinger:
        pinger.subscribe_messages(inbox_filter(deployment, "pinger"), lambda message, _: replies.put(message))
        to_echo = sender_topic(deployment, "echo", "pinger")

        def prepare(size_bytes: int) -> RoundTrip:
            message = _payload(size_bytes)

            def round_trip() -> None:
                pinger.publish_message(to_echo, message)
                replies.get(timeout=REPLY_TIMEOUT_S)

            return round_trip

        _wait_for_path(prepare(SMALL_BYTES))
        yield prepare


@contextmanager
def _floor(pinger_url: str, echo_url: str) -> Iterator[Callable[[int], RoundTrip]]:
    deployment = f"calibrate{uuid.uuid4().hex[:8]}"
    pinger_at = parse_broker_url(pinger_url)
    with _child("floor", echo_url, deployment), \
            bare_mqtt.connect(pinger_at.host, pinger_at.port, f"{deployment}-floor-pinger",
                              device_topic(deployment, "floor-pinger")) as connection:
        connection.settimeout(REPLY_TIMEOUT_S)

        def prepare(size_bytes: int) -> RoundTrip:
            payload = encode(_payload(size_bytes))
            header = bare_mqtt.publish_header(device_topic(deployment, "floor-echo"), len(payload))

            def round_trip() -> None:
                connection.sendall(header)
                connection.sendall(payload)
                bare_mqtt.read_packet(connection)

            return round_trip

        _wait_for_path(prepare(SMALL_BYTES))
        yield prepare


def _wait_for_path(round_trip: RoundTrip) -> None:
    """The first messages across a bridge may be lost while its subscriptions settle: retry briefly."""
    for attempt in range(20):
        try:
            round_trip()
            return
        except (queue.Empty, socket.timeout):
            logger.info("calibration: no echo yet (attempt %d); retrying", attempt + 1)
    raise TransportError("no echo came back through the broker path within 20 attempts: is the bridge up?")


def one_way_samples(round_trip: RoundTrip, repeats: int, warmup: int = WARMUP) -> list[float]:
    """Half of each of `repeats` timed round trips, after `warmup` untimed ones (bench/transport.py too)."""
    for _ in range(warmup):
        round_trip()
    samples = []
    for _ in range(repeats):
        started_s = time.perf_counter()
        round_trip()
        samples.append((time.perf_counter() - started_s) / 2)
    return samples


def _path_costs(prepared: dict[str, Callable[[int], RoundTrip]], repeats: int) -> dict[str, PathCost]:
    """Every path measured in ROUNDS interleaved rounds (small and large each), so that the load of a
    shared machine drifts over all paths alike and their differences (the bridge hop) stay meaningful."""
    trips = {name: (prepare(SMALL_BYTES), prepare(LARGE_BYTES)) for name, prepare in prepared.items()}
    small: dict[str, list[float]] = {name: [] for name in trips}
    large: dict[str, list[float]] = {name: [] for name in trips}
    per_round_small, per_round_large = max(2, repeats // ROUNDS), max(2, repeats // (4 * ROUNDS))
    for _ in range(ROUNDS):
        for name, (small_trip, large_trip) in trips.items():
            small[name] += one_way_samples(small_trip, per_round_small)
            large[name] += one_way_samples(large_trip, per_round_large)
    return {name: PathCost(statistics.median(small[name]), statistics.median(large[name]), len(small[name]))
            for name in trips}


def floor_measurable(url: str) -> bool:
    """The bare client speaks plain MQTT without a login."""
    address = parse_broker_url(url)
    return not address.tls and address.username is None


def measure_hop_costs(broker_url: str, peer_broker_url: str | None = None, repeats: int = 200,
                      echo_url: str | None = None) -> HopCosts:
    """Measure the local path (and the bridged one with a peer broker); see the module docstring.
    `echo_url` is the local broker under a second login, where logins are required (one login is one
    client id there, and the pinger holds ours); by default the echo uses `broker_url` too."""
    echo_url = broker_url if echo_url is None else echo_url
    if parse_broker_url(echo_url).username is not None and echo_url == broker_url:
        raise TransportError("with logins on the broker, the echo needs a second login: give it as the echo's URL "
                             "(edgecloud calibrate --echo-broker mqtt://OTHER:PASSWORD@host:port).")
    floor = all(floor_measurable(url) for url in (broker_url, echo_url, peer_broker_url) if url is not None)
    if not floor:
        logger.warning("a broker needs a login or TLS: the broker's share is not measured apart (broker_s = 0)")
    echoes = {"ours_local": echo_url, "ours_bridged": peer_broker_url}
    if floor:
        echoes |= {"floor_local": echo_url, "floor_bridged": peer_broker_url}
    with ExitStack() as stack:
        prepared = {name: stack.enter_context((_ours if name.startswith("ours") else _floor)(broker_url, echo))
                    for name, echo in echoes.items() if echo is not None}
        costs = _path_costs(prepared, repeats)
    return HopCosts(costs["ours_local"], costs.get("floor_local"), costs.get("ours_bridged"), costs.get("floor_bridged"))


if __name__ == "__main__":  # an echo process (see `_child`)
    logging.basicConfig(level=logging.WARNING)
    ECHOES[sys.argv[1]](os.environ[ECHO_URL_ENV], sys.argv[2], _serve_until_stdin_closes)
