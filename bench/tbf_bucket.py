"""How long a message of b bytes takes across the testbed's tbf link, measured: the wire model behind
the testbed's pricing (edgecloud.testbed.netns.wire_time_s).

    python bench/tbf_bucket.py [--rates 1,5,20,100] [--sizes 64,1000,3000,4000,8000,50000] [--repeats 15]
                               [--out bench/results/tbf_bucket.json]

Why: tbf lets a bucket of bytes pass at once and the rest at its rate, so a small message crosses
faster than 8 b / rate; how much faster depends on how full the bucket is when the message comes. Setup:
the testbed's own link (namespaces, veth, `tbf_arguments`), one TCP connection edge -> cloud with
TCP_NODELAY (as our MQTT clients), one message at a time after an idle gap long enough to refill the
bucket; one clock (sender and receiver are threads of this process): one-way = last byte received -
send call. Each time is compared with the models `8 b / rate` and `8 max(0, b - bucket) / rate`.
Medians per size; the machine is shared, so read ratios, not microseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import threading
import time
from pathlib import Path

from edgecloud.testbed.netns import ADDRESSES, EmulatedLink, measured_rate_bps, tbf_arguments

IDLE_GAP_S = 0.1


def one_way_times(link: EmulatedLink, size_bytes: int, repeats: int, gap_s: float) -> list[float]:
    """Seconds from send to the last byte received, for `repeats` messages each after `gap_s` idle."""
    received: list[float] = []
    ready = threading.Event()
    port: list[int] = []
    done = threading.Semaphore(0)

    def receive() -> None:
        with link.entered("cloud"), socket.create_server((ADDRESSES["cloud"], 0)) as server:
            port.append(server.getsockname()[1])
            ready.set()
            connection, _ = server.accept()
            with connection:
                for _ in range(repeats):
                    remaining = size_bytes
                    while remaining > 0:
                        remaining -= len(connection.recv(min(remaining, 1 << 16)))
                    received.append(time.perf_counter())
                    done.release()

    receiver = threading.Thread(target=receive, daemon=True)
    receiver.start()
    ready.wait(10)
    sent: list[float] = []
    payload = bytes(size_bytes)
    with link.entered("edge"), socket.create_connection((ADDRESSES["cloud"], port[0])) as connection:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(repeats):
            time.sleep(gap_s)
            sent.append(time.perf_counter())
            connection.sendall(payload)
            done.acquire(timeout=30)
    receiver.join(30)
    return [end - start for start, end in zip(sent, received)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="1,5,20,100", help="Mbit/s, comma-separated")
    parser.add_argument("--sizes", default="64,1000,2000,3000,4000,6000,8000,16000,50000")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    with EmulatedLink() as link:
        for mbit in (float(r) for r in args.rates.split(",")):
            rate_bps = mbit * 1e6
            link.shape(rate_bps)
            bucket_bytes = int(tbf_arguments(rate_bps)[4])
            goodput_bps = measured_rate_bps(link, max(64 * 1024, int(rate_bps / 8 * 0.5)))
            for size in (int(s) for s in args.sizes.split(",")):
                median_s = statistics.median(one_way_times(link, size, args.repeats, max(IDLE_GAP_S, 80 * bucket_bytes / rate_bps)))
                plain_s = 8 * size / goodput_bps
                bucket_s = 8 * max(0, size - bucket_bytes) / goodput_bps
                rows.append({"rate_bps": rate_bps, "goodput_bps": goodput_bps, "bucket_bytes": bucket_bytes,
                             "size_bytes": size, "measured_s": median_s, "plain_model_s": plain_s,
                             "bucket_model_s": bucket_s})
                print(f"{mbit:6g} Mbit/s {size:7d} B: measured {median_s * 1e3:8.3f} ms, 8b/rate {plain_s * 1e3:8.3f}, "
                      f"8max(0,b-{bucket_bytes})/rate {bucket_s * 1e3:8.3f}", flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps({"rows": rows, "load_average_1min": os.getloadavg()[0],
                                        "idle_gap_s": IDLE_GAP_S, "repeats": args.repeats}, indent=1))


if __name__ == "__main__":
    main()
