"""`edgecloud calibrate`: the per-message costs measured through a real Mosquitto, stored in the link
profile that `edgecloud plan --link edge-cloud=FILE` reads (issue 13, item 3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devices.profiles import CLIENT_LINK_KEY, LinkProfile
from edgecloud.cli.app import run

COST_GRAPH = {
    "format": "edgecloud.costgraph/1", "devices": {"edge": {}, "cloud": {}},
    "links": [{"from": "edge", "to": "cloud", "bandwidth_bps": 1e9, "latency_s": 0.0}],
    "source": "edge", "sink": "edge",
    "nodes": {"a": {"time_s": {"edge": 0.004, "cloud": 0.001}}, "b": {"time_s": {"edge": 0.004, "cloud": 0.001}}},
    "tensors": {"x": {"bytes": 4000, "producer": None, "consumers": ["a"]},
                "h": {"bytes": 4000, "producer": "a", "consumers": ["b"]},
                "y": {"bytes": 40, "producer": "b", "consumers": [], "output": True}},
}


def plan_json(args: list[str], capsys) -> dict:
    capsys.readouterr()
    assert run(["plan", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_calibrate_measures_the_broker_path_and_plan_prices_every_message(broker_factory, tmp_path: Path,
                                                                         capsys) -> None:
    mosquitto = broker_factory("mosquitto")
    link_file = tmp_path / "link.json"
    assert run(["calibrate", "--broker", mosquitto.url, "--repeats", "40", "--bandwidth", "1Gbit",
                "--latency", "0ms", "-o", str(link_file)]) == 0
    data = json.loads(link_file.read_text())
    link, client = LinkProfile.from_dict(data), LinkProfile.from_dict(data[CLIENT_LINK_KEY])
    assert set(data["calibration"]["paths"]) == {"ours/local", "floor/local"}
    assert data["calibration"]["bridge_s"] is None
    assert link.broker_s > 0 and link.message_s > 0 and link.host_s_per_byte > 0
    assert (link.message_s, link.broker_s) == (client.message_s, client.broker_s)  # one broker: the same path

    graph_file = tmp_path / "graph.json"
    graph_file.write_text(json.dumps(COST_GRAPH))
    wire_only = plan_json(["--cost-graph", str(graph_file)], capsys)
    priced = plan_json(["--cost-graph", str(graph_file), "--link", f"edge-cloud={link_file}"], capsys)
    per_message_s = link.message_s + link.broker_s
    assert wire_only["placement"] == {"a": "cloud", "b": "cloud"}
    # the client's request and answer now count, whatever the placement
    client_s = client.transfer_time_s(4000) + client.transfer_time_s(40)
    assert priced["breakdown"]["transfer_s"]["client->edge"] + priced["breakdown"]["transfer_s"]["edge->client"] == \
        pytest.approx(client_s)
    on_cloud_s = 0.002 + link.transfer_time_s(4000) + link.transfer_time_s(40) + client_s
    all_edge_s = 0.008 + client_s
    assert priced["predicted_s"] == pytest.approx(min(on_cloud_s, all_edge_s))
    assert priced["predicted_s"] >= wire_only["predicted_s"] + 2 * per_message_s


def test_calibrate_without_the_bare_client_puts_the_whole_cost_in_message_s(broker_factory, tmp_path: Path,
                                                                           caplog) -> None:
    """A broker with logins: the echo needs a login of its own, and the bare client cannot log in, so
    the broker's share is not split off."""
    mosquitto = broker_factory("mosquitto", passwords={"edge": "edge-pw", "cloud": "cloud-pw"})
    link_file = tmp_path / "link.json"
    url = f"mqtt://edge:edge-pw@{mosquitto.host}:{mosquitto.port}"
    assert run(["calibrate", "--broker", url, "--repeats", "20", "-o", str(link_file)]) == 2
    assert run(["calibrate", "--broker", url, "--echo-broker", f"mqtt://cloud:cloud-pw@{mosquitto.host}:{mosquitto.port}",
                "--repeats", "20", "-o", str(link_file)]) == 0
    data = json.loads(link_file.read_text())
    assert set(data["calibration"]["paths"]) == {"ours/local"}
    assert "pw" not in link_file.read_text()
    link = LinkProfile.from_dict(data)
    assert link.broker_s == 0 and link.message_s > 0
    assert "login or TLS" in caplog.text
