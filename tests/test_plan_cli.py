"""`edgecloud plan` / `edgecloud sweep`: JSON output, start-up without heavy imports, user errors with exit
code 2, plans keyed by every ONNX node id, and the ILP never worse than a baseline on the bundled models."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bench.synthetic_dags import synthetic_cost_graph
from devices.lookup import load_device
from devices.profiles import LinkProfile
from edgecloud.cli.app import app
from partitioner.costs.from_model import cost_graph_from_model
from partitioner.costs.scenario import Scenario
from partitioner.graph.layer_graph import load_layer_graph
from partitioner.plan.make_plan import plan_cost_graph
from partitioner.plan.plan_file import load_plan
from test_costs import fan_out_graph

HEAVY_MODULES = {"torch", "onnx", "onnxruntime", "matplotlib"}


@pytest.fixture(scope="module")
def graph_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("graphs") / "g.json"
    synthetic_cost_graph(120, 3, seed=3).save(path)
    return str(path)


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def test_cost_graph_plan_prints_json(graph_file) -> None:
    result = run("plan", "--cost-graph", graph_file, "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["format"] == "edgecloud.plan/1" and plan["objective"] == "latency"
    assert len(plan["placement"]) == 120 and set(plan["placement"].values()) <= {"edge", "cloud", "edge-server"}
    assert plan["solver"]["status"] == "optimal"
    assert set(plan["baselines"]) == {"all-edge", "all-cloud", "all-edge-server", "neurosurgeon", "dads-mincut"}
    assert all(plan["predicted_s"] <= value + 1e-12 for value in plan["baselines"].values() if value is not None)


def test_cost_graph_plan_imports_no_heavy_module(graph_file) -> None:
    probe = (
        "import sys, json\n"
        "from edgecloud.cli.app import app\n"
        f"try:\n    app(['plan', '--cost-graph', {graph_file!r}, '--json'])\nexcept SystemExit:\n    pass\n"
        "sys.stderr.write(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    json.loads(out.stdout)  # stdout is pure JSON (HiGHS' banner silenced)
    loaded = set(json.loads(out.stderr.strip().splitlines()[-1]))
    assert not loaded & HEAVY_MODULES, sorted(loaded & HEAVY_MODULES)


@pytest.mark.parametrize(("objective", "solver"), [("throughput", "highs"), ("makespan", "highs"), ("latency", "cbc")])
def test_other_objectives_and_cbc_from_the_cli(tmp_path, objective, solver) -> None:
    path = tmp_path / "g.json"
    synthetic_cost_graph(12, 2, seed=1).save(path)
    result = run("plan", "--cost-graph", str(path), "--objective", objective, "--solver", solver, "--json",
                 "--time-limit", "20")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["objective"] == objective and plan["solver"]["status"] == "optimal"
    assert plan["solver"]["name"] == solver
    if objective == "makespan":
        assert set(plan["schedule_s"]) == set(plan["layers"])


def _write(tmp_path, data: dict) -> str:
    path = tmp_path / "g.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize(("edit", "extra", "message"), [
    (lambda g: g["tensors"].update({"back": {"bytes": 1, "producer": "d", "consumers": ["a"]}}), [], "cycle"),
    (None, ["--pin", "b=gpu"], "unknown device 'gpu'"),
    (lambda g: g["nodes"]["c"].update(time_s={"edge": 1.0}), [], "no time for device 'cloud'"),
    (None, ["--memory-limit", "edge=0B", "--memory-limit", "cloud=0B"], "memory"),
    (lambda g: [g["nodes"][n].update(memory_bytes=100) for n in "abcd"] and g["nodes"]["a"].update(pin="edge"),
     ["--memory-limit", "edge=50B"], "memory limit of device 'edge'"),
    (None, ["--pin", "zz=edge"], "unknown node 'zz'"),
    (None, ["--link", "edge-cloud=fast,10ms"], "bandwidth 'fast' is not a number"),
    (None, ["--objective", "cost"], "unknown objective"),
    # Each node fits anywhere and all fit in total, but no split of four 10-byte nodes fits 25 + 15 bytes.
    (None, ["--memory-limit", "edge=25B", "--memory-limit", "cloud=15B"], "no placement satisfies the memory limits"),
    (None, ["--memory-limit", "edge=25B", "--memory-limit", "cloud=15B", "--objective", "makespan"],
     "no placement satisfies the memory limits"),
])
def test_bad_input_is_one_sentence_and_exit_code_2(tmp_path, edit, extra, message) -> None:
    data = fan_out_graph()
    for node in data["nodes"].values():
        node["memory_bytes"] = 10
    if edit is not None:
        edit(data)
    result = run("plan", "--cost-graph", _write(tmp_path, data), *extra)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert result.output.startswith("error: ") and "Traceback" not in result.output


@pytest.mark.parametrize(("args", "message"), [
    (["plan"], "give either a MODEL or --cost-graph FILE"),
    (["plan", "chain", "--cost-graph", "g.json"], "give either a MODEL or --cost-graph FILE"),
    (["sweep"], "give a MODEL to sweep"),
    (["plan", "no-such-model.onnx"], "does not exist"),
    (["plan", "chain", "-o", "."], "--output . is a directory"),  # was a traceback
    (["plan", "chain", "--plot", "."], "--plot . is a directory"),  # was silently written to ..png
    (["sweep", "chain", "-o", "."], "--output . is a directory"),
    (["plan", "chain", "-o", "no/such/folder/plan.json"], "does not exist"),
])
def test_command_line_mistakes_are_one_error_line(args, message) -> None:
    """These once ended in typer's multi-line usage box or a traceback instead of the `error: ...` line."""
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_non_numeric_bandwidth_for_a_model_exits_2(tmp_path) -> None:
    result = run("plan", "chain", "--bandwidth", "lots")
    assert result.exit_code == 2 and "bandwidth 'lots'" in result.output


