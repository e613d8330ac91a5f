"""One-way time of activations: our MQTT client via Mosquitto and via the embedded broker, vs one raw TCP hop.

    python bench/transport.py [--repeats-scale 1.0] [--sizes 10000,1000000] [--out bench/results/transport.json]
                              [--no-embedded]

Why ping-pong: one clock. A pinger sends a message, an echo process answers with the same tensor,
and one-way time = round trip / 2. Paths:
- raw TCP hop: the encoded bytes over one length-prefixed TCP connection with TCP_NODELAY, framed
  before timing starts; the baseline the targets are stated against.
- ours/<broker>: `MqttTransport` on both ends; each direction includes our wire encode and decode and
  two network hops (client -> broker -> client).
- ours/Mosquitto TLS: the same through Mosquitto's TLS listener (self-signed certificate).
- floor/<broker>: a bare MQTT 3.1.1 QoS 0 socket client on both ends, so the broker's own cost can
  be told apart from our client's (paho + wire format).
- floor/Mosquitto TLS: the bare client through Mosquitto's TLS listener (Python's ssl, the cipher the
  two negotiate): what TLS costs any client, so that ours' TLS/plain can be read against it.
- floor->ours/Mosquitto: the bare client pings, `MqttTransport` echoes (decode, handler, encode,
  publish on paho's network thread, as an agent answers): one end of ours. ours - this is the other
  end's share, the pinger (a publish from the caller's thread, the reply handed from paho's thread
  to the waiting caller); this - floor is the echo's.

Targets (issue 14): ours/Mosquitto <= 0.1 ms at 10 KB and <= 1.3x floor/Mosquitto from 1 MB; TLS at
1 MB <= 1.5x plain.
Every echo and broker runs in its own process.

Why interleaved rounds: the machine is shared, so load drifts during a run. Each size is measured
in rounds that visit every path in turn, so ratios compare paths under the same load. Medians over
all samples; the load average is recorded with them.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import logging
import multiprocessing
import os
import platform
import queue
import socket
import ssl
import statistics
import struct
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np

from edgecloud.transport import bare_mqtt
from edgecloud.transport.hop_costs import one_way_samples
from edgecloud.transport.broker import EmbeddedBrokerProcess, MosquittoBroker, TlsFiles, free_tcp_port
from edgecloud.transport.mqtt import MqttTransport, device_topic
from edgecloud.transport.wire import DEFAULT_LIMITS, Message, WireLimits, encode
from large_messages import self_signed

SIZES_BYTES = (10_000, 100_000, 1_000_000, 10_000_000, 100_000_000)
REPEATS = {10_000: 300, 100_000: 150, 1_000_000: 40, 10_000_000: 12, 100_000_000: 8}
ROUNDS = 4
WARMUP = 2
REPLY_TIMEOUT_S = 60.0
DEPLOYMENT = "bench"
ECHO, PINGER = "echo", "pinger"
PING_TOPIC = device_topic(DEPLOYMENT, ECHO)
PONG_TOPIC = device_topic(DEPLOYMENT, PINGER)
FLOOR_ECHO, FLOOR_PINGER = "floor-echo", "floor-pinger"  # own devices (topics): the echoes share a broker
HALF_ECHO, HALF_PINGER = "half-echo", "half-pinger"
LENGTH = struct.Struct("<Q")
TARGET_SMALL_S = 1e-4
TARGET_OVER_FLOOR_LARGE = 1.3
TARGET_TLS_OVER_PLAIN = 1.5
RAW = "raw TCP hop"
OURS_MOSQUITTO = "ours/Mosquitto"
OURS_TLS = "ours/Mosquitto TLS"
OURS_EMBEDDED = "ours/amqtt"
FLOOR_MOSQUITTO = "floor/Mosquitto"
FLOOR_EMBEDDED = "floor/amqtt"
FLOOR_TLS = "floor/Mosquitto TLS"
HALF_MOSQUITTO = "floor->ours/Mosquitto"
PATHS = (RAW, OURS_MOSQUITTO, OURS_TLS, OURS_EMBEDDED, FLOOR_MOSQUITTO, FLOOR_TLS, HALF_MOSQUITTO, FLOOR_EMBEDDED)

RoundTrip = Callable[[], None]
Prepare = Callable[[Message], RoundTrip]  # what a path does before timing starts, e.g. framing


def unchunked_limits(size_bytes: int) -> WireLimits:
    """Wire limits that let the raw and floor paths send one message of `size_bytes` in one frame
    (ours chunks what is above `TransportOptions.chunk_bytes` whatever the limit)."""
    return WireLimits(max_message_bytes=max(DEFAULT_LIMITS.max_message_bytes, 2 * size_bytes))


def activation(size_bytes: int) -> Message:
    return Message("activation", "ping", "pinger", {"x": np.ones(size_bytes // 4, np.float32)})


# -- echo processes -------------------------------------------------------------------------------

def echo_mqtt(url: str, echo_device: str, pinger_device: str, ready: multiprocessing.Event,
              stop: multiprocessing.Event) -> None:
    """Answer every message to `echo_device` with a fresh message to `pinger_device` carrying the same tensors."""
    pong_topic = device_topic(DEPLOYMENT, pinger_device)
    with MqttTransport(url, f"bench-{echo_device}") as transport:
        transport.subscribe_messages(device_topic(DEPLOYMENT, echo_device), lambda message, _: transport.publish_message(
            pong_topic, Message("result", message.request_id, "echo", message.tensors)))
        ready.set()
        stop.wait()


def echo_tcp(port: int, ready: multiprocessing.Event, stop: multiprocessing.Event) -> None:
    """Send every length-prefixed frame of the first connection straight back (ends when it closes)."""
    with socket.create_server(("127.0.0.1", port)) as server:
        ready.set()
        connection, _ = server.accept()
    with connection:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        prefix = bytearray(LENGTH.size)
        while True:
            try:
                bare_mqtt.recv_exactly(connection, memoryview(prefix))
            except ConnectionError:
                return
            (length,) = LENGTH.unpack(prefix)
            body = bytearray(length)
            bare_mqtt.recv_exactly(connection, memoryview(body))
            connection.sendall(prefix + body)


def client_tls(ca_file: Path | None) -> ssl.SSLContext | None:
    return None if ca_file is None else ssl.create_default_context(cafile=str(ca_file))


def echo_minimal_mqtt(port: int, ca_file: Path | None, ready: multiprocessing.Event, stop: multiprocessing.Event) -> None:
    """Republish every payload to FLOOR_ECHO for FLOOR_PINGER, untouched."""
    with bare_mqtt.connect("127.0.0.1", port, f"bench-{FLOOR_ECHO}", device_topic(DEPLOYMENT, FLOOR_ECHO),
                           client_tls(ca_file)) as connection:
        ready.set()
        bare_mqtt.echo(connection, device_topic(DEPLOYMENT, FLOOR_PINGER), stop.is_set)


@contextmanager
def child(target: Callable[..., None], *args: object) -> Iterator[multiprocessing.Event]:
    """Run `target(*args, ready, stop)`-style echo in a spawned process; yields once it is ready."""
    context = multiprocessing.get_context("spawn")
    ready, stop = context.Event(), context.Event()
    process = context.Process(target=target, args=(*args, ready, stop), daemon=True)
    process.start()
    try:
        if not ready.wait(30):
            raise RuntimeError(f"{target.__name__} did not start")
        yield stop
    finally:
        stop.set()
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join()


# -- pingers --------------------------------------------------------------------------------------

@contextmanager
def tcp_pinger() -> Iterator[Prepare]:
    """The baseline: the encoded bytes framed once up front, then only sendall and recv_into are timed."""
    port = free_tcp_port()
    with child(echo_tcp, port), socket.create_connection(("127.0.0.1", port)) as connection:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def prepare(message: Message) -> RoundTrip:
            payload = encode(message, unchunked_limits(message.tensors["x"].nbytes))
            frame = LENGTH.pack(len(payload)) + payload
            answer = memoryview(bytearray(len(frame)))
            return lambda: (connection.sendall(frame), bare_mqtt.recv_exactly(connection, answer))

        yield prepare


@contextmanager
def minimal_mqtt_pinger(port: int, ours_echo_url: str | None = None, ca_file: Path | None = None) -> Iterator[Prepare]:
    """The broker's floor: the encoded bytes through the broker by the minimal client, no paho (over TLS
    with `ca_file`); with `ours_echo_url`, answered by our client's echo there instead (one end of ours)."""
    if ours_echo_url is None:
        echo_device, pinger_device, echo = FLOOR_ECHO, FLOOR_PINGER, child(echo_minimal_mqtt, port, ca_file)
    else:
        echo_device, pinger_device = HALF_ECHO, HALF_PINGER
        echo = child(echo_mqtt, ours_echo_url, echo_device, pinger_device)
    ping_topic = device_topic(DEPLOYMENT, echo_device)
    with echo, bare_mqtt.connect("127.0.0.1", port, f"bench-{pinger_device}", device_topic(DEPLOYMENT, pinger_device),
                                 client_tls(ca_file)) as connection:

        def prepare(message: Message) -> RoundTrip:
            payload = encode(message, unchunked_limits(message.tensors["x"].nbytes))
            header = bare_mqtt.publish_header(ping_topic, len(payload))

            def round_trip() -> None:
                connection.sendall(header)
                connection.sendall(payload)
                bare_mqtt.read_packet(connection)

            return round_trip

        yield prepare


