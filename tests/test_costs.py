"""Cost graph JSON, validation sentences, unit parsing and the transfer semantics of `partitioner.costs.objective`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bench.synthetic_dags import synthetic_cost_graph
from partitioner.costs.cost_graph import CostGraph, client_hops_s, to_arrays
from partitioner.costs.objective import latency_s, throughput_s, transfers
from partitioner.errors import PartitionerError
from partitioner.units import parse_bandwidth_bps, parse_bandwidth_range_bps, parse_duration_s, parse_size_bytes

ISSUE_EXAMPLE = {
    "format": "edgecloud.costgraph/1",
    "devices": {"edge": {"memory_bytes": 500000000}, "cloud": {}},
    "links": [{"from": "edge", "to": "cloud", "bandwidth_bps": 20000000, "latency_s": 0.01}],
    "source": "edge", "sink": "edge",
    "nodes": {"conv1": {"time_s": {"edge": 0.012, "cloud": 0.001}, "memory_bytes": 37632, "pin": None}},
    "tensors": {"x": {"bytes": 602112, "producer": None, "consumers": ["conv1"], "output": False},
                "y": {"bytes": 4000, "producer": "conv1", "consumers": [], "output": True}},
}


def fan_out_graph() -> dict:
    """a -> t (1000 bytes) -> b, c, d: one tensor, three consumers."""
    times = {"edge": 0.01, "cloud": 0.001}
    return {
        "format": "edgecloud.costgraph/1", "devices": {"edge": {}, "cloud": {}},
        "links": [{"from": "cloud", "to": "edge", "bandwidth_bps": 8000, "latency_s": 0.5}],
        "source": "edge", "sink": "edge",
        "nodes": {name: {"time_s": times} for name in "abcd"},
        "tensors": {"in": {"bytes": 0, "producer": None, "consumers": ["a"]},
                    "t": {"bytes": 1000, "producer": "a", "consumers": ["b", "c", "d"]},
                    "ob": {"bytes": 0, "producer": "b", "consumers": [], "output": True},
                    "oc": {"bytes": 0, "producer": "c", "consumers": [], "output": True},
                    "od": {"bytes": 0, "producer": "d", "consumers": [], "output": True}},
    }


def test_issue_example_loads_and_round_trips(tmp_path) -> None:
    graph = CostGraph.from_dict(ISSUE_EXAMPLE)
    path = tmp_path / "g.json"
    graph.save(path)
    again = CostGraph.load(path)
    assert again.to_dict() == graph.to_dict()
    assert again.link("cloud", "edge").bandwidth_bps == 20000000  # one direction holds for both


def test_latency_of_all_on_the_edge_is_compute_only() -> None:
    arrays = to_arrays(CostGraph.from_dict(ISSUE_EXAMPLE))
    assert latency_s(arrays, np.array([0])) == pytest.approx(0.012)
    # on the cloud: the input goes up (8*602112/2e7 + 0.01) and the output comes back (8*4000/2e7 + 0.01)
    expected = 0.001 + 8 * 602112 / 2e7 + 0.01 + 8 * 4000 / 2e7 + 0.01
    assert latency_s(arrays, np.array([1])) == pytest.approx(expected)


def test_a_tensor_is_sent_once_per_destination_device_not_per_consumer() -> None:
    arrays = to_arrays(CostGraph.from_dict(fan_out_graph()))
    index = {name: i for i, name in enumerate(arrays.node_names)}
    placement = np.zeros(4, dtype=np.int64)
    placement[[index["b"], index["c"], index["d"]]] = 1  # three consumers on the cloud
    sends = transfers(arrays, placement)
    names = [arrays.tensor_names[t] for t in sends.tensor]
    assert names.count("t") == 1  # once edge -> cloud, although three consumers read it
    assert sorted(names) == ["ob", "oc", "od", "t"]  # outputs come back to the sink
    transfer = 8 * 1000 / 8000 + 0.5
    assert latency_s(arrays, placement) == pytest.approx(0.01 + 3 * 0.001 + transfer + 3 * 0.5)


def test_throughput_is_the_busiest_device_or_link() -> None:
    arrays = to_arrays(CostGraph.from_dict(fan_out_graph()))
    assert throughput_s(arrays, np.zeros(4, dtype=np.int64)) == pytest.approx(0.04)
    placement = np.array([0, 1, 1, 1])
    assert throughput_s(arrays, placement) == pytest.approx(1.5)  # the cloud->edge link: 3 outputs of 0.5 s


@pytest.mark.parametrize(("change", "message"), [
    (lambda g: g["tensors"]["t"]["consumers"].append("a") or g["tensors"].update(
        {"back": {"bytes": 1, "producer": "b", "consumers": ["a"]}}), "cycle"),
    (lambda g: g["nodes"]["b"].update(pin="gpu"), "pinned to the unknown device 'gpu'"),
    (lambda g: g["nodes"]["c"].update(time_s={"edge": 0.1}), "no time for device 'cloud'"),
    (lambda g: g.update(links=[]), "no link between devices"),
    (lambda g: g["tensors"]["t"].update(producer="zz"), "unknown node 'zz'"),
    (lambda g: g.update(source="phone"), "source device 'phone'"),
    (lambda g: g.update(format="other"), "format"),
    # These once passed silently or ended in a traceback:
    (lambda g: g["devices"]["edge"].update(memory_bytes="lots"), "invalid memory_bytes 'lots'"),
    (lambda g: g["devices"]["edge"].update(memory_bytes=-5), "invalid memory_bytes -5"),
    (lambda g: g["nodes"]["a"].update(memory_bytes=-6), "node 'a' has an invalid memory_bytes"),
    (lambda g: g["nodes"]["a"]["time_s"].update(edge=True), "invalid time True"),
    (lambda g: g["links"][0].update(latency_s=float("inf")), "link cloud-edge: 'latency_s' must be a finite number"),
    (lambda g: g["tensors"]["t"].update(bytes=float("inf")), "malformed"),
    (lambda g: g["tensors"]["t"].update(consumers="b"), "must be a list of node names"),
])
def test_bad_graphs_raise_one_sentence(change, message) -> None:
    data = fan_out_graph()
    change(data)
    with pytest.raises(PartitionerError, match=message) as error:
        CostGraph.from_dict(data)
    assert "\n" not in str(error.value)


def test_unreadable_file_is_a_partitioner_error(tmp_path) -> None:
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(PartitionerError, match="not valid JSON"):
        CostGraph.load(path)
    with pytest.raises(PartitionerError, match="does not exist"):
        CostGraph.load(tmp_path / "missing.json")


def test_units() -> None:
    assert parse_bandwidth_bps("20Mbit") == 2e7
    assert parse_bandwidth_bps("1.5 Gbit") == 1.5e9
    assert parse_bandwidth_bps("500kbit") == 5e5
    assert parse_bandwidth_bps("300bit") == 300
    assert parse_duration_s("10ms") == pytest.approx(0.01)
    assert parse_duration_s("200us") == pytest.approx(2e-4)
    assert parse_size_bytes("512MB") == 512 * 10**6
    assert parse_size_bytes("2GiB") == 2 * 2**30
    assert parse_bandwidth_range_bps("1Mbit..1Gbit") == (1e6, 1e9)
    for bad, parser in (("fast", parse_bandwidth_bps), ("10 parsecs", parse_duration_s), ("lots", parse_size_bytes),
                        ("0Mbit", parse_bandwidth_bps), ("1Gbit..1Mbit", parse_bandwidth_range_bps)):
        with pytest.raises(PartitionerError):
            parser(bad)


def test_synthetic_graphs_are_valid_dnn_like_dags() -> None:
    graph = synthetic_cost_graph(300, 3, seed=4)
    arrays = to_arrays(graph)
    consumers = np.bincount(arrays.use_tensor, minlength=arrays.n_tensors)
    assert arrays.n_nodes == 300 and arrays.n_devices == 3
    assert (consumers >= 2).sum() > 10  # fan-out and skips: multi-consumer tensors
    assert json.loads(json.dumps(graph.to_dict()))["format"] == "edgecloud.costgraph/1"


def test_the_planner_prices_each_layer_by_its_kernel_class(bundled_models) -> None:
    """A depthwise Conv and a dense Conv share the op type; the plan's node times must come from the
    predictor's class for each (as its profiling fitted them), not from the op type alone."""
    from devices.lookup import load_device
    from devices.predictor import predict_node_time_s
    from devices.profiles import LinkProfile
    from partitioner.costs.from_model import cost_graph_from_model
    from partitioner.costs.scenario import Scenario
    from partitioner.graph.kernel_classes import layer_im2col, layer_kernel_classes, layer_kernel_groups
    from partitioner.graph.layer_graph import load_layer_graph

    path = bundled_models["mobilenetv2"]
    graph = load_layer_graph(path)
    rpi = load_device("rpi4")
    scenario = Scenario.of_profiles({"edge": rpi, "cloud": load_device("cloud-server")},
                                    {("edge", "cloud"): LinkProfile(50e6, 1e-3)}, "edge")
    costs = cost_graph_from_model(graph, scenario, path)
    kernels, groups, im2col = layer_kernel_classes(graph), layer_kernel_groups(graph), layer_im2col(graph)
    assert {"Conv/depthwise", "Conv/dense"} <= set(kernels.values())
    assert any(rows > 0 for rows, _ in im2col.values())
    differs = 0
    for layer, attrs in graph.dag.nodes(data=True):
        features = (attrs["op_type"], attrs["flops"], attrs["bytes_moved"], attrs["param_bytes"], rpi)
        expected = predict_node_time_s(*features, kernels[layer], groups[layer], im2col[layer])
        assert costs.nodes[layer].time_s["edge"] == pytest.approx(expected, rel=1e-12)
        differs += expected != pytest.approx(predict_node_time_s(*features), rel=1e-6)
    assert differs  # the class changes some prices: the test can tell the two apart