def test_model_plan_keys_every_onnx_node_and_resolves_the_model(tmp_path, bundled_models) -> None:
    model = bundled_models["resnet18"]
    out, png = tmp_path / "plan.json", tmp_path / "plan.png"
    result = run("plan", str(model), "--edge", "jetson-nano", "--cloud", "edge-server", "--bandwidth", "100Mbit",
                 "--latency", "1ms", "--fuse", "-o", str(out), "--plot", str(png))
    assert result.exit_code == 0, result.output
    assert "plan (ILP)" in result.output and "dads-mincut" in result.output
    plan = load_plan(out)
    assert plan.model_path == model.resolve()
    layer_graph = load_layer_graph(model)  # unfused: every ONNX node id
    assert set(plan.placement) == set(layer_graph.onnx_node_ids())
    assert png.stat().st_size > 1000


def test_pin_by_onnx_node_id_and_multi_tier_links(bundled_models) -> None:
    model = bundled_models["inception"]
    first = load_layer_graph(model).onnx_node_ids()[-1]
    result = run("plan", str(model), "--device", "server=edge-server", "--link", "edge-server=100Mbit,2ms",
                 "--link", "cloud-server=1Gbit,5ms", "--pin", f"{first}=cloud", "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["placement"][first] == "cloud"
    assert set(plan["devices"]) == {"edge", "cloud", "server"}


def test_sweep_never_puts_the_plan_above_a_baseline(tmp_path, bundled_models) -> None:
    out, png = tmp_path / "sweep.json", tmp_path / "sweep.png"
    result = run("sweep", str(bundled_models["chain"]), "--bandwidth", "1Mbit..1Gbit", "--points", "4",
                 "--cloud", "edge-server", "-o", str(out), "--plot", str(png))
    assert result.exit_code == 0, result.output
    points = json.loads(out.read_text())["points"]
    assert len(points) == 4 and png.stat().st_size > 1000
    for point in points:
        assert all(point["plan_s"] <= v * (1 + 1e-9) for v in point["baselines_s"].values() if v is not None)


@pytest.mark.parametrize("cloud", ["cloud-server", "edge-server"])
def test_ilp_latency_never_above_a_baseline_on_bundled_models(bundled_models, cloud) -> None:
    devices = {"edge": load_device("rpi4"), "cloud": load_device(cloud)}
    for name, model in bundled_models.items():
        layer_graph = load_layer_graph(model)
        for bandwidth_bps in np.geomspace(1e6, 1e9, 4):
            scenario = Scenario.of_profiles(devices, {("edge", "cloud"): LinkProfile(float(bandwidth_bps), 0.001)},
                                            source="edge")
            graph = cost_graph_from_model(layer_graph, scenario)
            plan = plan_cost_graph(graph)
            assert plan.solver["status"] == "optimal"
            for baseline, value in plan.baselines.items():
                assert value is not None and plan.predicted_s <= value * (1 + 1e-9), (name, bandwidth_bps, baseline)
            # two devices, no memory limit: DADS' min-cut is exact, so it meets the ILP
            assert math.isclose(plan.baselines["dads-mincut"], plan.predicted_s, rel_tol=1e-6), (name, bandwidth_bps)


def _profile_file(tmp_path, model, seconds_per_node: float, drop: int = 0) -> str:
    """A profile measured on a host identical to the rpi4 profile: every node `seconds_per_node`."""
    from devices.profiler import PROFILE_FORMAT

    nodes = load_layer_graph(model).onnx_node_ids()
    times = {node: seconds_per_node for node in nodes[drop:]}
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"format": PROFILE_FORMAT, "model": str(model), "host": load_device("rpi4").to_dict(),
                                "threads": {"1": times}}))
    return str(path)


