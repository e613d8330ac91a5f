"""The MQTT parameter server killed and resumed, as a multi-host deployment would see it: Mosquitto and
three `edgecloud train-worker` processes keep running, the `edgecloud train-server` process is SIGKILLed
after a checkpoint exists, a new one is started with `--resume`, the workers take its job, and the saved
model equals the uninterrupted run's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from edgecloud.training.local_fleet import WorkerProcesses
from edgecloud.transport.broker import MosquittoBroker
from edgecloud.transport.topics import DEFAULT_DEPLOYMENT
from robust_training.checkpoint import MANIFEST

OPTIONS = ["--dataset", "digits", "--model", "logistic", "--nodes", "3", "--code", "cyclic", "--redundancy", "3",
           "--adversaries", "1", "--attack", "gaussian", "--rounds", "150", "--lr", "0.05", "--batch-size", "16",
           "--seed", "4", "--round-deadline", "30s", "--json"]


def _server(url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "edgecloud.cli.app", "train-server", "--broker", url, *OPTIONS, *extra]


def _finish(command: list[str]) -> dict:
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def _checkpoint_round(directory: Path) -> int:
    try:
        return int(json.loads((directory / MANIFEST).read_text())["round"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


def _model(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as arrays:
        return {name: arrays[name] for name in arrays.files}


def test_a_killed_mqtt_server_resumes_with_the_same_workers_to_the_uninterrupted_model(tmp_path: Path) -> None:
    with MosquittoBroker() as broker:
        workers = WorkerProcesses(3, broker.url, DEFAULT_DEPLOYMENT, extra_args=["--keep-serving"]).start()
        try:
            uninterrupted = _finish(_server(broker.url, "--save", str(tmp_path / "whole.npz")))
            checkpoints = tmp_path / "checkpoints"
            server = subprocess.Popen(_server(broker.url, "--checkpoint-dir", str(checkpoints), "--checkpoint-every",
                                              "2"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                deadline = time.monotonic() + 300
                while _checkpoint_round(checkpoints) < 4 and server.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert server.poll() is None, server.stderr.read().decode()[-3000:]  # killed mid-run
                server.send_signal(signal.SIGKILL)
                server.wait(timeout=30)
            finally:
                server.kill()
                server.stderr.close()
            killed_at = _checkpoint_round(checkpoints)
            assert 4 <= killed_at < 150
            assert all(process.poll() is None for process in workers.processes.values())  # they outlive the PS
            resumed = _finish(_server(broker.url, "--resume", str(checkpoints), "--save", str(tmp_path / "resumed.npz")))
        finally:
            workers.stop()
    whole, again = _model(tmp_path / "whole.npz"), _model(tmp_path / "resumed.npz")
    for name in whole:
        assert np.allclose(whole[name], again[name], rtol=1e-12, atol=0), name
    assert resumed["rounds"] == uninterrupted["rounds"] == 150
    assert resumed["flagged_per_round"] == uninterrupted["flagged_per_round"]
    assert _checkpoint_round(checkpoints) == 150