def test_a_link_without_message_costs_loads_as_before_and_one_with_them_round_trips() -> None:
    from devices.profiles import LinkProfile

    old = LinkProfile.from_dict({"bandwidth_bps": 2e7, "latency_s": 0.01})
    assert (old.message_s, old.broker_s, old.host_s_per_byte) == (0.0, 0.0, 0.0)
    assert old.to_dict() == {"bandwidth_bps": 2e7, "latency_s": 0.01}  # files written by old versions read it
    calibrated = LinkProfile(2e7, 0.01, message_s=3e-4, broker_s=1e-4, host_s_per_byte=1e-9)
    assert LinkProfile.from_dict(calibrated.to_dict()) == calibrated
    assert calibrated.transfer_time_s(1000) == pytest.approx(8 * 1000 / 2e7 + 0.01 + 3e-4 + 1e-4 + 1e-6)
    with pytest.raises(Exception, match="message_s"):
        LinkProfile.from_dict({"bandwidth_bps": 2e7, "latency_s": 0.01, "message_s": -1})


def test_message_costs_and_the_clients_hops_are_in_the_objective_and_the_optimum_stays_exact(tmp_path) -> None:
    """Per-message costs tip a split that the wire alone favours; the client's hops are a constant that
    every solver and baseline sees through the one objective, and the ILP still equals brute force."""
    from partitioner.plan.make_plan import plan_cost_graph
    from partitioner.solve.baselines import brute_force
    from partitioner.solve.ilp_textbook import solve_textbook_latency
    from partitioner.solve.optimal import solve

    data = fan_out_graph()
    data["links"] = [{"from": "cloud", "to": "edge", "bandwidth_bps": 8e9, "latency_s": 0.0}]
    wire_only = to_arrays(CostGraph.from_dict(data))
    assert solve(wire_only, "latency").placement[1:].tolist() == [1, 1, 1]  # b, c, d on the faster cloud
    data["links"][0]["message_s"] = 0.05
    data["client_link"] = {"bandwidth_bps": 1e9, "latency_s": 0.0, "message_s": 0.002}
    graph = CostGraph.from_dict(data)
    graph.save(tmp_path / "g.json")
    assert CostGraph.load(tmp_path / "g.json").to_dict() == graph.to_dict()
    arrays = to_arrays(graph)
    assert arrays.fixed_s == pytest.approx(2 * 0.002)
    all_edge = np.zeros(arrays.n_nodes, dtype=np.int64)
    assert latency_s(arrays, all_edge) == pytest.approx(4 * 0.01 + 0.004)
    solution = solve(arrays, "latency")
    placement, best_s = brute_force(arrays, "latency")
    assert solution.objective_s == pytest.approx(best_s) == pytest.approx(latency_s(arrays, placement))
    assert solve_textbook_latency(arrays).objective_s == pytest.approx(best_s)
    assert solution.placement.tolist() == all_edge.tolist()  # 50 ms a message outweighs the 36 ms the cloud saves
    plan = plan_cost_graph(graph, "latency")
    assert plan.predicted_s == pytest.approx(best_s)
    assert sum(plan.breakdown["compute_s"].values()) + sum(plan.breakdown["transfer_s"].values()) == \
        pytest.approx(plan.predicted_s)


