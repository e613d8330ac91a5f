"""Messages far beyond one packet through Mosquitto, plain and TLS: time, throughput, and the memory
the receiver holds.

    python bench/large_messages.py [--sizes 100MB,1GB] [--out bench/results/large_messages.json]

The sender and the receiver are two processes (each its own `MqttTransport`), so each one's peak
resident memory is its own: the receiver's bound is the message (one reassembly buffer, decoded in
place) plus its interpreter and libraries, whatever the message size, and the sender's is the tensor
plus its encoding plus `chunk_window` chunks. Every transfer is checked byte for byte (a CRC-32 of the
received tensor against the sent one's). A baseline in the same run: one raw TCP hop of the same
bytes, to say what the broker and the chunking cost.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import queue
import socket
import subprocess
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

from edgecloud.transport.broker import MosquittoBroker, TlsFiles
from edgecloud.transport.mqtt import MqttTransport, TransportOptions
from edgecloud.transport.wire import Message

TOPIC = "edgecloud/bench/receiver/in/sender"
SIZES = {"100MB": 100 * 10**6, "1GB": 10**9}
TIMEOUT_S = 600.0
ARRIVAL_TIMEOUT_S = 60.0  # after the sender's last chunk was acknowledged


def _peak_rss_bytes() -> int:
    """This process's peak resident memory. Not `getrusage`'s ru_maxrss: it survives fork and exec, so a
    spawned child would report its parent's peak (here 1 GB from the raw TCP baseline)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no VmHWM line")


def _payload(n_bytes: int) -> np.ndarray:
    return np.random.default_rng(n_bytes).integers(0, 256, n_bytes, dtype=np.uint8)


def _receive(url: str, ready: multiprocessing.Queue, results: multiprocessing.Queue) -> None:
    arrived: queue.Queue[Message] = queue.Queue()
    with MqttTransport(url, "receiver") as transport:
        transport.subscribe_messages("edgecloud/bench/receiver/in/+", lambda m, _t: arrived.put(m))
        ready.put(_peak_rss_bytes())
        message = arrived.get(timeout=TIMEOUT_S)
        received_s = time.time()
        results.put((received_s, zlib.crc32(message.tensors["x"]), _peak_rss_bytes()))


def _send(url: str, n_bytes: int, results: multiprocessing.Queue) -> None:
    values = _payload(n_bytes)
    crc = zlib.crc32(values)
    message = Message(kind="activation", request_id="big", sender="sender", tensors={"x": values})
    with MqttTransport(url, "sender", TransportOptions()) as transport:
        started_s = time.time()
        transport.publish_message(TOPIC, message).result(timeout=TIMEOUT_S)
        results.put((started_s, crc, _peak_rss_bytes()))


def _raw_tcp_s(n_bytes: int) -> float:
    """One raw TCP hop of the same bytes over loopback (receiver reads into one buffer)."""
    values = _payload(n_bytes)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    context = multiprocessing.get_context("spawn")
    done = context.Queue()
    reader = context.Process(target=_raw_reader, args=(port, n_bytes, done))
    reader.start()
    connection, _ = listener.accept()
    started = time.time()
    connection.sendall(memoryview(values))
    connection.close()
    finished = done.get(timeout=TIMEOUT_S)
    reader.join()
    listener.close()
    return finished - started


def _raw_reader(port: int, n_bytes: int, done: multiprocessing.Queue) -> None:
    buffer = bytearray(n_bytes)
    view = memoryview(buffer)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        got = 0
        while got < n_bytes:
            got += sock.recv_into(view[got:])
    done.put(time.time())


def _transfer(url: str, n_bytes: int) -> dict:
    context = multiprocessing.get_context("spawn")
    ready, receiver_results, sender_results = context.Queue(), context.Queue(), context.Queue()
    receiver = context.Process(target=_receive, args=(url, ready, receiver_results))
    receiver.start()
    idle_rss = ready.get(timeout=60)
    sender = context.Process(target=_send, args=(url, n_bytes, sender_results))
    sender.start()
    started_s, sent_crc, sender_rss = sender_results.get(timeout=TIMEOUT_S)
    try:
        received_s, received_crc, receiver_rss = receiver_results.get(timeout=ARRIVAL_TIMEOUT_S)
    except queue.Empty:  # lost on the way (a broker drops what a slow subscriber's queue cannot hold)
        receiver.terminate()
        received_s, received_crc, receiver_rss = float("nan"), None, None
    sender.join(), receiver.join()
    seconds = received_s - started_s
    return {"bytes": n_bytes, "arrived": received_crc is not None, "seconds": seconds,
            "mbit_per_s": n_bytes * 8 / seconds / 1e6, "intact": sent_crc == received_crc,
            "receiver_peak_rss_bytes": receiver_rss, "receiver_idle_rss_bytes": idle_rss,
            "sender_peak_rss_bytes": sender_rss}


def self_signed(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "server.crt", folder / "server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100MB,1GB", help=f"comma-separated, of {', '.join(SIZES)}")
    parser.add_argument("--out", type=Path, default=Path("bench/results/large_messages.json"))
    args = parser.parse_args()
    sizes = [SIZES[name] for name in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        cert, key = self_signed(Path(scratch))
        for tls in (False, True):
            with MosquittoBroker(tls=TlsFiles(certfile=cert, keyfile=key) if tls else None) as broker:
                url = broker.url + (f"?ca={cert}" if tls else "")
                for n_bytes in sizes:
                    row = {"path": "Mosquitto TLS" if tls else "Mosquitto", **_transfer(url, n_bytes)}
                    row["raw_tcp_s"] = _raw_tcp_s(n_bytes)
                    rows.append(row)
                    if not row["arrived"]:
                        print(f"{row['path']:>14} {n_bytes / 1e6:>7.0f} MB  LOST (not complete "
                              f"{ARRIVAL_TIMEOUT_S:g} s after the last chunk was acknowledged)", flush=True)
                        continue
                    print(f"{row['path']:>14} {n_bytes / 1e6:>7.0f} MB  {row['seconds']:7.2f} s "
                          f"{row['mbit_per_s']:8.0f} Mbit/s  (raw TCP {row['raw_tcp_s']:.2f} s)  intact {row['intact']}  "
                          f"receiver peak {row['receiver_peak_rss_bytes'] / 1e6:.0f} MB "
                          f"(idle {row['receiver_idle_rss_bytes'] / 1e6:.0f} MB), "
                          f"sender peak {row['sender_peak_rss_bytes'] / 1e6:.0f} MB", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": platform.node(), "cpus": os.cpu_count(), "load_avg": os.getloadavg(),
                                    "chunk_bytes": TransportOptions().chunk_bytes, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
