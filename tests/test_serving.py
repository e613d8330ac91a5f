"""Split inference over real MQTT sockets, against the embedded broker and Mosquitto.

Agents run as in-process threads here for speed (each has its own MQTT connection, so every message
crosses the broker); tests/test_serving_processes.py runs them as separate processes.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
from serving_helpers import DEVICES, bouncing_placement, node_ids

from devices.sessions import make_session
from edgecloud.cli.demo_steps import model_inputs
from edgecloud.errors import EdgecloudError
from edgecloud.serving.agent import AgentOptions, DeviceAgent
from edgecloud.serving.client import InferenceClient
from edgecloud.transport.mqtt import MqttTransport
from edgecloud.transport.topics import device_topic, sender_topic
from edgecloud.transport.wire import Message, WireLimits, encode
from devices.profiles import LinkProfile
from partitioner.models.zoo import MODEL_NAMES
from partitioner.split.manifest import SplitManifest
from partitioner.split.onnx_split import split_model

def model_input(manifest: SplitManifest, seed: int) -> np.ndarray:
    """The input of a one-input model."""
    (x,) = model_inputs(manifest, seed).values()
    return x


class Reference:
    """The unsplit model in onnxruntime: what every answer is checked against."""

    def __init__(self, model_path: Path) -> None:
        self.session = make_session(str(model_path))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.session.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="session")
def bouncing_splits(bundled_models, tmp_path_factory: pytest.TempPathFactory) -> dict[str, SplitManifest]:
    """Every bundled model split edge/cloud/edge/cloud (4 runs), made once per session."""
    splits = {}
    for name in MODEL_NAMES:
        path = bundled_models[name]
        splits[name] = split_model(path, bouncing_placement(node_ids(path), 4), "edge", "edge",
                                   tmp_path_factory.mktemp(f"split-{name}"), devices=DEVICES)
    return splits


@pytest.fixture(scope="session")
def references(bundled_models) -> dict[str, Reference]:
    return {name: Reference(bundled_models[name]) for name in MODEL_NAMES}


Deploy = Callable[..., tuple[dict[str, DeviceAgent], InferenceClient]]


@pytest.fixture()
def deploy(broker) -> Iterator[Deploy]:
    """Start one agent per device of a manifest and a connected client, under a fresh deployment id."""
    with ExitStack() as stack:
        def start(manifest: SplitManifest, limits: WireLimits | None = None,
                  **options: object) -> tuple[dict[str, DeviceAgent], InferenceClient]:
            deployment = f"t{uuid.uuid4().hex[:8]}"
            agent_options = AgentOptions(deployment=deployment, **options)  # type: ignore[arg-type]
            extra = {} if limits is None else {"limits": limits}
            agents = {device: stack.enter_context(DeviceAgent(manifest, device, broker.url, agent_options, **extra))
                      for device in manifest.devices}
            client = stack.enter_context(InferenceClient(manifest, broker.url, deployment=deployment))
            return agents, client

        yield start


def test_split_inference_equals_the_unsplit_model_on_every_bundled_model(bouncing_splits, references, deploy) -> None:
    for name, manifest in bouncing_splits.items():
        agents, client = deploy(manifest)
        x = model_input(manifest, seed=1)
        result = client.infer(x, deadline_s=10.0)
        assert not result.fell_back, name
        np.testing.assert_allclose(result.outputs["output"], references[name](x), rtol=1e-5, atol=1e-5, err_msg=name)
        ran = [event.stage for event in result.timings.stages]
        assert ran == [stage.index for stage in manifest.stages], name
        assert agents["cloud"].stats["stages_run"] == len(manifest.stages_of("cloud"))


def test_three_devices_with_the_sink_away_from_the_source(bundled_models, references, deploy,
                                                          tmp_path: Path) -> None:
    """A random 3-device DAG placement; the cloud answers and acknowledges to the edge (source)."""
    path = bundled_models["inception"]
    rng = random.Random(5)
    placement = {node: rng.choice(("edge", "fog", "cloud")) for node in node_ids(path)}
    manifest = split_model(path, placement, "edge", "cloud", tmp_path, devices=("edge", "fog", "cloud"))
    agents, client = deploy(manifest)
    for seed in range(3):
        x = model_input(manifest, seed)
        result = client.infer(x, deadline_s=10.0)
        assert result.answered_by == "cloud" and not result.fell_back
        np.testing.assert_allclose(result.outputs["output"], references["inception"](x), rtol=1e-5, atol=1e-5)
    deadline = time.monotonic() + 5
    while agents["edge"]._pending and time.monotonic() < deadline:  # the acks arrive asynchronously
        time.sleep(0.02)
    assert not agents["edge"]._pending and agents["edge"].stats["fell_back"] == 0


def test_hundred_concurrent_requests_are_answered_and_matched(bouncing_splits, references, deploy) -> None:
    manifest = bouncing_splits["chain"]
    agents, client = deploy(manifest)
    inputs = [model_input(manifest, seed) for seed in range(100)]
    futures = [client.submit(x, deadline_s=30.0) for x in inputs]
    results = [future.result(timeout=40.0) for future in futures]
    for x, result in zip(inputs, results):
        assert not result.fell_back
        np.testing.assert_allclose(result.outputs["output"], references["chain"](x), rtol=1e-5, atol=1e-5)
    assert agents["edge"].stats["answered"] == 100


def test_stopped_cloud_agent_makes_the_edge_fall_back_within_the_deadline(bouncing_splits, references,
                                                                          deploy, broker) -> None:
    manifest = bouncing_splits["resnet18"]
    agents, client = deploy(manifest, local_after_fallback_s=1.0)
    x = model_input(manifest, seed=2)
    expected = references["resnet18"](x)
    assert not client.infer(x, deadline_s=10.0).fell_back
    agents["cloud"].stop()
    deadline_s = 1.0
    # Two misses in a row (misses_before_local) are the evidence that the cloud is gone...
    for _ in range(agents["edge"].options.misses_before_local):
        started_s = time.monotonic()
        result = client.infer(x, deadline_s=deadline_s)
        assert time.monotonic() - started_s < deadline_s
        assert result.fell_back and result.answered_by == "edge"
        np.testing.assert_allclose(result.outputs["output"], expected, rtol=1e-5, atol=1e-5)
        assert {event.device for event in result.timings.stages} == {"edge"}

    # ...so within the next second the edge serves at once instead of waiting for the dead cloud again...
    started_s = time.monotonic()
    result = client.infer(x, deadline_s=deadline_s)
    assert result.fell_back and time.monotonic() - started_s < deadline_s / 2
    np.testing.assert_allclose(result.outputs["output"], expected, rtol=1e-5, atol=1e-5)
    # ...and once that window has passed, a request probes the cloud, which is back by then.
    with DeviceAgent(manifest, "cloud", broker.url, agents["edge"].options):
        time.sleep(1.0)
        result = client.infer(x, deadline_s=10.0)
        assert not result.fell_back and "cloud" in {event.device for event in result.timings.stages}
        np.testing.assert_allclose(result.outputs["output"], expected, rtol=1e-5, atol=1e-5)


def test_bad_messages_are_rejected_with_a_reason_and_the_agent_keeps_serving(
        bouncing_splits, references, deploy, broker, caplog: pytest.LogCaptureFixture) -> None:
    manifest = bouncing_splits["mlp"]
    limits = WireLimits(max_message_bytes=2**20)
    agents, client = deploy(manifest, limits=limits)
    deployment = agents["edge"].options.deployment
    x = model_input(manifest, seed=3)
    valid = encode(Message(kind="activation", request_id="r-bad", sender="cloud",
                           tensors={"nonexistent": np.ones((1, 4), np.float32)}))
    bad_payloads = {
        "garbage": b"this is not an edgecloud message",
        "truncated": valid[:-3],
        "oversized": valid + bytes(2 * 2**20),
        "unknown tensor": valid,
        "wrong dtype": encode(Message(kind="request", request_id="r-dtype", sender="intruder",
                                      tensors={"input": x.astype(np.float64)})),
        # The client refuses a wrong input before sending; a raw publisher can still send one.
        "wrong shape": encode(Message(kind="request", request_id="r-shape", sender="intruder",
                                      tensors={"input": x[:, :10]})),
    }
    # This broker has no ACL, so the intruder can use any topic; the "unknown tensor" message comes on the
    # cloud's topic (it names the cloud as sender), every other one on the intruder's.
    senders = {name: "cloud" if name == "unknown tensor" else "intruder" for name in bad_payloads}
    bad_payloads["sender is not the topic's"] = valid
    senders["sender is not the topic's"] = "intruder"
    bad_payloads["reply_to elsewhere"] = encode(Message(kind="request", request_id="r-elsewhere", sender="intruder",
                                                        tensors={"input": x}, reply_to=device_topic("other", "victim")))
    senders["reply_to elsewhere"] = "intruder"
    with caplog.at_level(logging.WARNING), MqttTransport(broker.url, client_id=f"{deployment}-intruder") as intruder:
        for name, payload in bad_payloads.items():
            intruder.publish(sender_topic(deployment, "edge", senders[name]), payload)
        with pytest.raises(EdgecloudError, match="float64"):
            client.infer(x.astype(np.float64), deadline_s=5.0)
        result = client.infer(x, deadline_s=5.0)
        # The intruder's requests travel on another connection: wait for the agent to have seen them
        # (the client's own bad request no longer gives that sync: it is refused before sending).
        deadline = time.monotonic() + 5.0
        while agents["edge"].stats["rejected"] < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
    np.testing.assert_allclose(result.outputs["output"], references["mlp"](x), rtol=1e-5, atol=1e-5)
    log = caplog.text
    assert "magic" in log  # garbage
    assert "past the end" in log or "accounts for" in log  # truncated
    # oversized: refused by the agent's client, or over MQTT 5 never sent to it (Maximum Packet Size)
    assert "more than the limit" in log or type(broker).__name__ == "MosquittoBroker"
    assert "needs no tensor named 'nonexistent'" in log
    assert "input 'input' is float64" in log
    assert "header names sender 'cloud' but it came on" in log
    assert "is outside deployment" in log
    assert agents["edge"].stats["rejected"] >= 5


def test_source_device_without_nodes_forwards_and_answers(bundled_models, references, deploy, tmp_path: Path) -> None:
    path = bundled_models["mlp"]
    manifest = split_model(path, dict.fromkeys(node_ids(path), "cloud"), "edge", "edge", tmp_path, devices=DEVICES)
    agents, client = deploy(manifest)
    x = model_input(manifest, seed=4)
    result = client.infer(x, deadline_s=10.0)
    assert result.answered_by == "edge" and not result.fell_back
    assert [(event.sender, event.device) for event in result.timings.transfers][1:] == [("edge", "cloud"),
                                                                                        ("cloud", "edge"),
                                                                                        ("edge", "client")]
    np.testing.assert_allclose(result.outputs["output"], references["mlp"](x), rtol=1e-5, atol=1e-5)


def test_pending_table_is_bounded_and_overflow_is_refused_not_queued(bouncing_splits, references, deploy) -> None:
    manifest = bouncing_splits["mlp"]
    slow_link = {"cloud": LinkProfile(bandwidth_bps=1e9, latency_s=0.05)}  # requests stay pending for 100+ ms
    agents, client = deploy(manifest, max_pending=2, emulated_links=slow_link)
    inputs = [model_input(manifest, seed) for seed in range(30)]
    futures = [client.submit(x, deadline_s=10.0) for x in inputs]
    answered = refused = 0
    for x, future in zip(inputs, futures):
        try:
            result = future.result(timeout=15.0)
        except EdgecloudError as error:
            assert "holds 2 requests already" in str(error)
            refused += 1
        else:
            np.testing.assert_allclose(result.outputs["output"], references["mlp"](x), rtol=1e-5, atol=1e-5)
            answered += 1
    assert answered >= 2 and refused > 0 and answered + refused == 30
    assert agents["edge"].stats["requests"] == answered
    assert not client.infer(inputs[0], deadline_s=10.0).fell_back  # and it keeps serving