def test_where_the_broker_sits_is_priced_two_legs_a_message_and_the_clients_hops_there_and_back() -> None:
    """device -> broker -> device is two transfers: with the broker in the cloud, a message edge -> cloud
    crosses the link once (as without a broker), while the client on the edge reaching the edge's agent
    crosses it twice each way; with the broker on the edge, the client's hops stay off the link."""
    from partitioner.solve.baselines import brute_force
    from partitioner.solve.optimal import solve

    data = fan_out_graph()
    data["links"] = [{"from": "edge", "to": "cloud", "bandwidth_bps": 8e6, "latency_s": 0.001, "message_s": 0.002}]
    data["client_link"] = {"bandwidth_bps": 8e9, "latency_s": 0.0, "message_s": 0.0005}
    data["tensors"]["in"]["bytes"], data["tensors"]["ob"]["bytes"] = 4000, 40
    direct = to_arrays(CostGraph.from_dict(data))
    in_cloud = to_arrays(CostGraph.from_dict({**data, "broker": "cloud"}))
    at_edge = to_arrays(CostGraph.from_dict({**data, "broker": "edge"}))
    input_bytes = sum(t["bytes"] for t in data["tensors"].values() if t.get("producer") is None)
    output_bytes = sum(t["bytes"] for t in data["tensors"].values() if t.get("output"))
    wire = lambda n: 8 * n / 8e6 + 0.001  # noqa: E731
    own = lambda n: n / 1e9 + 0.0005  # noqa: E731
    assert direct.fixed_s == pytest.approx(own(input_bytes) + own(output_bytes))
    assert at_edge.fixed_s == pytest.approx(direct.fixed_s)
    assert in_cloud.fixed_s == pytest.approx(direct.fixed_s + 2 * wire(input_bytes) + 2 * wire(output_bytes))
    # one edge-cloud message: one crossing wherever the broker is (two devices), plus the message cost
    assert np.allclose(in_cloud.transfer_s, direct.transfer_s) and np.allclose(at_edge.transfer_s, direct.transfer_s)
    all_edge = np.zeros(direct.n_nodes, dtype=np.int64)
    assert latency_s(in_cloud, all_edge) - latency_s(direct, all_edge) == pytest.approx(
        2 * wire(input_bytes) + 2 * wire(output_bytes))
    for arrays in (direct, in_cloud, at_edge):
        placement, best_s = brute_force(arrays, "latency")
        assert solve(arrays, "latency").objective_s == pytest.approx(best_s)
    with pytest.raises(PartitionerError, match="broker"):
        CostGraph.from_dict({**data, "broker": "moon"})
    graph = CostGraph.from_dict({**data, "broker": "cloud"})
    assert CostGraph.from_dict(graph.to_dict()).broker == "cloud"


