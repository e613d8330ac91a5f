"""The scenario (devices, links, source, sink, pins, memory limits), the one link type and key rule, and
the objective registry: each owned once, and the bugs their copies had."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import partitioner.plan.make_plan as planning
from bench.synthetic_dags import synthetic_cost_graph
from devices.errors import DeviceError
from devices.profiles import LinkProfile, link_key, links_from_list, links_to_list
from edgecloud.cli.app import app
from edgecloud.serving.link_emulation import links_of
from partitioner.costs.cost_graph import CostGraph, CostNode, CostTensor, to_arrays
from partitioner.costs.objective import OBJECTIVES, latency_s, objective_named
from partitioner.costs.scenario import Scenario
from partitioner.errors import PartitionerError
from partitioner.plan.make_plan import plan_cost_graph
from partitioner.plan.plan_file import load_plan
from partitioner.solve.baselines import baselines

runner = CliRunner()
UNKNOWN_OBJECTIVE = "unknown objective 'cost'; choose one of latency, throughput, makespan."


def _two_nodes() -> tuple[dict[str, CostNode], dict[str, CostTensor]]:
    nodes = {"a": CostNode({"edge": 0.01, "cloud": 0.001}, memory_bytes=10),
             "b": CostNode({"edge": 0.02, "cloud": 0.002}, memory_bytes=10, members=["b1", "b2"])}
    tensors = {"x": CostTensor(1000, None, ["a"]), "h": CostTensor(500, "a", ["b"]),
               "y": CostTensor(10, "b", [], output=True)}
    return nodes, tensors


def _scenario(**changes) -> Scenario:
    base = dict(devices={"edge": {}, "cloud": {}}, links={("edge", "cloud"): LinkProfile(2e7, 0.01)},
                source="edge", sink="edge")
    return Scenario(**{**base, **changes})


# --- the link ---------------------------------------------------------------------------------------


def test_a_graph_keyed_edge_cloud_is_planned_like_one_keyed_cloud_edge() -> None:
    """Was refused: "there is no link between devices 'cloud' and 'edge'"."""
    nodes, tensors = _two_nodes()
    link = LinkProfile(2e7, 0.01)
    forward = CostGraph(devices={"edge": {}, "cloud": {}}, links={("edge", "cloud"): link}, source="edge",
                        sink="edge", nodes=nodes, tensors=tensors).validate()
    backward = CostGraph(devices={"edge": {}, "cloud": {}}, links={("cloud", "edge"): link}, source="edge",
                         sink="edge", nodes=nodes, tensors=tensors).validate()
    assert forward.link("edge", "cloud") == forward.link("cloud", "edge") == link
    assert plan_cost_graph(forward).predicted_s == plan_cost_graph(backward).predicted_s
    np.testing.assert_array_equal(to_arrays(forward).transfer_s, to_arrays(backward).transfer_s)


def test_a_link_given_both_ways_is_refused() -> None:
    nodes, tensors = _two_nodes()
    with pytest.raises(PartitionerError, match="between devices 'cloud' and 'edge' is given twice"):
        CostGraph(devices={"edge": {}, "cloud": {}}, links={("edge", "cloud"): LinkProfile(1e6, 0.0),
                                                            ("cloud", "edge"): LinkProfile(2e6, 0.0)},
                  source="edge", sink="edge", nodes=nodes, tensors=tensors)
    with pytest.raises(DeviceError, match="link cloud-edge is given twice"):
        links_from_list([{"from": "edge", "to": "cloud", "bandwidth_bps": 1e6, "latency_s": 0.0},
                         {"from": "cloud", "to": "edge", "bandwidth_bps": 2e6, "latency_s": 0.0}], "g.json")


@pytest.mark.parametrize(("bandwidth_bps", "latency_s", "message"), [
    (0.0, 0.0, "'bandwidth_bps' must be positive"),
    (float("inf"), 0.0, "'bandwidth_bps' must be a finite number"),
    (1e6, -1.0, "'latency_s' must be non-negative"),
    (1e6, float("nan"), "'latency_s' must be a finite number"),
    (True, 0.0, "'bandwidth_bps' must be a finite number"),
])
def test_a_link_checks_its_figures_when_made(bandwidth_bps, latency_s, message) -> None:
    with pytest.raises(DeviceError, match=message):
        LinkProfile(bandwidth_bps, latency_s)


def test_links_have_one_key_and_one_serializer() -> None:
    assert link_key("edge", "cloud") == link_key("cloud", "edge") == ("cloud", "edge")
    assert LinkProfile(8e6, 0.01).serialisation_s(1_000_000) == 1.0
    assert LinkProfile(8e6, 0.01).transfer_time_s(1_000_000) == 1.01
    links = {link_key("edge", "edge-server"): LinkProfile(1e8, 0.002), link_key("cloud", "edge"): LinkProfile(2e7, 0.01)}
    assert links_from_list(links_to_list(links), "test") == links
    assert links_from_list([{"from": "edge", "to": "cloud", "bandwidth_bps": 8e6}], "test") == {
        ("cloud", "edge"): LinkProfile(8e6, 0.0)}  # a hand-written file may leave the latency out


def test_a_plan_file_link_is_parsed_once_for_the_agents(tmp_path) -> None:
    plan = plan_cost_graph(synthetic_cost_graph(8, 3, seed=2))
    path = tmp_path / "plan.json"
    plan.save(path)
    loaded = load_plan(path)
    assert loaded.links == plan.links and all(isinstance(link, LinkProfile) for link in loaded.links.values())
    assert links_of("edge", loaded.links) == {"cloud": loaded.links[("cloud", "edge")],
                                              "edge-server": loaded.links[("edge", "edge-server")]}
    data = json.loads(path.read_text())
    data["links"][0]["latency_s"] = -1.0
    path.write_text(json.dumps(data))
    with pytest.raises(PartitionerError, match="is malformed .*'latency_s' must be non-negative"):
        load_plan(path)


# --- the scenario -----------------------------------------------------------------------------------


def test_the_scenario_builds_the_cost_graph_with_pins_and_memory_limits() -> None:
    nodes, tensors = _two_nodes()
    scenario = _scenario(pins={"b2": "cloud", "a": "edge"}, memory_limits_bytes={"cloud": 15})
    graph = scenario.validate().cost_graph(nodes, tensors)
    assert graph.nodes["b"].pin == "cloud" and graph.nodes["a"].pin == "edge"  # an ONNX id names its layer
    assert graph.devices["cloud"]["memory_bytes"] == 15 and "memory_bytes" not in graph.devices["edge"]
    assert nodes["b"].pin is None  # the caller's nodes are left as they were
    assert graph.links == {("cloud", "edge"): LinkProfile(2e7, 0.01)}


@pytest.mark.parametrize(("changes", "message"), [
    (dict(devices={}), "no devices"),
    (dict(source="moon"), "source device 'moon'"),
    (dict(links={}), "no link between devices 'cloud' and 'edge'"),
    (dict(links={("edge", "cloud"): LinkProfile(1e6, 0.0), ("edge", "moon"): LinkProfile(1e6, 0.0)}),
     "link edge-moon names the unknown device 'moon'"),
    (dict(memory_limits_bytes={"gpu": 10}), "memory limit names the unknown device 'gpu'"),
    (dict(memory_limits_bytes={"edge": -1}), "invalid memory_bytes -1"),
])
def test_a_bad_scenario_is_refused_in_one_sentence_before_any_node_exists(changes, message) -> None:
    with pytest.raises(PartitionerError, match=message):
        _scenario(**changes).validate()


def test_pins_are_checked_against_the_nodes() -> None:
    nodes, tensors = _two_nodes()
    with pytest.raises(PartitionerError, match="a pin names the unknown node 'zz'"):
        _scenario(pins={"zz": "edge"}).cost_graph(nodes, tensors)
    with pytest.raises(PartitionerError, match="pinned to the unknown device 'gpu'"):
        _scenario(pins={"a": "gpu"}).cost_graph(nodes, tensors)


def test_device_names_with_dashes_split_where_two_devices_are_named() -> None:
    scenario = _scenario(devices={"edge": {}, "cloud": {}, "edge-server": {}})
    assert scenario.device_pair("edge-server-cloud") == ("edge-server", "cloud")
    assert scenario.device_pair("edge-edge-server") == ("edge", "edge-server")
    with pytest.raises(PartitionerError, match="must name two devices as A-B, among edge, cloud, edge-server"):
        scenario.device_pair("edge-moon")


def test_overrides_win_and_keep_one_key() -> None:
    scenario = _scenario().overridden(links={("edge", "cloud"): LinkProfile(1e9, 0.0)}, pins={"a": "cloud"},
                                      memory_limits_bytes={"edge": 5})
    assert scenario.links == {("cloud", "edge"): LinkProfile(1e9, 0.0)}
    assert scenario.pins == {"a": "cloud"} and scenario.memory_limits_bytes == {"edge": 5}


def test_the_command_line_checks_the_scenario_before_reading_the_model() -> None:
    result = runner.invoke(app, ["plan", "no-such-model.onnx", "--link", "edge-moon=1Mbit,1ms"])
    assert result.exit_code == 2 and "must name two devices as A-B" in result.output, result.output


def test_sweep_takes_devices_and_links(bundled_models) -> None:
    """Was: "No such option: --device" (sweep built its graph from placeholders and swapped one link)."""
    result = runner.invoke(app, ["sweep", str(bundled_models["chain"]), "--device", "server=edge-server",
                                 "--link", "edge-server=100Mbit,2ms", "--link", "cloud-server=1Gbit,5ms",
                                 "--bandwidth", "1Mbit..1Gbit", "--points", "3", "--json"])
    assert result.exit_code == 0, result.output
    points = json.loads(result.output)["points"]
    assert [round(p["bandwidth_bps"]) for p in points] == [1_000_000, 31_622_777, 1_000_000_000]
    for point in points:
        assert set(point["baselines_s"]) >= {"all-edge", "all-cloud", "all-server"}
        assert all(point["plan_s"] <= v * (1 + 1e-9) for v in point["baselines_s"].values() if v is not None)
    # the swept edge-cloud bandwidth changes nothing for all-server, which only uses the fixed edge-server link
    assert len({p["baselines_s"]["all-server"] for p in points}) == 1
    assert len({p["baselines_s"]["all-cloud"] for p in points}) == 3


# --- the objective ----------------------------------------------------------------------------------


def test_an_unknown_objective_is_refused_before_the_baselines_run(monkeypatch) -> None:
    """Was: the baselines (and brute force) ran, scored as makespan, and only the solver refused the name."""
    ran = []
    monkeypatch.setattr(planning, "baselines", lambda *args: ran.append(args) or baselines(*args))
    graph = synthetic_cost_graph(6, 2, seed=0)
    with pytest.raises(PartitionerError) as error:
        plan_cost_graph(graph, "cost")
    assert str(error.value) == UNKNOWN_OBJECTIVE and ran == []
    arrays = to_arrays(graph)
    for call in (lambda: objective_named("cost").evaluate(arrays, np.zeros(arrays.n_nodes, dtype=np.int64)),
                 lambda: baselines(arrays, "cost")):
        with pytest.raises(PartitionerError, match="unknown objective 'cost'"):
            call()


def test_the_command_line_refuses_an_unknown_objective_before_reading_the_model() -> None:
    for command in ("plan", "sweep"):
        result = runner.invoke(app, [command, "no-such-model.onnx", "--objective", "cost"])
        assert result.exit_code == 2 and result.output.strip() == f"error: {UNKNOWN_OBJECTIVE}", result.output


def test_every_objective_is_one_record() -> None:
    arrays = to_arrays(synthetic_cost_graph(10, 3, seed=1))
    placement = np.arange(arrays.n_nodes) % arrays.n_devices
    assert list(OBJECTIVES) == ["latency", "throughput", "makespan"]
    assert objective_named("latency").evaluate(arrays, placement) == latency_s(arrays, placement)
    for name, objective in OBJECTIVES.items():
        assert objective_named(name) is objective and objective_named(objective) is objective
        assert objective.time_limit_s(5.0) == 5.0
    assert [o.time_limit_s(None) for o in OBJECTIVES.values()] == [None, 60.0, 60.0]
    assert OBJECTIVES["throughput"].evaluate(arrays, placement) != OBJECTIVES["makespan"].evaluate(arrays, placement)
