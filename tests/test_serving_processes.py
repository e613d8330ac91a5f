"""Agents as separate `edgecloud agent` processes, started from a plan file, against both brokers:
answers equal the unsplit model, `edgecloud infer` works, a SIGKILLed cloud agent makes the edge fall
back within the deadline, a restarted one serves again, and SIGTERM stops an agent cleanly."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
from serving_helpers import write_plan
from typer.testing import CliRunner

from devices.sessions import make_session
from edgecloud.cli.app import app
from edgecloud.serving.agent_processes import AgentProcesses
from edgecloud.serving.client import InferenceClient
from partitioner.split.onnx_split import cached_split


def test_agent_processes_serve_fall_back_and_stop_cleanly(bundled_models, broker, tmp_path: Path) -> None:
    model_path = bundled_models["resnet18"]
    plan_path = write_plan(model_path, tmp_path)
    manifest = cached_split(plan_path)  # the agents find this split in the cache beside the plan
    assert cached_split(plan_path).directory == manifest.directory
    reference = make_session(str(model_path))
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    expected = reference.run(None, {"input": x})[0]
    deployment = f"p{uuid.uuid4().hex[:8]}"
    agents = AgentProcesses(plan_path, ["edge", "cloud"], broker.url, deployment, log_level="INFO")
    with agents:
        with InferenceClient(plan_path, broker.url, deployment=deployment) as client:
            result = client.infer(x, deadline_s=10.0)
            assert not result.fell_back
            np.testing.assert_allclose(result.outputs["output"], expected, rtol=1e-5, atol=1e-5)

            np.save(tmp_path / "x.npy", x)
            outcome = CliRunner().invoke(app, ["infer", "--plan", str(plan_path), "--input", str(tmp_path / "x.npy"),
                                               "--broker", broker.url, "--deployment", deployment,
                                               "-o", str(tmp_path / "y.npy")])  # the edge's default deadline
            assert outcome.exit_code == 0, outcome.output
            np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-5, atol=1e-5)

            agents.kill("cloud")
            deadline_s = 1.5
            started_s = time.monotonic()
            result = client.infer(x, deadline_s=deadline_s)
            assert time.monotonic() - started_s < deadline_s
            assert result.fell_back
            np.testing.assert_allclose(result.outputs["output"], expected, rtol=1e-5, atol=1e-5)

            agents.restart("cloud")  # one miss is no proof the cloud is gone: the next request goes there
            result = client.infer(x, deadline_s=10.0)
            assert not result.fell_back and "cloud" in {event.device for event in result.timings.stages}
            np.testing.assert_allclose(result.outputs["output"], expected, rtol=1e-5, atol=1e-5)
        edge_log = agents.log_text("edge")
        codes = agents.stop()
    assert codes["edge"] == 0, edge_log
    assert "fell back" in edge_log
    assert all(not Path(f"/proc/{pid}").exists() for pid in agents.pids)


def test_agent_with_an_unknown_device_fails_with_one_line(bundled_models, broker, tmp_path: Path) -> None:
    plan_path = write_plan(bundled_models["mlp"], tmp_path)
    outcome = CliRunner().invoke(app, ["agent", "--plan", str(plan_path), "--device", "moon", "--broker", broker.url])
    assert outcome.exit_code == 2
    assert "device 'moon' is not in the plan" in outcome.output


def test_a_password_in_the_broker_url_never_reaches_a_child_agents_command_line(
        bundled_models, broker_factory, tmp_path: Path) -> None:
    """/proc/<pid>/cmdline is readable by every local user: the agents get the password by environment."""
    secret = "s3cret-" + uuid.uuid4().hex[:6]
    broker = broker_factory("mosquitto", passwords={"edge": secret, "cloud": secret})
    plan_path = write_plan(bundled_models["mlp"], tmp_path)
    host_port = broker.url.split("://", 1)[1]
    urls = {device: f"mqtt://{device}:{secret}@{host_port}" for device in ("edge", "cloud")}
    with AgentProcesses(plan_path, ["edge", "cloud"], urls, f"p{uuid.uuid4().hex[:8]}") as agents:
        for process in agents.processes.values():
            command_line = Path(f"/proc/{process.pid}/cmdline").read_bytes().decode()
            assert secret not in command_line and "edge" in command_line
