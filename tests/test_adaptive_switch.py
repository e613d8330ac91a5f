"""Issue 14's adaptive criterion on the testbed, small: the link's tbf rate changes mid-run (100 -> 5
Mbit/s) under the adaptive source and every static plan of the set, served by real agents through
Mosquitto on emulated hosts.

What is asserted is what does not depend on the machine's load: no request lost or answered twice,
the source ends each segment on the plan the set names for the measured rate (through its own link
estimate), and it switched. The latency ratio against the best static plan is the benchmark's
(`bench/adaptive_switch.py`), not a test's: on 2 shared cores a 10-request median moves by more than
the 10 % criterion.
"""

from __future__ import annotations

import os

import pytest

from bench.adaptive_switch import SETTLE_FROM, SETTLE_TO, measure
from edgecloud.testbed.cpu_quota import our_groups
from edgecloud.testbed.netns import our_namespaces, unavailable_reason

REASON = unavailable_reason()
pytestmark = [
    pytest.mark.skipif(REASON is not None, reason=f"namespaces/tc not permitted here: {REASON}"),
    pytest.mark.skipif(not os.access("/sys/fs/cgroup/cpu", os.W_OK),
                       reason="the cgroup v1 CPU controller is not writable here"),
]


def test_the_source_follows_a_rate_change_without_losing_or_repeating_a_request() -> None:
    document = measure("resnet18", [100e6, 5e6], requests=SETTLE_TO, warmup=1, seed=0)

    assert document["lost"] == 0 and document["answered_twice"] == 0
    assert document["answers_seen"] == document["requests_sent"]
    assert len(document["intervals"]) >= 2, "the plan set must hold a plan for each rate"
    for row in document["table"]:
        settled = row["plans_used"][SETTLE_FROM:SETTLE_TO]
        assert settled == [row["set_plan"]] * len(settled), row
    first, second = document["table"]
    assert first["set_plan"] != second["set_plan"], "100 and 5 Mbit/s must fall in different intervals"
    assert document["switches"], "the source logged no switch"
    pid = f"{os.getpid()}-"
    assert not [name for name in our_namespaces() if pid in name]
    assert not [path for path in our_groups() if pid in path.name]
