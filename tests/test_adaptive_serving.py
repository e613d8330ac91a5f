"""Adaptive serving over real agents and real brokers (embedded and Mosquitto): a plan set is split once,
every agent loads every interval's stages, each request runs under the plan it was tagged with while the
source switches plans mid-stream, nothing is lost or answered twice, and every answer equals the whole
model's under every plan."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from devices.sessions import make_session
from edgecloud.cli.app import app
from edgecloud.serving.agent import IDLE_PROBE_S, AgentOptions, DeviceAgent
from edgecloud.serving.link_estimate import WINDOW
from edgecloud.serving.agent_processes import AgentProcesses
from edgecloud.serving.client import InferenceClient
from edgecloud.serving.plan_choice import load_served_plans
from edgecloud.transport.mqtt import MqttTransport
from edgecloud.transport.topics import sender_topic
from edgecloud.transport.wire import Message
from partitioner.split.onnx_split import cached_split_set


@pytest.fixture(scope="module")
def plan_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("adaptive") / "plans.json"
    made = CliRunner().invoke(app, ["plan", "resnet18", "--adaptive", "--bandwidth", "100kbit..10Gbit",
                                    "--latency", "1ms", "-o", str(path)])
    assert made.exit_code == 0, made.output
    return path


def reference_outputs(plan_set: Path, inputs: list[np.ndarray]) -> list[np.ndarray]:
    manifest = load_served_plans(plan_set).manifests[0]
    session = make_session(str(manifest.model_path()))
    return [session.run(None, {"input": x})[0] for x in inputs]


def test_the_split_set_is_made_once_and_reused(plan_set: Path) -> None:
    first = cached_split_set(plan_set)
    again = cached_split_set(plan_set)
    assert len(first) >= 2 and [m.directory for m in first] == [m.directory for m in again]
    served = load_served_plans(plan_set)
    assert len(set(served.ids)) == len(served.ids)  # every interval's stages differ, and so do their ids


def test_switching_plans_mid_stream_loses_nothing_and_answers_once(plan_set: Path, broker) -> None:
    served = load_served_plans(plan_set)
    deployment = f"a{uuid.uuid4().hex[:8]}"
    options = AgentOptions(deployment=deployment, switching=False, start_plan=0)
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((1, 3, 64, 64)).astype(np.float32) for _ in range(48)]
    expected = reference_outputs(plan_set, inputs)
    with DeviceAgent(served, "edge", broker.url, options) as edge, DeviceAgent(served, "cloud", broker.url, options) as cloud, \
            InferenceClient(plan_set, broker.url, deployment=deployment) as client:
        futures, pinned = [], {}
        for index, x in enumerate(inputs):
            if index % 6 == 0:  # a switch once the batch's first answer is back, the rest of it still in flight
                if futures:
                    futures[index - 6].result(timeout=90.0)
                pinned[index] = index // 6 % len(served.manifests)
                edge.use_plan(pinned[index])
            futures.append(client.submit(x, deadline_s=60.0))
        results = [future.result(timeout=90.0) for future in futures]
    for result, want in zip(results, expected):
        assert not result.fell_back
        assert result.plan is not None and result.plan_id == served.ids[result.plan]
        np.testing.assert_allclose(result.outputs["output"], want, rtol=1e-5, atol=1e-5)
    assert {result.plan for result in results} == set(range(len(served.manifests)))
    assert all(results[index].plan == plan for index, plan in pinned.items())  # sent after the switch
    answered = edge.stats["answered"] + cloud.stats["answered"]
    assert answered == len(inputs) and edge.stats["fell_back"] == 0 and edge.stats["rejected"] == 0
    assert cloud.stats["rejected"] == 0


def test_an_activation_under_a_plan_the_agent_does_not_hold_is_refused(plan_set: Path, broker) -> None:
    served = load_served_plans(plan_set)
    deployment = f"a{uuid.uuid4().hex[:8]}"
    with DeviceAgent(served, "cloud", broker.url, AgentOptions(deployment=deployment)) as cloud:
        plan, stage = next((index, stage) for index, manifest in enumerate(served.manifests)
                           for stage in manifest.stages if stage.device == "cloud")
        tensor = stage.inputs[0].tensor  # one the cloud takes from the edge under that plan
        with MqttTransport(broker.url, client_id=f"{deployment}-edge") as edge:
            for tag in ([plan, "0" * 16], None, [len(served.manifests), served.ids[plan]]):
                edge.publish_message(sender_topic(deployment, "cloud", "edge"), Message(
                    kind="activation", request_id=uuid.uuid4().hex, sender="edge",
                    tensors={tensor: np.zeros(1, np.float32)}, meta={"plan": tag})).result(timeout=10)
            deadline = time.monotonic() + 10
            while cloud.stats["rejected"] < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
    assert cloud.stats["rejected"] == 3 and cloud.stats["stages_run"] == 0


def test_agent_and_infer_commands_take_a_plan_set(plan_set: Path, broker, tmp_path: Path) -> None:
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)
    (expected,) = reference_outputs(plan_set, [x])
    deployment = f"p{uuid.uuid4().hex[:8]}"
    served = load_served_plans(plan_set)
    with AgentProcesses(plan_set, ["edge", "cloud"], broker.url, deployment):
        np.save(tmp_path / "x.npy", x)
        outcome = CliRunner().invoke(app, ["infer", "--plan", str(plan_set), "--input", str(tmp_path / "x.npy"),
                                           "--broker", broker.url, "--deployment", deployment,
                                           "-o", str(tmp_path / "y.npy")])
        assert outcome.exit_code == 0, outcome.output
        assert "under plan" in outcome.output and any(plan_id in outcome.output for plan_id in served.ids)
        np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-5, atol=1e-5)


def test_the_source_falls_back_under_the_plan_the_request_was_tagged_with(plan_set: Path, broker) -> None:
    served = load_served_plans(plan_set)
    deployment = f"a{uuid.uuid4().hex[:8]}"
    x = np.random.default_rng(2).standard_normal((1, 3, 64, 64)).astype(np.float32)
    (expected,) = reference_outputs(plan_set, [x])
    last = len(served.manifests) - 1  # the highest interval: its stages run in the cloud, which is not there
    options = AgentOptions(deployment=deployment, switching=False, start_plan=last)
    with DeviceAgent(served, "edge", broker.url, options), \
            InferenceClient(plan_set, broker.url, deployment=deployment) as client:
        result = client.infer(x, deadline_s=1.5)
    assert result.fell_back and result.plan == last and result.plan_id == served.ids[last]
    np.testing.assert_allclose(result.outputs["output"], expected, rtol=1e-5, atol=1e-5)


def test_pin_plan_beyond_the_set_is_refused_in_one_line(plan_set: Path) -> None:
    outcome = CliRunner().invoke(app, ["agent", "--plan", str(plan_set), "--device", "edge", "--pin-plan", "99"])
    assert outcome.exit_code == 2 and outcome.output.startswith("error: ") and "--pin-plan 99" in outcome.output


def test_a_probe_round_is_one_message_a_device_and_its_echo_samples_both_ways(plan_set: Path, broker) -> None:
    # each message costs the edge's CPU quota: a round used to be a tiny and a large probe (two sends,
    # two echoes); the echo alone is the tiny sample now
    served = load_served_plans(plan_set)
    options = AgentOptions(deployment=f"a{uuid.uuid4().hex[:8]}", probe_interval_s=3600.0, local_probe_interval_s=3600.0)
    with DeviceAgent(served, "edge", broker.url, options) as edge, DeviceAgent(served, "cloud", broker.url, options):
        sent: list[Message] = []
        send = edge._send
        edge._send = lambda device, message: (sent.append(message), send(device, message))[1]  # type: ignore[method-assign]
        with edge._state_lock:
            edge._last_probe_s = 0.0
            edge._maybe_probe(time.time())
        deadline = time.time() + 10.0
        while not edge.link._samples["down"] and time.time() < deadline:
            time.sleep(0.01)
    assert [message.meta.get("probe") for message in sent] == [True]
    up, down = list(edge.link._samples["up"]), list(edge.link._samples["down"])
    assert [sample.n_bytes for sample in down] == [0] and len(up) == 1 and up[0].n_bytes >= 16 * 2**10


def test_on_a_local_plan_the_source_probes_less_while_the_link_holds_and_quickly_after_a_step(plan_set: Path,
                                                                                              broker) -> None:
    # every probe costs the edge's CPU quota: at one probe each 0.1 s, adaptive took +2 ms of edge CPU a
    # request over the same all-edge plan pinned (bench/adaptive.py at 5 Mbit/s)
    served = load_served_plans(plan_set)
    local = next(index for index, manifest in enumerate(served.manifests) if len(manifest.stages) == 1)
    options = AgentOptions(deployment=f"a{uuid.uuid4().hex[:8]}", probe_interval_s=0.8, local_probe_interval_s=0.095,  # just under two looks
                           switching=True, start_plan=local)
    with DeviceAgent(served, "edge", broker.url, options) as edge:
        edge._send = lambda device, message: None  # type: ignore[method-assign]  # counted, not sent
        start_s = time.time()
        for index in range(WINDOW):  # a link that holds: an estimate (50 Mbit/s)
            sent_s = start_s - 1.0 + index * 0.01
            edge.link.add("up", (1 + index % 2) * 32_768, sent_s, sent_s + 0.001 + (1 + index % 2) * 0.0052)
        with edge._state_lock:
            edge._last_probe_s = start_s - 1.0
            before = edge.stats["probes"]
            for tick in range(40):  # 2 s, looked at every 50 ms
                edge._maybe_probe(start_s + tick * 0.05)
            steady = edge.stats["probes"] - before
            now_s = start_s + 2.0
            edge.link.add("up", 32_768, now_s, now_s + 0.001 + 0.0013)  # the link got 4x faster: a step
            assert edge.link.steps == 1
            before = edge.stats["probes"]
            for tick in range(40, 46):  # 0.3 s: quick probes again until the new rate is measured
                edge._maybe_probe(start_s + tick * 0.05)
            after_step = edge.stats["probes"] - before
    assert steady <= 6, steady  # 0.1, 0.2, 0.4, 0.8, 0.8 s apart (20 at a fixed 0.1 s)
    assert after_step >= 3, after_step


def test_the_timer_probes_only_a_source_idle_for_a_while(plan_set: Path, broker) -> None:
    # a probe from the executor's timer could land just before the next request, its echo during it
    served = load_served_plans(plan_set)
    options = AgentOptions(deployment=f"a{uuid.uuid4().hex[:8]}", probe_interval_s=0.5, local_probe_interval_s=0.1)
    with DeviceAgent(served, "edge", broker.url, options) as edge:
        edge._send = lambda device, message: None  # type: ignore[method-assign]  # counted, not sent
        with edge._state_lock:
            now_s = time.time()
            edge._maybe_probe(now_s - 2.0)  # a request ended 2 s ago: probed then
            before = edge.stats["probes"]
            edge._maybe_probe(now_s - IDLE_PROBE_S / 2)  # another ended since
            after_request = edge.stats["probes"] - before
            edge._maybe_probe(now_s, just_finished=False)  # the timer, IDLE_PROBE_S / 2 after it: too soon
            too_soon = edge.stats["probes"] - before - after_request
            edge._maybe_probe(now_s + IDLE_PROBE_S, just_finished=False)  # idle long enough
            idle = edge.stats["probes"] - before - after_request - too_soon
    assert (after_request, too_soon, idle) == (1, 0, 1)


def test_without_an_estimate_the_source_probes_quickly_each_size_twice_whatever_the_plan(plan_set: Path, broker) -> None:
    # right after a step on all-cloud: the size classes need two samples of one size, and at 0.5 s
    # between probes of alternating sizes the source served 8 requests under the old plan; but one size
    # alone never gives a pair of classes (see the next test)
    served = load_served_plans(plan_set)
    options = AgentOptions(deployment=f"a{uuid.uuid4().hex[:8]}", probe_interval_s=0.5, local_probe_interval_s=0.1,
                           switching=True, start_plan=len(served.manifests) - 1)  # the fastest link's plan
    with DeviceAgent(served, "edge", broker.url, options) as edge:
        assert not edge._views[edge.selector.current].local_only
        sizes: list[int] = []
        edge._send = lambda device, message: sizes.append(message.tensors["probe"].nbytes)  # type: ignore[method-assign]
        with edge._state_lock:
            now_s = time.time()
            assert edge.link.estimate(now_s) is None
            for tick in range(4):
                edge._maybe_probe(now_s + tick * 0.11)
    assert len(sizes) == 4 and sizes[0] == sizes[1] and sizes[2] == sizes[3] == 2 * sizes[0], sizes


def test_on_a_local_plan_the_probes_alone_rebuild_an_estimate_after_a_faster_step(plan_set: Path, broker) -> None:
    # bench/adaptive.py run G3: on all-edge nothing but probes crosses, and 5 -> 50 Mbit/s dropped
    # every large sample (a faster step); probes of one size then gave one class up and only 0-byte echoes
    # down, never a pair of classes: no estimate for the whole 50 Mbit/s segment
    served = load_served_plans(plan_set)
    local = next(index for index, manifest in enumerate(served.manifests) if len(manifest.stages) == 1)
    options = AgentOptions(deployment=f"a{uuid.uuid4().hex[:8]}", probe_interval_s=0.5, local_probe_interval_s=0.1,
                           switching=True, start_plan=local)
    rate_bps, latency_s = 5e6, 0.001
    with DeviceAgent(served, "edge", broker.url, options) as edge:
        clock = {"now": time.time()}

        def link(device: str, message: Message) -> None:  # the probe crosses the link, its echo comes back
            n_bytes = message.tensors["probe"].nbytes
            sent_s = clock["now"]
            edge.link.add("up", n_bytes, sent_s, sent_s + latency_s + 8 * n_bytes / rate_bps)
            edge.link.add("down", 0, sent_s + 0.05, sent_s + 0.05 + latency_s)

        edge._send = link  # type: ignore[method-assign]
        with edge._state_lock:
            for tick in range(12):  # 5 Mbit/s: an estimate from the probes alone
                clock["now"] += 0.11
                edge._maybe_probe(clock["now"])
            before = edge.link.estimate(clock["now"])
            assert before is not None and abs(before.bandwidth_bps / rate_bps - 1) < 0.05, before
            rate_bps = 50e6
            estimates = []
            for tick in range(12):  # 1.3 s at 50 Mbit/s
                clock["now"] += 0.11
                edge._maybe_probe(clock["now"])
                estimates.append(edge.link.estimate(clock["now"]))
    assert edge.link.steps >= 1
    assert estimates[-1] is not None and abs(estimates[-1].bandwidth_bps / rate_bps - 1) < 0.05, estimates