@contextmanager
def mqtt_pinger(url: str) -> Iterator[Prepare]:
    """Our client end to end: encode, publish, broker, the echo's decode/encode, broker, decode."""
    replies: queue.Queue[Message] = queue.Queue()
    with child(echo_mqtt, url, ECHO, PINGER), MqttTransport(url, "bench-pinger") as pinger:
        pinger.subscribe_messages(PONG_TOPIC, lambda message, _: replies.put(message))

        def prepare(message: Message) -> RoundTrip:
            def round_trip() -> None:
                pinger.publish_message(PING_TOPIC, message)
                reply = replies.get(timeout=REPLY_TIMEOUT_S)
                if reply.tensors["x"].nbytes != message.tensors["x"].nbytes:
                    raise RuntimeError("the echo returned a different tensor")
            return round_trip

        yield prepare


# -- report ---------------------------------------------------------------------------------------

def human_bytes(size: int) -> str:
    return f"{size / 1e6:g} MB" if size >= 1_000_000 else f"{size / 1e3:g} KB"


def target_of(size: int, one_way_s: dict[str, float]) -> tuple[str, bool | None]:
    ours_s = one_way_s[OURS_MOSQUITTO]
    if size < 100_000:
        return f"<= {TARGET_SMALL_S * 1e3:g} ms", ours_s <= TARGET_SMALL_S
    if size < 1_000_000:
        return "-", None
    met = ours_s <= TARGET_OVER_FLOOR_LARGE * one_way_s[FLOOR_MOSQUITTO]
    if size == 1_000_000 and OURS_TLS in one_way_s:
        return (f"<= {TARGET_OVER_FLOOR_LARGE:g}x floor, TLS <= {TARGET_TLS_OVER_PLAIN:g}x plain",
                met and one_way_s[OURS_TLS] <= TARGET_TLS_OVER_PLAIN * ours_s)
    return f"<= {TARGET_OVER_FLOOR_LARGE:g}x floor", met


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats-scale", type=float, default=1.0, help="multiply the default repeat counts")
    parser.add_argument("--sizes", type=lambda text: [int(size) for size in text.split(",")], default=list(SIZES_BYTES),
                        help="comma-separated activation sizes in bytes (default: 10 KB, 100 KB, 1 MB, 10 MB, 100 MB)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "transport.json")
    parser.add_argument("--no-embedded", action="store_true", help="skip the embedded broker's paths (slow)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sizes: list[int] = args.sizes
    per_round = {size: max(2, round(REPEATS.get(size, 20) * args.repeats_scale / ROUNDS)) for size in sizes}

    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    console = Console(width=200)  # the table has a column per path; 80 (rich's default off a terminal) truncates it
    load_before = os.getloadavg()
    paths = [path for path in PATHS if not (args.no_embedded and path in (OURS_EMBEDDED, FLOOR_EMBEDDED))]
    samples: dict[str, dict[int, list[float]]] = {path: {size: [] for size in sizes} for path in paths}
    with ExitStack() as stack:
        cert, key = self_signed(Path(stack.enter_context(tempfile.TemporaryDirectory())))
        # the broker takes the floor's largest message in one packet; ours sends chunks anyway
        mosquitto = stack.enter_context(MosquittoBroker(max_message_bytes=unchunked_limits(max(sizes)).max_message_bytes))
        mosquitto_tls = stack.enter_context(MosquittoBroker(max_message_bytes=mosquitto.max_message_bytes,
                                                            tls=TlsFiles(certfile=cert, keyfile=key)))
        pingers = {RAW: stack.enter_context(tcp_pinger()),
                   OURS_MOSQUITTO: stack.enter_context(mqtt_pinger(mosquitto.url)),
                   OURS_TLS: stack.enter_context(mqtt_pinger(f"{mosquitto_tls.url}?ca={cert}")),
                   FLOOR_MOSQUITTO: stack.enter_context(minimal_mqtt_pinger(mosquitto.port)),
                   FLOOR_TLS: stack.enter_context(minimal_mqtt_pinger(mosquitto_tls.port, ca_file=cert)),
                   HALF_MOSQUITTO: stack.enter_context(minimal_mqtt_pinger(mosquitto.port, mosquitto.url))}
        if not args.no_embedded:
            embedded = stack.enter_context(EmbeddedBrokerProcess())
            pingers[OURS_EMBEDDED] = stack.enter_context(mqtt_pinger(embedded.url))
            pingers[FLOOR_EMBEDDED] = stack.enter_context(minimal_mqtt_pinger(embedded.port))
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("ping-pong", total=len(sizes) * ROUNDS * len(paths))
            for size in sizes:
                round_trips = {path: prepare(activation(size)) for path, prepare in pingers.items()}
                for _ in range(ROUNDS):
                    for path, round_trip in round_trips.items():
                        progress.update(task, description=f"{human_bytes(size)} via {path}")
                        samples[path][size] += one_way_samples(round_trip, per_round[size], WARMUP)
                        progress.advance(task)
    load_after = os.getloadavg()

    medians = {path: {size: statistics.median(values) for size, values in by_size.items()}
               for path, by_size in samples.items()}
    table = Table(title="One-way time per activation, median (ratio to one raw TCP hop); ours/floor and TLS/plain last")
    for column in ("size", *paths, "target (ours/Mosquitto)"):
        table.add_column(column, justify="right")
    rows = []
    for size in sizes:
        raw_s = medians[RAW][size]
        one_way_s = {path: medians[path][size] for path in paths}
        target, met = target_of(size, one_way_s)
        floor_s = one_way_s[FLOOR_MOSQUITTO]
        rows.append({"size_bytes": size, "samples_per_path": len(samples[RAW][size]), "one_way_s": one_way_s,
                     "over_raw": {path: value / raw_s for path, value in one_way_s.items()},
                     "ours_over_floor": one_way_s[OURS_MOSQUITTO] / floor_s,
                     "tls_over_plain": one_way_s[OURS_TLS] / one_way_s[OURS_MOSQUITTO],
                     "floor_tls_over_plain": one_way_s[FLOOR_TLS] / floor_s,
                     # what each end of ours adds to the floor (see HALF_MOSQUITTO in the docstring)
                     "ends_over_floor_s": {"echo": one_way_s[HALF_MOSQUITTO] - floor_s,
                                           "pinger": one_way_s[OURS_MOSQUITTO] - one_way_s[HALF_MOSQUITTO]},
                     "target": target, "target_met": met})
        cells = [f"{one_way_s[path] * 1e3:.3f} ms" + ("" if path == RAW else f" ({one_way_s[path] / raw_s:.1f}x)")
                 for path in paths]
        table.add_row(human_bytes(size), *cells, target + ("" if met is None else (" met" if met else " missed"))
                      + f" [ours/floor {rows[-1]['ours_over_floor']:.2f}x, TLS/plain {rows[-1]['tls_over_plain']:.2f}x (floor "
                      f"{rows[-1]['floor_tls_over_plain']:.2f}x); over "
                      f"the floor, echo end +{rows[-1]['ends_over_floor_s']['echo'] * 1e3:.3f} ms, pinger end "
                      f"+{rows[-1]['ends_over_floor_s']['pinger'] * 1e3:.3f} ms]")
    console.print(table)
    console.print(f"ours = MqttTransport + wire encode/decode; floor = a bare MQTT 3.1.1 QoS 0 socket client (what "
                  f"any client pays through that broker). MQTT paths are two hops. Load average (1 min) before/after: "
                  f"{load_before[0]:.2f} / {load_after[0]:.2f} on {os.cpu_count()} CPUs.")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "transport", "method": "ping-pong round trip / 2, interleaved rounds, medians",
        "host": platform.node(), "python": platform.python_version(), "cpus": os.cpu_count(),
        "load_average_1min": {"before": load_before[0], "after": load_after[0]}, "rows": rows}, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