def test_measured_profile_sets_the_node_times(tmp_path, bundled_models) -> None:
    model = bundled_models["chain"]
    n_nodes = len(load_layer_graph(model).onnx_node_ids())
    result = run("plan", str(model), "--profile", _profile_file(tmp_path, model, 0.002), "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    # measured on a host like the edge device: all-edge costs exactly the measured sum
    assert math.isclose(plan["baselines"]["all-edge"], n_nodes * 0.002, rel_tol=1e-9)
    missing = run("plan", str(model), "--profile", _profile_file(tmp_path, model, 0.002, drop=1))
    assert missing.exit_code == 2 and "the profile has no time for node" in missing.output


def test_plan_file_round_trip_keeps_the_model_relative(tmp_path, bundled_models) -> None:
    out = tmp_path / "plans" / "p.json"
    out.parent.mkdir()
    result = run("plan", str(bundled_models["mlp"]), "-o", str(out))
    assert result.exit_code == 0, result.output
    stored = json.loads(out.read_text())
    assert not Path(stored["model"]).is_absolute()
    plan = load_plan(out)
    assert plan.model_path == bundled_models["mlp"].resolve()
    assert plan.to_dict(relative_to=out.parent) == stored


def test_model_with_an_unknown_op_is_planned_not_crashed_on(tmp_path) -> None:
    """Issue 2: an op without a FLOP count is planned (priced from the bytes it moves), with a warning."""
    from onnx import helper, save

    from test_graph import _model

    model = _model([helper.make_node("Relu", ["x"], ["a"], name="before"),
                    helper.make_node("Frobnicate", ["a"], ["b"], name="custom", domain="example.ops"),
                    helper.make_node("Relu", ["b"], ["c"], name="after")],
                   {"x": [1, 64]}, {"c": [1, 64]}, domains=("example.ops",))
    path = tmp_path / "custom.onnx"
    save(model, path)
    result = run("plan", str(path), "--bandwidth", "5Mbit", "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output.splitlines()[-1])
    assert set(plan["placement"]) == {"before", "custom", "after"}
    assert plan["predicted_s"] > 0 and plan["predicted_s"] <= min(v for v in plan["baselines"].values() if v is not None)
