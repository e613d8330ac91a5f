"""What each hop does beyond moving bytes (issue 13, item 3): the review's leftovers, over real brokers.

Timings are not asserted here (bench/agent_hop.py measures them); these tests pin the behaviour the
cuts must keep: the header's absolute deadline is gone but an older sender's is still honoured, a
broker's refusals are counted and rate-limited, the client's timeouts run on one thread.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid

import numpy as np
import pytest
from serving_helpers import node_ids

from edgecloud.errors import TransportError
from edgecloud.serving.agent import AgentOptions, DeviceAgent
from edgecloud.serving.client import InferenceClient
from edgecloud.serving.expiry import ExpiryTimer
from edgecloud.serving.log_limit import RateLimitedLog
from edgecloud.transport.mqtt import MqttTransport
from edgecloud.transport.topics import device_topic, inbox_filter, sender_topic
from edgecloud.transport.wire import Message
from partitioner.split.manifest import SplitManifest
from partitioner.split.onnx_split import split_model


@pytest.fixture(scope="module")
def cloud_split(bundled_models, tmp_path_factory: pytest.TempPathFactory) -> SplitManifest:
    """The mlp with every node on the cloud: the edge (source and sink) only forwards."""
    path = bundled_models["mlp"]
    return split_model(path, dict.fromkeys(node_ids(path), "cloud"), "edge", "edge",
                       tmp_path_factory.mktemp("cloud-split"), devices=("edge", "cloud"))


def mlp_input(manifest: SplitManifest) -> np.ndarray:
    (spec,) = manifest.graph_inputs
    return np.random.default_rng(0).standard_normal([1 if not isinstance(d, int) else d for d in spec.shape],
                                                    dtype=np.float32)


def test_activations_carry_a_budget_and_no_absolute_deadline(broker, cloud_split) -> None:
    deployment = f"t{uuid.uuid4().hex[:8]}"
    seen: queue.Queue[Message] = queue.Queue()
    with MqttTransport(broker.url, f"{deployment}-cloud") as cloud:
        cloud.subscribe_messages(inbox_filter(deployment, "cloud"), lambda message, _: seen.put(message))
        with DeviceAgent(cloud_split, "edge", broker.url, AgentOptions(deployment=deployment, fallback=False)), \
                InferenceClient(cloud_split, broker.url, deployment=deployment) as client:
            client.submit(mlp_input(cloud_split), deadline_s=5.0)
            forwarded = seen.get(timeout=10.0)
    assert forwarded.kind == "activation"
    assert forwarded.deadline is None
    assert 0 < forwarded.meta["budget_s"] <= 5.0


def test_an_older_senders_header_deadline_is_still_honoured(broker, cloud_split) -> None:
    """Wire compatibility: a request with only the header's absolute deadline (no budget) gets that
    deadline, so one already past is answered with an error, not served."""
    deployment = f"t{uuid.uuid4().hex[:8]}"
    replies: queue.Queue[Message] = queue.Queue()
    with DeviceAgent(cloud_split, "edge", broker.url, AgentOptions(deployment=deployment, fallback=False)), \
            MqttTransport(broker.url, f"{deployment}-old") as old:
        old.subscribe_messages(f"{device_topic(deployment, 'old')}/+", lambda message, _: replies.put(message))
        (spec,) = cloud_split.graph_inputs
        old.publish_message(sender_topic(deployment, "edge", "old"), Message(
            "request", "r-old", "old", {spec.name: mlp_input(cloud_split)}, reply_to=device_topic(deployment, "old"),
            deadline=time.time() - 1.0))
        reply = replies.get(timeout=10.0)
    assert reply.kind == "error" and "deadline passed" in reply.meta["error"]


def test_broker_refusals_are_counted_and_their_log_is_rate_limited(broker_factory, cloud_split, caplog) -> None:
    """The ACL lets the edge answer the client but not write to the cloud: every forward is refused
    (MQTT 5 PUBACK), the edge falls back, and the refusals are logged at most a burst per period."""
    deployment = "guarded"
    acl = ("user edge\ntopic read edgecloud/guarded/edge/in/+\ntopic write edgecloud/guarded/app/in/edge\n\n"
           "user app\ntopic read edgecloud/guarded/app/in/+\ntopic write edgecloud/guarded/+/in/app\n")
    guarded = broker_factory("mosquitto", passwords={"edge": "edge-pw", "app": "app-pw"}, acl=acl)
    requests = 30
    with caplog.at_level(logging.WARNING):
        with DeviceAgent(cloud_split, "edge", f"mqtt://edge:edge-pw@{guarded.host}:{guarded.port}",
                         AgentOptions(deployment=deployment, fallback_margin_s=0.05)) as edge, \
                InferenceClient(cloud_split, f"mqtt://app:app-pw@{guarded.host}:{guarded.port}",
                                deployment=deployment) as client:
            results = [client.submit(mlp_input(cloud_split), deadline_s=0.5) for _ in range(requests)]
            assert all(future.result(10.0).fell_back for future in results)
            deadline_s = time.monotonic() + 5.0
            while edge.stats["refused"] < requests and time.monotonic() < deadline_s:
                time.sleep(0.02)
            refused = edge.stats["refused"]
    assert refused == requests
    lines = [record for record in caplog.records if "refused" in record.getMessage()]
    assert len(lines) <= RateLimitedLog(logging.getLogger()).burst + 1


def test_client_timeouts_run_on_one_thread(broker, cloud_split) -> None:
    """Nobody serves this deployment: every request times out, and the client started one thread for
    all their timeouts, not one each."""
    deployment = f"t{uuid.uuid4().hex[:8]}"
    with InferenceClient(cloud_split, broker.url, deployment=deployment) as client:
        before = threading.active_count()
        futures = [client.submit(mlp_input(cloud_split), deadline_s=0.2) for _ in range(40)]
        during = threading.active_count()
        for future in futures:
            with pytest.raises(TransportError, match="no reply|did not even acknowledge"):
                future.result(5.0)
    assert during - before <= 1


def test_expiry_timer_runs_due_callbacks_in_order_and_skips_cancelled_ones() -> None:
    timer = ExpiryTimer()
    ran: list[int] = []
    done = threading.Event()
    try:
        handles = [timer.schedule(delay_s, lambda n=n: ran.append(n)) for n, delay_s in enumerate((0.06, 0.02, 0.04))]
        handles[2].cancel()
        timer.schedule(0.08, done.set)
        assert timer.pending() == 3
        assert done.wait(5.0)
        assert ran == [1, 0]
        assert timer.pending() == 0
        many = [timer.schedule(60.0, lambda: ran.append(-1)) for _ in range(200)]
        for handle in many:
            handle.cancel()
        timer.schedule(60.0, lambda: None)
        assert timer.pending() == 1
    finally:
        timer.close()


def test_a_request_handled_on_the_network_thread_still_falls_back_at_its_deadline(broker, cloud_split) -> None:
    """The edge only forwards here, so paho's thread handles the request itself; its fallback timer
    must still wake the idle executor in time (not at the next half-second sweep)."""
    deployment = f"t{uuid.uuid4().hex[:8]}"
    with DeviceAgent(cloud_split, "edge", broker.url, AgentOptions(deployment=deployment, fallback_margin_s=0.05,
                                                                   misses_before_local=100)) as edge, \
            InferenceClient(cloud_split, broker.url, deployment=deployment) as client:
        for pause_s in (0.13, 0.31, 0.07):  # not in step with the executor's half-second sweep
            time.sleep(pause_s)
            result = client.infer(mlp_input(cloud_split), deadline_s=0.3)
            assert result.fell_back
            assert result.timings.total_s < 0.28  # the fallback starts 50 ms before the deadline
        assert edge.stats["handled_inline"] == 3
