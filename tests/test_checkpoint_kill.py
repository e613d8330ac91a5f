"""Kill the training server (a real `edgecloud train` process) with SIGKILL after a checkpoint exists,
then `--resume`: the final model equals the uninterrupted run's, for `--runner sim` and `--runner torch`
(where the killed process is rank 0, the PS, and its spawned workers must go too)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from test_cli_bad_inputs import assert_one_error_line, run_cli

from robust_training.checkpoint import MANIFEST

RUNS = {  # enough rounds that the kill lands mid-run; the checkpoint every 2 rounds
    "sim": ["--model", "fc", "--nodes", "5", "--code", "cyclic", "--redundancy", "3", "--adversaries", "1",
            "--attack", "gaussian", "--rounds", "60", "--tau", "2"],
    "torch": ["--model", "logistic", "--nodes", "3", "--code", "repetition", "--redundancy", "3",
              "--adversaries", "1", "--attack", "gaussian", "--rounds", "400"],
}
COMMON = ["train", "--dataset", "digits", "--lr", "0.05", "--batch-size", "16", "--seed", "2", "--json"]


def _command(runner: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "edgecloud.cli.app", *COMMON, *RUNS[runner], "--runner", runner, *extra]


def _finish(command: list[str]) -> dict:
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def _model(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as arrays:
        return {name: arrays[name] for name in arrays.files}


def _checkpoint_round(directory: Path) -> int:
    try:
        return int(json.loads((directory / MANIFEST).read_text())["round"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


def kill_after_checkpoint(command: list[str], checkpoints: Path, at_round: int) -> list[psutil.Process]:
    """Run `command` until its checkpoint reaches `at_round`, SIGKILL it mid-run; its children then."""
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 300
        while _checkpoint_round(checkpoints) < at_round and server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.poll() is None, server.stderr.read().decode()[-3000:]  # still training: killed mid-run
        children = psutil.Process(server.pid).children(recursive=True)
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=30)
    finally:
        server.kill()
        server.stderr.close()
    return children


@pytest.mark.parametrize("runner", RUNS)
def test_a_killed_server_resumes_to_the_uninterrupted_model(tmp_path: Path, runner: str) -> None:
    rounds = int(RUNS[runner][RUNS[runner].index("--rounds") + 1])
    uninterrupted = _finish(_command(runner, "--save", str(tmp_path / "whole.npz")))
    checkpoints = tmp_path / "checkpoints"
    workers = kill_after_checkpoint(_command(runner, "--checkpoint-dir", str(checkpoints), "--checkpoint-every", "2"),
                                    checkpoints, 2)
    killed_at = _checkpoint_round(checkpoints)
    assert 2 <= killed_at < rounds
    _, alive = psutil.wait_procs(workers, timeout=60)  # orphaned gloo workers see the PS's sockets close
    assert not alive, [p.pid for p in alive]

    resumed = _finish(_command(runner, "--resume", str(checkpoints), "--save", str(tmp_path / "resumed.npz")))
    whole, again = _model(tmp_path / "whole.npz"), _model(tmp_path / "resumed.npz")
    for name in whole:
        assert np.array_equal(whole[name], again[name]), name
    assert resumed["rounds"] == uninterrupted["rounds"] == rounds
    assert resumed["flagged_per_round"] == uninterrupted["flagged_per_round"]
    assert [r["adversaries"] for r in resumed["history"]] == [r["adversaries"] for r in uninterrupted["history"]]
    assert _checkpoint_round(checkpoints) == rounds  # the resumed run kept checkpointing into the directory


@pytest.mark.parametrize(("extra", "phrase"), [
    (["--checkpoint-every", "2"], "--checkpoint-every needs --checkpoint-dir"),
    (["--resume", "/nonexistent-checkpoints"], "no checkpoint to resume"),
    (["--resume", "/tmp/a", "--checkpoint-dir", "/tmp/b"], "keeps checkpointing into"),
    (["--checkpoint-dir", "/etc/hostname"], "is a file"),
])
def test_bad_checkpoint_options_are_one_line_errors(extra: list[str], phrase: str) -> None:
    assert_one_error_line(*run_cli([*COMMON, "--rounds", "2", "--nodes", "3", *extra]), phrase)


def test_resuming_with_other_options_names_the_difference(tmp_path: Path) -> None:
    args = [*COMMON, "--rounds", "2", "--nodes", "3"]
    code, _, stderr = run_cli([*args, "--checkpoint-dir", str(tmp_path), "--checkpoint-every", "1"])
    assert code == 0, stderr
    assert_one_error_line(*run_cli([*args, "--lr", "0.2", "--resume", str(tmp_path)]),
                          "config.lr: 0.05 there, 0.2 here")