def test_with_a_third_device_a_message_between_two_others_pays_both_legs_through_the_brokers_host() -> None:
    from devices.profiles import LinkProfile
    from partitioner.costs.cost_graph import CostNode, CostTensor
    from partitioner.costs.scenario import Scenario

    links = {("a", "b"): LinkProfile(8e6, 0.0, message_s=0.001), ("a", "hub"): LinkProfile(4e6, 0.002),
             ("b", "hub"): LinkProfile(2e6, 0.003)}
    nodes = {"v0": CostNode({"a": 0.0, "b": 0.0, "hub": 0.0}, pin="a"), "v1": CostNode({"a": 0.0, "b": 0.0, "hub": 0.0}, pin="b")}
    tensors = {"x": CostTensor(1000, None, ["v0"]), "t0": CostTensor(1000, "v0", ["v1"]), "t1": CostTensor(10, "v1", [], output=True)}
    graph = Scenario({k: {} for k in ("a", "b", "hub")}, links, "a", "b", broker="hub").cost_graph(nodes, tensors)
    arrays = to_arrays(graph)
    a, b = arrays.device_names.index("a"), arrays.device_names.index("b")
    t0 = arrays.tensor_names.index("t0")
    assert arrays.transfer_s[t0, a, b] == pytest.approx((8000 / 4e6 + 0.002) + (8000 / 2e6 + 0.003) + 0.001)


