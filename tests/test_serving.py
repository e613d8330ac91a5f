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
import onnx
import pytest
from broker_fixtures import broker  # noqa: F401  (session fixture, parametrized over both brokers)

from edgecloud.agent import AgentOptions, DeviceAgent
from edgecloud.client import InferenceClient
from edgecloud.errors import EdgecloudError
from edgecloud.mqtt import MqttTransport
from edgecloud.stage_runner import make_session
from edgecloud.topics import device_topic
from edgecloud.wire import Message, WireLimits, encode
from partitioner.manifest import SplitManifest
from partitioner.onnx_names import name_nodes_uniquely
from partitioner.split import split_model
from partitioner.zoo import MODEL_NAMES

DEVICES = ("edge", "cloud")


def bouncing_placement(node_ids: list[str], runs: int) -> dict[str, str]:
    """edge, cloud, edge, cloud...: each device runs more than one stage of a request."""
    size = -(-len(node_ids) // runs)
    return {node: DEVICES[position // size % 2] for position, node in enumerate(node_ids)}


def model_input(manifest: SplitManifest, seed: int) -> np.ndarray:
    (spec,) = manifest.graph_inputs
    shape = [size if isinstance(size, int) else 1 for size in spec.shape]
    return np.random.default_rng(seed).standard_normal(shape).astype(spec.dtype)


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
        node_ids = name_nodes_uniquely(onnx.load(str(path)).graph)
        splits[name] = split_model(path, bouncing_placement(node_ids, 4), "edge", "edge",
                                   tmp_path_factory.mktemp(f"split-{name}"), devices=DEVICES)
    return splits


@pytest.fixture(scope="session")
def references(bundled_models) -> dict[str, Reference]:
    return {name: Reference(bundled_models[name]) for name in MODEL_NAMES}


Deploy = Callable[..., tuple[dict[str, DeviceAgent], InferenceClient]]


@pytest.fixture()
def deploy(broker) -> Iterator[Deploy]:  # noqa: F811
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
    node_ids = name_nodes_uniquely(onnx.load(str(path)).graph)
    rng = random.Random(5)
    placement = {node: rng.choice(("edge", "fog", "cloud")) for node in node_ids}
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
                                                                          deploy) -> None:
    manifest = bouncing_splits["resnet18"]
    agents, client = deploy(manifest)
    x = model_input(manifest, seed=2)
    assert not client.infer(x, deadline_s=10.0).fell_back
    agents["cloud"].stop()
    deadline_s = 1.0
    started_s = time.monotonic()
    result = client.infer(x, deadline_s=deadline_s)
    assert time.monotonic() - started_s < deadline_s
    assert result.fell_back and result.answered_by == "edge"
    np.testing.assert_allclose(result.outputs["output"], references["resnet18"](x), rtol=1e-5, atol=1e-5)
    assert {event.device for event in result.timings.stages} == {"edge"}


def test_bad_messages_are_rejected_with_a_reason_and_the_agent_keeps_serving(
        bouncing_splits, references, deploy, broker, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
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
    }
    with caplog.at_level(logging.WARNING), MqttTransport(broker.url, client_id=f"{deployment}-intruder") as intruder:
        for payload in bad_payloads.values():
            intruder.publish(device_topic(deployment, "edge"), payload)
        with pytest.raises(EdgecloudError, match="float64"):
            client.infer(x.astype(np.float64), deadline_s=5.0)
        result = client.infer(x, deadline_s=5.0)
    np.testing.assert_allclose(result.outputs["output"], references["mlp"](x), rtol=1e-5, atol=1e-5)
    log = caplog.text
    assert "magic" in log  # garbage
    assert "past the end" in log or "accounts for" in log  # truncated
    assert "more than the limit" in log  # oversized
    assert "needs no tensor named 'nonexistent'" in log
    assert "input 'input' is float64" in log
    assert agents["edge"].stats["rejected"] >= 3
