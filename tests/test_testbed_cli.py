"""`edgecloud testbed`: the smoke version of the experiment on emulated hosts, its JSON and plot, and
nothing left behind when it ends or is interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_demo import alive, children_of
from test_testbed_emulation import needs_cgroups, needs_namespaces

from edgecloud.cli.testbed_steps import Cell, comparisons, prediction_errors
from edgecloud.testbed.cpu_quota import our_groups
from edgecloud.testbed.netns import our_namespaces

TESTBED = [sys.executable, "-m", "edgecloud.cli.app", "testbed"]
STRATEGIES = {"plan", "all-edge", "all-cloud", "neurosurgeon", "dads-mincut"}


def left_by(pid: int) -> list[str]:
    return [name for name in our_namespaces() if f"-{pid}-" in name] + \
        [str(path) for path in our_groups() if f"-{pid}-" in path.name]


@needs_namespaces
@needs_cgroups
def test_the_smoke_testbed_measures_every_strategy_on_the_emulated_hosts(tmp_path: Path) -> None:
    out, png = tmp_path / "out.json", tmp_path / "out.png"
    process = subprocess.run([*TESTBED, "mlp", "--bandwidth", "5Mbit", "--bandwidth", "50Mbit", "--requests", "3",
                              "--warmup", "1", "--json", str(out), "--plot", str(png)],
                             capture_output=True, text=True, env={**os.environ, "COLUMNS": "160"}, timeout=600)
    assert process.returncode == 0, process.stdout + process.stderr
    document = json.loads(out.read_text())
    assert document["format"] == "edgecloud.testbed/1"
    emulation = document["emulation"]
    assert emulation["kind"] == "namespaces" and "warning" not in process.stdout
    for link in emulation["links"]:  # the shaping was checked by a real transfer each way (one: under load, lower)
        for measured in (link["measured_up_bps"], link["measured_down_bps"]):
            assert 0.3 * link["bandwidth_bps"] < measured < 1.15 * link["bandwidth_bps"]
    (device,) = emulation["devices"]
    # mlp runs in well under the kernel's 1 ms least quota: no share slows it, so the edge stays at a full
    # share and is planned as measured
    assert device["model"] == "mlp" and device["cpus"] == 1 and device["attempts"][0]["measured_s"] < 1e-3
    assert device["planned_edge_time_scale"] == pytest.approx(device["ratio"])
    # per-message costs measured once on the emulated path, the client and echo on the edge, the broker in the cloud
    assert emulation["messages"]["message_s"] > 0 and emulation["messages"]["crossings_during_calibration"] == 2
    # ... and a request through real agents, whose excess over the echo is priced per message
    messages = emulation["messages"]
    assert messages["agent_request_s"] > 0 and messages["agent_extra_s_per_message"] >= 0
    cells = document["cells"]
    # the broker is in the cloud: the client's request and answer cross the link there and back, so all-edge
    # pays 2 x (input beyond tbf's bucket + output) on the wire at the rate behind the bucket
    from edgecloud.cli.demo_steps import model_file
    from edgecloud.cli.testbed_steps import MESSAGE_OVERHEAD_BYTES, bucket_payload_bytes
    from partitioner.graph.layer_graph import load_layer_graph

    graph = load_layer_graph(model_file("mlp"))
    request = sum(t.bytes for t in graph.tensors.values() if t.producer is None) + MESSAGE_OVERHEAD_BYTES
    answer = sum(t.bytes for t in graph.tensors.values() if t.is_graph_output) + MESSAGE_OVERHEAD_BYTES
    rates = {link["bandwidth_bps"]: (link["measured_up_bps"] + link["measured_down_bps"]) / 2 for link in emulation["links"]}
    for cell in cells:
        if cell["strategy"] == "all-edge":
            rate = cell["bandwidth_bps"]
            wire_bytes = 2 * max(0.0, request - bucket_payload_bytes(rate)) + 2 * answer
            assert cell["predicted_s"] > 8 * wire_bytes / rates[rate]
            assert cell["load_average_1min"] >= 0
    for bandwidth_bps in (5e6, 50e6):
        here = {cell["strategy"]: cell for cell in cells if cell["bandwidth_bps"] == bandwidth_bps}
        assert STRATEGIES <= set(here)
        for cell in here.values():
            assert cell["requests"] == 3 and cell["predicted_s"] > 0
            assert 0 < cell["measured_median_s"] <= cell["measured_p95_s"]
            assert set(cell) >= {"model", "bandwidth_bps", "strategy", "predicted_s", "measured_median_s",
                                 "measured_p95_s", "requests"}
    assert "latency per request" in process.stdout and "best baseline" in process.stdout
    assert png.stat().st_size > 10_000
    assert left_by(os.getpid()) == []


@needs_namespaces
@needs_cgroups
def test_an_interrupted_testbed_removes_every_namespace_group_and_process(tmp_path: Path) -> None:
    process = subprocess.Popen([*TESTBED, "mlp", "--bandwidth", "1Mbit", "--requests", "100000"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        started: set[int] = set()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(children_of(process.pid)) < 2:  # broker and agents up
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            started |= children_of(process.pid)
            time.sleep(0.1)
        started |= children_of(process.pid)
        assert left_by(process.pid), "the testbed made no namespace"
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, output
    assert left_by(process.pid) == [] and not alive(started)


def cell(strategy: str, predicted_s: float, measured_s: float, bandwidth_bps: float = 1e6) -> Cell:
    return Cell("m", bandwidth_bps, strategy, predicted_s, measured_s, measured_s, 3)


def test_the_plan_is_compared_with_the_best_measured_baseline_of_its_cell() -> None:
    cells = [cell("plan", 1.0, 1.04), cell("all-edge", 2.0, 1.0), cell("all-cloud", 1.0, 3.0),
             cell("plan", 1.0, 2.0, 5e6), cell("all-edge", 2.0, 1.5, 5e6)]
    first, second = comparisons(cells)
    assert (first.best_baseline, first.within) == ("all-edge", True)
    assert (second.best_baseline, second.within) == ("all-edge", False) and second.ratio == pytest.approx(4 / 3)
    assert prediction_errors(cells) == pytest.approx([0.04, 0.5, 2.0, 1.0, 0.25])


@pytest.mark.skipif(os.geteuid() != 0, reason="taking capabilities away needs root")
def test_where_namespaces_are_not_permitted_one_warning_and_the_software_emulation(tmp_path: Path) -> None:
    """Without CAP_SYS_ADMIN and CAP_NET_ADMIN (a container, say) no namespace can be made."""
    out = tmp_path / "out.json"
    without = ["setpriv", "--bounding-set", "-sys_admin,-net_admin", "--inh-caps", "-sys_admin,-net_admin"]
    done = subprocess.run([*without, *TESTBED, "mlp", "--bandwidth", "20Mbit", "--requests", "2", "--json", str(out)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("emulated hosts not permitted here") == 1, done.stdout
    assert "Operation not permitted" in done.stdout
    document = json.loads(out.read_text())
    assert document["emulation"]["kind"] == "software" and document["cells"]


def test_every_baseline_of_the_plan_becomes_a_plan_file_with_its_placement(tmp_path: Path) -> None:
    from edgecloud.cli.demo_steps import DemoSettings, model_file, plan_profiled, profile_here
    from edgecloud.cli.testbed_steps import strategy_plans
    from partitioner.plan.plan_file import load_plan

    settings = DemoSettings(model="chain", edge="rpi4", cloud="host", bandwidth_bps=20e6, latency_s=0.0, requests=1,
                            broker_url=None, deadline_s=10.0, emulate_links=False, seed=0)
    path = model_file("chain")
    planned = plan_profiled(settings, path, profile_here(path, 0), tmp_path)
    plans = strategy_plans(planned)
    assert set(plans) == {"plan", *(name for name, value in planned.plan.baselines.items() if value is not None)}
    assert set(plans["all-edge"].placement.values()) == {"edge"} and set(plans["all-cloud"].placement.values()) == {"cloud"}
    for name, plan in plans.items():
        expected = planned.plan.predicted_s if name == "plan" else planned.plan.baselines[name]
        assert plan.predicted_s == pytest.approx(expected)
        assert plan.predicted_s >= planned.plan.predicted_s - 1e-12  # none beats the ILP's optimum
        plan.save(tmp_path / f"{name}.json")
        assert load_plan(tmp_path / f"{name}.json").placement == plan.placement
