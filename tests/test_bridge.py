"""Bridged brokers (issue 13, item 5): the edge on its site's Mosquitto, the cloud on another, joined by a
Mosquitto bridge carrying `edgecloud/#` both ways; two real Mosquitto processes on loopback."""

from __future__ import annotations

import json
import queue
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from serving_helpers import bouncing_placement, node_ids

from devices.profiles import CLIENT_LINK_KEY, LinkProfile
from devices.sessions import make_session
from edgecloud.cli.app import run
from edgecloud.serving.agent import AgentOptions, DeviceAgent
from edgecloud.serving.client import InferenceClient
from edgecloud.transport.broker import MosquittoBroker, bridge_config
from edgecloud.transport.mqtt import MqttTransport
from edgecloud.transport.topics import device_topic
from partitioner.split.onnx_split import split_model

BRIDGE_UP_TIMEOUT_S = 20.0


def wait_for_bridge(edge: MosquittoBroker, cloud: MosquittoBroker) -> None:
    """Until a message published on each broker arrives on the other (the bridge connected and subscribed)."""
    probe = device_topic(f"probe{uuid.uuid4().hex[:6]}", "x")
    got: queue.Queue[tuple[str, bytes]] = queue.Queue()
    with MqttTransport(edge.url, "probe-edge") as at_edge, MqttTransport(cloud.url, "probe-cloud") as at_cloud:
        at_edge.subscribe(f"{probe}/+", lambda payload, topic: got.put(("edge", payload)))
        at_cloud.subscribe(f"{probe}/+", lambda payload, topic: got.put(("cloud", payload)))
        deadline_s = time.monotonic() + BRIDGE_UP_TIMEOUT_S
        arrived: set[str] = set()
        while arrived != {"edge", "cloud"}:
            if time.monotonic() > deadline_s:
                pytest.fail(f"the bridge did not carry messages both ways within {BRIDGE_UP_TIMEOUT_S:g} s "
                            f"(arrived at: {sorted(arrived)}); edge log: {edge.log_text()[-300:]}")
            at_edge.publish(f"{probe}/from-edge", b"e")
            at_cloud.publish(f"{probe}/from-cloud", b"c")
            try:
                while True:
                    where, payload = got.get(timeout=0.2)
                    if payload == (b"e" if where == "cloud" else b"c"):
                        arrived.add(where)
            except queue.Empty:
                pass


@pytest.fixture()
def bridged_brokers(broker_factory) -> tuple[MosquittoBroker, MosquittoBroker]:
    """The cloud's broker, and the edge site's broker bridged to it."""
    cloud = broker_factory("mosquitto")
    edge = broker_factory("mosquitto", extra_config=bridge_config("edge-to-cloud", cloud.host, cloud.port))
    wait_for_bridge(edge, cloud)
    return edge, cloud


def test_bridge_config_refuses_a_value_that_would_add_a_directive() -> None:
    from edgecloud.errors import TransportError

    with pytest.raises(TransportError, match="one word"):
        bridge_config("edge\naddress evil:1", "127.0.0.1", 1883)


def test_split_inference_across_two_bridged_brokers(bundled_models, bridged_brokers, tmp_path: Path) -> None:
    """Edge agent and client on the edge broker, cloud agent on the cloud broker: every activation
    crosses the bridge both ways and the answers equal the unsplit model's, without fallback."""
    edge_broker, cloud_broker = bridged_brokers
    path = bundled_models["mlp"]
    manifest = split_model(path, bouncing_placement(node_ids(path), 4), "edge", "edge", tmp_path / "split",
                           devices=("edge", "cloud"))
    reference = make_session(str(path))
    deployment = f"b{uuid.uuid4().hex[:8]}"
    options = AgentOptions(deployment=deployment)
    with DeviceAgent(manifest, "cloud", cloud_broker.url, options) as cloud, \
            DeviceAgent(manifest, "edge", edge_broker.url, options), \
            InferenceClient(manifest, edge_broker.url, deployment=deployment) as client:
        (spec,) = manifest.graph_inputs
        rng = np.random.default_rng(3)
        for _ in range(10):
            x = rng.standard_normal([1 if not isinstance(d, int) else d for d in spec.shape], dtype=np.float32)
            result = client.infer(x, deadline_s=10.0)
            assert not result.fell_back
            expected = reference.run(None, {reference.get_inputs()[0].name: x})[0]
            np.testing.assert_allclose(result.outputs["output"], expected, rtol=1e-5, atol=1e-5)
        assert cloud.stats["stages_run"] == 10 * len(manifest.stages_of("cloud"))


def test_calibration_prices_the_bridge_hop(bridged_brokers, tmp_path: Path) -> None:
    """Through the bridge a message passes two brokers and three TCP hops: the broker path measured with
    the bare client costs more than on the edge broker alone, and the link written says so."""
    edge_broker, cloud_broker = bridged_brokers
    out = tmp_path / "link.json"
    assert run(["calibrate", "--broker", edge_broker.url, "--peer-broker", cloud_broker.url, "--repeats", "60",
                "--bandwidth", "50Mbit", "--latency", "1ms", "-o", str(out)]) == 0
    data = json.loads(out.read_text())
    link, client = LinkProfile.from_dict(data), LinkProfile.from_dict(data[CLIENT_LINK_KEY])
    paths = data["calibration"]["paths"]
    assert set(paths) == {"ours/local", "floor/local", "ours/bridged", "floor/bridged"}
    assert paths["floor/bridged"]["fixed_s"] > paths["floor/local"]["fixed_s"]
    assert data["calibration"]["bridge_s"] == pytest.approx(paths["floor/bridged"]["fixed_s"]
                                                            - paths["floor/local"]["fixed_s"])
    assert link.broker_s > client.broker_s > 0
    assert (link.bandwidth_bps, link.latency_s) == (50e6, 1e-3)
    assert link.message_s > 0 and link.host_s_per_byte > 0
