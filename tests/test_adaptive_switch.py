"""Issue 14's adaptive criterion on the testbed, small: the link's tbf rate changes mid-run (100 -> 5
Mbit/s) under the adaptive source and every static plan of the set, served by real agents through
Mosquitto on emulated hosts.

What is asserted is what does not depend on the machine's load: no request lost or answered twice,
the source ends each segment on the plan the set names for the measured rate (through its own link
estimate; at least 8 of requests 11-20 and the last one), and it switched. The latency ratio against the best static plan is the benchmark's
(`bench/adaptive.py`), not a test's: on 2 shared cores a 10-request median moves by more than
the 10 % criterion.

The edge is the rpi4 profile at half its speed: the cloud is this host (as the testbed prices it), and
on a loaded host the quota cannot slow resnet18 to the rpi4's ~2x of this host, so edge and cloud
come out alike and the plan set has one plan for both rates; at half the rpi4's speed the edge is
clearly the slower device and the set keeps all-edge for 5 Mbit/s and all-cloud for 100.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench.adaptive import SETTLE_FROM, SETTLE_TO, measure
from devices.profiles import load_shipped_device
from edgecloud.testbed.cpu_quota import our_groups
from edgecloud.testbed.netns import our_namespaces, unavailable_reason

REASON = unavailable_reason()
pytestmark = [
    pytest.mark.skipif(REASON is not None, reason=f"namespaces/tc not permitted here: {REASON}"),
    pytest.mark.skipif(not os.access("/sys/fs/cgroup/cpu", os.W_OK),
                       reason="the cgroup v1 CPU controller is not writable here"),
]


def half_speed_rpi4(folder: Path) -> str:
    profile = load_shipped_device("rpi4").to_dict()
    profile.update(name="rpi4-half", peak_flops=profile["peak_flops"] / 2,
                   memory_bandwidth_bytes_per_s=profile["memory_bandwidth_bytes_per_s"] / 2)
    path = folder / "rpi4-half.json"
    path.write_text(json.dumps(profile))
    return str(path)


def test_the_source_follows_a_rate_change_without_losing_or_repeating_a_request(tmp_path: Path) -> None:
    document = measure("resnet18", [100e6, 5e6], requests=SETTLE_TO, warmup=1, seed=0,
                       edge=half_speed_rpi4(tmp_path))

    assert document["lost"] == 0 and document["answered_twice"] == 0
    assert document["answers_seen"] == document["requests_sent"]
    assert len(document["intervals"]) >= 2, "the plan set must hold a plan for each rate"
    for row in document["table"]:
        # Settled: most of requests 11-20 and the segment's last request on the set's plan. The strict
        # form (all of 11-20) passed 3 of 3 at load 1-4 and failed 2 of 2 with three busy loops beside
        # it (3 Dec 15:12 and 15:16: the source still on the old plan at requests 11-12 after 100 -> 5
        # Mbit/s, a slower step now needs three late samples); a source that stays on the old plan fails here.
        settled = row["plans_used"][SETTLE_FROM:SETTLE_TO]
        on_plan = sum(plan == row["set_plan"] for plan in settled)
        assert on_plan >= 0.8 * len(settled) and settled[-1] == row["set_plan"], row
    first, second = document["table"]
    assert first["set_plan"] != second["set_plan"], "100 and 5 Mbit/s must fall in different intervals"
    assert document["switches"], "the source logged no switch"
    pid = f"{os.getpid()}-"
    assert not [name for name in our_namespaces() if pid in name]
    assert not [path for path in our_groups() if pid in path.name]