def test_a_links_token_bucket_lets_what_it_holds_through_at_once_and_each_message_carries_its_overhead() -> None:
    from devices.profiles import LinkProfile

    shaped = LinkProfile(8e6, 0.0, burst_bytes=3000, overhead_bytes=200)
    assert shaped.serialisation_s(1000) == pytest.approx(8 * 1200 / 8e6)  # bucket empty: every byte, headers too
    assert shaped.serialisation_s(1000, math.inf) == 0.0 and shaped.serialisation_s(3800, math.inf) == pytest.approx(8e-3 / 8)
    assert shaped.serialisation_s(3800, 1000) == pytest.approx(8 * 3000 / 8e6)  # half full: what it holds
    assert np.allclose(shaped.serialisation_s(np.array([0.0, 2800.0, 12800.0]), math.inf), [0.0, 0.0, 0.01])
    assert LinkProfile.from_dict(shaped.to_dict()) == shaped
    assert "burst_bytes" not in LinkProfile(8e6, 0.0).to_dict()  # old readers see the link as before


def test_the_request_finds_the_bucket_full_and_a_later_message_finds_what_refilled_behind_it() -> None:
    """bench/tbf_bucket.py: a message after idle passes its bucket at once. The broker in the cloud: the
    client's request is the first message each way (full bucket both legs), the answer follows it (empty),
    and a device-to-device message finds what refilled while the request came down. The broker on the
    edge (or none): the client's hops stay off the link and each device message is the first its way."""
    from devices.profiles import LinkProfile

    data = fan_out_graph()
    data["links"] = [LinkProfile(8e6, 0.0, burst_bytes=3000, overhead_bytes=200).to_dict() | {"from": "edge", "to": "cloud"}]
    data["tensors"]["in"]["bytes"], data["tensors"]["ob"]["bytes"] = 4000, 40
    input_bytes = sum(t["bytes"] for t in data["tensors"].values() if t.get("producer") is None)
    output_bytes = sum(t["bytes"] for t in data["tensors"].values() if t.get("output"))
    wire = lambda n, held=0.0: 8 * max(0.0, n + 200 - held) / 8e6  # noqa: E731
    in_cloud = CostGraph.from_dict({**data, "broker": "cloud"})
    assert sum(client_hops_s(in_cloud)) == pytest.approx(2 * wire(input_bytes, 3000) + 2 * wire(output_bytes))
    refilled = input_bytes + 200 - 3000
    assert in_cloud.transfer_s("edge", "cloud", 5000) == pytest.approx(wire(5000, refilled))
    for broker in ("edge", None):
        graph = CostGraph.from_dict({**data, "broker": broker})
        assert sum(client_hops_s(graph)) == 0.0
        assert graph.transfer_s("edge", "cloud", 5000) == pytest.approx(wire(5000, 3000))
        assert graph.transfer_s("cloud", "edge", 2000) == 0.0
