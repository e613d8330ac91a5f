"""`edgecloud fleet init` end to end: the folder it writes runs Mosquitto, agents and the client log in with
their own identities (passwords from files, never on a command line), and a forged identity is refused."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from serving_helpers import write_plan
from typer.testing import CliRunner

from edgecloud.cli.app import app
from edgecloud.errors import EdgecloudError, TransportError
from edgecloud.serving.client import InferenceClient
from edgecloud.serving.stage_runner import make_session
from edgecloud.transport.broker import free_tcp_port, wait_for_port
from edgecloud.transport.fleet import init_fleet, load_fleet
from edgecloud.transport.mqtt import MqttTransport
from edgecloud.transport.mqtt_url import PASSWORD_FILE_ENV

DEPLOYMENT = "factory"
START_TIMEOUT_S = 60.0


def start(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as sink:
        return subprocess.Popen([sys.executable, "-m", "edgecloud.cli.app", *command], stdout=sink,
                                stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


def stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5.0)
    return process.returncode


def test_fleet_init_writes_hashed_passwords_private_credentials_and_refuses_to_overwrite(tmp_path: Path) -> None:
    fleet = init_fleet(DEPLOYMENT, ["edge", "cloud"], ["app"], tmp_path / "fleet", tls=True)
    assert [identity.name for identity in fleet.identities] == ["edge", "cloud", "app"]
    assert load_fleet(tmp_path / "fleet") == fleet
    hashed = (fleet.directory / "passwords").read_text()
    for identity in fleet.identities:
        password = identity.password_file.read_text().strip()
        assert len(password) >= 32 and password not in hashed and f"{identity.name}:$" in hashed
        assert stat.S_IMODE(identity.password_file.stat().st_mode) == 0o600
        assert password not in identity.url and identity.url.startswith(f"mqtts://{identity.name}@")
    for secret in ("passwords", "server.key", "ca.key"):
        assert stat.S_IMODE((fleet.directory / secret).stat().st_mode) == 0o600
    assert "user app\ntopic read edgecloud/factory/app/in/+\ntopic write edgecloud/factory/+/in/app" in \
        (fleet.directory / "acl").read_text()
    with pytest.raises(EdgecloudError, match="already holds a fleet"):
        init_fleet(DEPLOYMENT, ["edge"], [], tmp_path / "fleet")
    for devices, clients in ((["edge", "edge"], []), (["edge"], ["bad name"]), ([], ["app"])):
        with pytest.raises(EdgecloudError):
            init_fleet(DEPLOYMENT, devices, clients, tmp_path / "other")


def test_lock_it_down_end_to_end(bundled_models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's "lock it down" steps, as a user runs them."""
    fleet_dir, port = tmp_path / "fleet", free_tcp_port()
    outcome = CliRunner().invoke(app, ["fleet", "init", DEPLOYMENT, "--device", "edge", "--device", "cloud",
                                       "--client", "app", "--tls", "--port", str(port), "-o", str(fleet_dir)])
    assert outcome.exit_code == 0, outcome.output
    fleet = load_fleet(fleet_dir)
    assert f"--broker '{fleet.identity('app').url}'" in outcome.output
    model_path = bundled_models["mlp"]
    plan_path = write_plan(model_path, tmp_path, runs=2)
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        processes["broker"] = start(["broker", "--mosquitto", "--config", str(fleet_dir)], tmp_path / "broker.log")
        wait_for_port(fleet.host, port, START_TIMEOUT_S, alive=lambda: processes["broker"].poll() is None)
        for device in ("edge", "cloud"):
            identity = fleet.identity(device)
            processes[device] = start(["agent", "--plan", str(plan_path), "--device", device, "--deployment", DEPLOYMENT,
                                       "--broker", identity.url, "--broker-password-file", str(identity.password_file),
                                       "--ready-file", str(tmp_path / f"{device}.ready")], tmp_path / f"{device}.log")
        deadline_s = time.monotonic() + START_TIMEOUT_S
        while not all((tmp_path / f"{device}.ready").exists() for device in ("edge", "cloud")):
            assert time.monotonic() < deadline_s and all(p.poll() is None for p in processes.values()), \
                (tmp_path / "edge.log").read_text() + (tmp_path / "cloud.log").read_text()
            time.sleep(0.1)
        for device in ("edge", "cloud"):  # the secret is not on any command line
            command_line = Path(f"/proc/{processes[device].pid}/cmdline").read_bytes()
            assert fleet.identity(device).password_file.read_text().strip().encode() not in command_line

        app_identity = fleet.identity("app")
        monkeypatch.setenv(PASSWORD_FILE_ENV, str(app_identity.password_file))
        x = np.random.default_rng(0).standard_normal((1, 784)).astype(np.float32)
        expected = make_session(str(model_path)).run(None, {"input": x})[0]
        with InferenceClient(plan_path, app_identity.url, deployment=DEPLOYMENT) as client:
            assert client.client_name == "app"
            result = client.infer(x, deadline_s=10.0)
        assert not result.fell_back and result.answered_by == "edge"
        np.testing.assert_allclose(result.outputs["output"], expected, rtol=1e-5, atol=1e-5)
        np.save(tmp_path / "x.npy", x)
        outcome = CliRunner().invoke(app, ["infer", "--plan", str(plan_path), "--input", str(tmp_path / "x.npy"),
                                           "-o", str(tmp_path / "y.npy"), "--deployment", DEPLOYMENT, "--deadline", "10s",
                                           "--broker", app_identity.url,
                                           "--broker-password-file", str(app_identity.password_file)])
        assert outcome.exit_code == 0, outcome.output
        np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-5, atol=1e-5)

        # forged identities: the app's login speaking as the edge, a guessed password, no login at all
        with InferenceClient(plan_path, app_identity.url, deployment=DEPLOYMENT, client_name="edge") as forged:
            with pytest.raises(TransportError, match="Not authorized"):
                forged.infer(x, deadline_s=5.0)
        monkeypatch.delenv(PASSWORD_FILE_ENV)
        ca = fleet.directory / "ca.crt"
        for url in (f"mqtts://edge:guessed@{fleet.host}:{port}?ca={ca}", f"mqtts://{fleet.host}:{port}?ca={ca}",
                    f"mqtt://edge@{fleet.host}:{port}"):
            with pytest.raises(TransportError, match="refused"):
                MqttTransport(url, "intruder").connect()
    finally:
        codes = {name: stop(process) for name, process in reversed(processes.items())}
    assert codes["edge"] == 0 and codes["cloud"] == 0, codes
    assert codes["broker"] == 0, (tmp_path / "broker.log").read_text()


def test_a_failed_password_hash_names_the_user_not_the_password(tmp_path: Path) -> None:
    from edgecloud.errors import TransportError
    from edgecloud.transport.broker import hash_passwords

    with pytest.raises(TransportError) as caught:
        hash_passwords(tmp_path, {"edge": "p4ss-not-shown"})  # a folder is no password file
    assert "'edge'" in str(caught.value) and "p4ss-not-shown" not in str(caught.value)
