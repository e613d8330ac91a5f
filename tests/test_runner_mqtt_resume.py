"""The MQTT parameter server killed and resumed, as a multi-host deployment would see it: Mosquitto and
three `edgecloud train-worker` processes keep running, the `edgecloud train-server` process is SIGKILLed
after a checkpoint exists, a new one is started with `--resume`, the workers take its job, and the saved
model equals the uninterrupted run's."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from test_checkpoint_kill import _checkpoint_round, _finish, _model, kill_after_checkpoint

from edgecloud.training.local_fleet import WorkerProcesses
from edgecloud.transport.broker import MosquittoBroker
from edgecloud.transport.mqtt import SESSION_EXPIRY_S
from edgecloud.transport.topics import DEFAULT_DEPLOYMENT

OPTIONS = ["--dataset", "digits", "--model", "logistic", "--nodes", "3", "--code", "cyclic", "--redundancy", "3",
           "--adversaries", "1", "--attack", "gaussian", "--rounds", "150", "--lr", "0.05", "--batch-size", "16",
           "--seed", "4", "--round-deadline", "30s", "--json"]


def _server(url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "edgecloud.cli.app", "train-server", "--broker", url, *OPTIONS, *extra]


def test_a_killed_mqtt_server_resumes_with_the_same_workers_to_the_uninterrupted_model(tmp_path: Path) -> None:
    with MosquittoBroker() as broker:
        workers = WorkerProcesses(3, broker.url, DEFAULT_DEPLOYMENT, extra_args=["--keep-serving"]).start()
        try:
            uninterrupted = _finish(_server(broker.url, "--save", str(tmp_path / "whole.npz")))
            checkpoints = tmp_path / "checkpoints"
            kill_after_checkpoint(_server(broker.url, "--checkpoint-dir", str(checkpoints), "--checkpoint-every", "2"),
                                  checkpoints, 4)
            killed_at = _checkpoint_round(checkpoints)
            assert 4 <= killed_at < 150
            assert all(process.poll() is None for process in workers.processes.values())  # they outlive the PS
            # Mosquitto keeps a killed client's session SESSION_EXPIRY_S, and a server started within it is
            # refused as a second 'ps' (IdentityInUseError, by design): an operator's restart takes longer,
            # this test once did not (CI, 8 Dec).
            time.sleep(SESSION_EXPIRY_S + 1.0)
            resumed = _finish(_server(broker.url, "--resume", str(checkpoints), "--save", str(tmp_path / "resumed.npz")))
        finally:
            workers.stop()
    whole, again = _model(tmp_path / "whole.npz"), _model(tmp_path / "resumed.npz")
    for name in whole:
        assert np.allclose(whole[name], again[name], rtol=1e-12, atol=0), name
    assert resumed["rounds"] == uninterrupted["rounds"] == 150
    assert resumed["flagged_per_round"] == uninterrupted["flagged_per_round"]
    assert _checkpoint_round(checkpoints) == 150
