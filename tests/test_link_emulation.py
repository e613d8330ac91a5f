"""The software link emulator holds messages back as the plan's link model says, in link order."""

from __future__ import annotations

import threading
import time

from edgecloud.serving.link_emulation import LinkEmulator
from devices.profiles import LinkProfile


def test_messages_to_one_device_queue_behind_each_other_and_others_pass_at_once() -> None:
    arrivals: dict[object, float] = {}
    all_arrived = threading.Event()

    def send(device: str, item: object) -> None:
        arrivals[item] = time.monotonic()
        if len(arrivals) == 4:
            all_arrived.set()

    link = LinkProfile(bandwidth_bps=80_000, latency_s=0.02)  # 1000 bytes take 0.1 s + 0.02 s
    emulator = LinkEmulator({"cloud": link}, send)
    try:
        started = time.monotonic()
        for index in range(3):
            emulator.submit("cloud", index, n_bytes=1000)
        emulator.submit("fog", "unshaped", n_bytes=10**9)
        assert all_arrived.wait(5.0)
    finally:
        emulator.close()
    assert arrivals["unshaped"] - started < 0.05
    for index in range(3):
        expected_s = (index + 1) * 0.1 + 0.02
        assert expected_s - 0.005 <= arrivals[index] - started <= expected_s + 0.08
    assert arrivals[0] < arrivals[1] < arrivals[2]
    assert abs(link.transfer_time_s(1000) - 0.12) < 1e-12
