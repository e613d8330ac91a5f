"""`edgecloud demo` runs to the end, and leaves no process behind — also when interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from serving_helpers import bouncing_placement, node_ids

from devices.lookup import load_device
from devices.profiles import LinkProfile
from edgecloud.cli.demo_steps import predicted_stage_s, transfer_rows
from partitioner.costs.from_model import cost_graph_from_model
from partitioner.costs.scenario import Scenario
from partitioner.graph.layer_graph import load_layer_graph
from partitioner.models.zoo import cached_model_path
from partitioner.split.onnx_split import split_model

DEMO = [sys.executable, "-m", "edgecloud.cli.app", "demo"]


def children_of(pid: int) -> set[int]:
    """Live direct children of `pid`, from /proc (no psutil needed)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # the process ended while we looked
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry.name))
    return found


def alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if Path(f"/proc/{pid}").exists()}


def test_demo_runs_to_the_end_and_stops_everything(tmp_path: Path) -> None:
    process = subprocess.Popen([*DEMO, "--model", "mlp", "--requests", "4", "--workdir", str(tmp_path)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "COLUMNS": "160"})
    started: set[int] = set()
    while process.poll() is None:  # note every child it starts: broker and agents
        started |= children_of(process.pid)
        time.sleep(0.05)
    output = process.stdout.read() if process.stdout else ""
    assert process.returncode == 0, output
    assert "plan vs baselines" in output and "all-cloud" in output and "dads-mincut" in output
    assert "all 4 answers match the unsplit model" in output
    assert "per stage" in output and "per request" in output
    assert (tmp_path / "plan.json").is_file()
    assert len(started) >= 3  # the embedded broker and an agent per device
    assert not alive(started)


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_demo_stops_the_broker_and_every_agent(tmp_path: Path, signal_number: int) -> None:
    process = subprocess.Popen([*DEMO, "--model", "mlp", "--requests", "1000000", "--workdir", str(tmp_path)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        started: set[int] = set()
        while len(started) < 3 and time.monotonic() < deadline:  # broker + edge + cloud agents running
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            started |= children_of(process.pid)
            time.sleep(0.05)
        assert len(started) >= 3
        time.sleep(1.0)  # let it get busy serving requests
        process.send_signal(signal_number)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, output
    assert "interrupted" in output
    assert not alive(started)


def test_stage_and_transfer_predictions_follow_the_cost_graph(tmp_path: Path) -> None:
    path = cached_model_path("chain")
    link = LinkProfile(bandwidth_bps=2e7, latency_s=0.01)
    scenario = Scenario.of_profiles({"edge": load_device("rpi4"), "cloud": load_device("cloud-server")},
                                    {("edge", "cloud"): link}, source="edge")
    costs = cost_graph_from_model(load_layer_graph(path), scenario, path)
    placement = bouncing_placement(node_ids(path), 4)
    manifest = split_model(path, placement, "edge", "edge", tmp_path)

    per_stage = predicted_stage_s(manifest, costs)
    for device in ("edge", "cloud"):
        expected = sum(node.time_s[device] for name, node in costs.nodes.items() if placement[name] == device)
        assert sum(per_stage[stage.index] for stage in manifest.stages_of(device)) == pytest.approx(expected)

    rows = transfer_rows(manifest, costs)
    # A chain crosses one tensor per stage boundary: stage i's output goes to stage i+1 (the last to the sink).
    boundaries = [(stage.index, stage.device, nxt.device) for stage, nxt in zip(manifest.stages, manifest.stages[1:])]
    for index, sender, receiver in boundaries:
        (item,) = manifest.stages[index].outputs
        row = rows[(index, sender, receiver)]
        assert row.bytes == costs.tensors[item.tensor].bytes
        assert row.predicted_s == pytest.approx(8 * row.bytes / 2e7 + 0.01)
    assert list(rows)[0] == (None, "client", "edge") and list(rows)[-1] == (None, "edge", "client")


def test_demo_defaults_plan_a_real_split_ahead_of_both_all_on_one_baselines(tmp_path: Path) -> None:
    """The README's first command must show what planning is for: work on both devices, the plan faster
    than all-edge and all-cloud (resnet18 at 20 Mbit/s, the old default, kept everything on the edge)."""
    from edgecloud.cli import demo as demo_command
    from edgecloud.cli.demo_steps import DemoSettings, plan_demo_model
    from partitioner.units import parse_bandwidth_bps, parse_duration_s

    settings = DemoSettings(model=demo_command.DEFAULT_MODEL, edge=demo_command.DEFAULT_EDGE,
                            cloud=demo_command.DEFAULT_CLOUD,
                            bandwidth_bps=parse_bandwidth_bps(demo_command.DEFAULT_BANDWIDTH),
                            latency_s=parse_duration_s(demo_command.DEFAULT_LATENCY), requests=1, broker_url=None,
                            deadline_s=10.0, emulate_links=True, seed=0)
    plan = plan_demo_model(settings, tmp_path).plan
    assert set(plan.placement.values()) == {"edge", "cloud"}
    assert plan.predicted_s < plan.baselines["all-edge"] and plan.predicted_s < plan.baselines["all-cloud"]
