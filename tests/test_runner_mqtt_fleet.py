"""`edgecloud train --runner mqtt`: the local fleet starts a broker, the PS and P worker processes, prints
the simulator's summary and saves its model, and stops everything it started, Ctrl-C included.

Each run starts P worker processes that import torch (~20-30 s on the loaded 2-core machine), so the
cases are few; the Mosquitto and Ctrl-C ones are marked slow.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_cli_bad_inputs import assert_one_error_line, run_cli

ARGS = ["train", "--dataset", "digits", "--model", "logistic", "--nodes", "3", "--rounds", "3", "--batch-size", "16",
        "--seed", "3", "--code", "repetition", "--redundancy", "3", "--adversaries", "1", "--attack", "reverse",
        "--tau", "2", "--json"]


def _run(folder: Path, name: str, extra: list[str]) -> tuple[dict, dict[str, np.ndarray]]:
    path = folder / f"{name}.npz"
    code, stdout, stderr = run_cli([*ARGS, *extra, "--save", str(path)])
    assert code == 0, stderr[-3000:]
    with np.load(path, allow_pickle=False) as arrays:
        return json.loads(stdout), {key: arrays[key] for key in arrays.files}


def _assert_same_run(folder: Path, extra: list[str]) -> dict:
    sim_summary, sim_model = _run(folder, "sim", [])
    summary, model = _run(folder, "mqtt", ["--runner", "mqtt", *extra])
    assert model.keys() == sim_model.keys()
    for key in sim_model:
        assert np.linalg.norm(model[key] - sim_model[key]) / np.linalg.norm(sim_model[key]) < 1e-6, key
    assert summary["runner"] == "mqtt" and summary["startup_s"] > 0
    assert summary["flagged_per_round"] == sim_summary["flagged_per_round"]
    assert summary["test_accuracy"] == pytest.approx(sim_summary["test_accuracy"])
    return summary


def test_the_local_fleet_saves_the_simulators_model(tmp_path: Path) -> None:
    summary = _assert_same_run(tmp_path, [])
    assert all(sent > 0 for sent in summary["bytes_per_round"])
    assert [record["erased"] for record in summary["history"]] == [[], [], []]


@pytest.mark.slow
def test_the_local_fleet_over_a_mosquitto_url(tmp_path: Path, broker_factory) -> None:
    _assert_same_run(tmp_path, ["--broker", broker_factory("mosquitto").url])


def test_bad_mqtt_settings_are_one_line_errors() -> None:
    assert_one_error_line(*run_cli([*ARGS, "--runner", "mqtt", "--adaptive-tau"]), "fixed tau")
    assert_one_error_line(*run_cli([*ARGS, "--runner", "mqtt", "--round-deadline", "soon"]), "duration")
    assert_one_error_line(*run_cli(["train-server", *ARGS[1:]]), "needs --broker")


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


@pytest.mark.slow
def test_ctrl_c_stops_the_broker_and_every_worker_it_started(tmp_path: Path) -> None:
    # stderr to a file, not an unread pipe: a full pipe blocks the process that writes to it.
    stderr_path = tmp_path / "stderr.txt"
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "edgecloud.cli.app", *ARGS[:-1], "--rounds", "100000",
                                    "--runner", "mqtt"], stdout=subprocess.DEVNULL, stderr=stderr,
                                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 240
        started: set[int] = set()
        while time.monotonic() < deadline and len(started) < 4:  # the broker and 3 workers
            time.sleep(1.0)
            started = _descendants(process.pid)
        assert len(started) >= 4, started
        time.sleep(15.0)  # into the rounds
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running 60 s after Ctrl-C; its stderr ends: {stderr_path.read_text()[-2000:]!r}")
    finally:
        process.kill()
    alive = [pid for pid in started if Path(f"/proc/{pid}").exists()]
    assert not alive, alive


def assert_sigkill_leaves_no_child(args: list[str], n_children: int, settle_s: float = 10.0) -> None:
    """Start `edgecloud ARGS`, wait for its `n_children` descendants and `settle_s` more (into the
    rounds), SIGKILL it (no cleanup runs) and require every descendant gone within 15 s."""
    import psutil

    process = subprocess.Popen([sys.executable, "-m", "edgecloud.cli.app", *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    started: set[int] = set()
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and len(started) < n_children and process.poll() is None:
            time.sleep(0.5)
            started = _descendants(process.pid)
        assert len(started) >= n_children, (started, process.poll())
        time.sleep(settle_s)
        started |= _descendants(process.pid)
        process.kill()
        process.wait(10)

        def alive() -> list[int]:
            running = []
            for pid in started:
                try:
                    if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                        running.append(pid)
                except psutil.NoSuchProcess:
                    pass
            return running

        deadline = time.monotonic() + 15
        while alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(), [" ".join(psutil.Process(pid).cmdline()[:6]) for pid in alive()]
    finally:
        process.kill()
        for pid in started:  # never leave one behind for the next test, even when the assertion failed
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass


def test_a_sigkilled_fleet_leaves_no_broker_and_no_worker() -> None:
    """SIGKILL runs none of our cleanup: the broker and the 3 workers end by themselves (PR_SET_PDEATHSIG
    and a parent watcher, robust_training.runners.parent_death)."""
    assert_sigkill_leaves_no_child([*ARGS[:-1], "--rounds", "100000", "--runner", "mqtt"], 4)


def test_a_standing_fleet_serves_job_after_job_on_the_same_processes(broker_factory) -> None:
    """`StandingFleet` (the benches): the second job runs on the first job's worker processes and trains
    what the simulator trains for its own config."""
    from edgecloud.training.local_fleet import StandingFleet
    from edgecloud.training.protocol import TrainingJob
    from robust_training.errors import TrainingError
    from robust_training.runners.torch_distributed import TrainJob, build_simulator
    from robust_training.simulator import SimulationConfig

    broker = broker_factory("mosquitto")
    configs = [SimulationConfig(n_workers=3, rounds=2, lr=0.1, tau=tau, batch_size=16, code="cyclic", redundancy=3,
                                n_adversaries=1, seed=3) for tau in (1, 3)]
    with StandingFleet(3, broker.url) as fleet:
        first = fleet.serve(TrainingJob("digits", "logistic", configs[0]))
        pids = {name: process.pid for name, process in fleet.workers.processes.items()}
        second = fleet.serve(TrainingJob("digits", "logistic", configs[1]))
        assert {name: process.pid for name, process in fleet.workers.processes.items()} == pids
        assert all(process.poll() is None for process in fleet.workers.processes.values())
        with pytest.raises(TrainingError, match="3 workers"):
            fleet.serve(TrainingJob("digits", "logistic", SimulationConfig(n_workers=4, rounds=1, lr=0.1)))
    assert all(process.poll() is not None for process in fleet.workers.processes.values())  # stopped on exit
    for run, config in zip((first, second), configs):
        expected = build_simulator(TrainJob("digits", "logistic", config)).run().params
        assert np.linalg.norm(run.result.params - expected) / np.linalg.norm(expected) < 1e-6


def test_local_workers_share_the_hosts_cores_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each local worker gets its share of the cores as `--threads` (torch's default, all cores in every
    process, oversubscribes the host), and `train-worker --threads N` sets torch's thread count before
    it connects."""
    import torch

    from edgecloud.training.local_fleet import WorkerProcesses
    from test_cli_bad_inputs import NO_BROKER

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    for n_workers, threads in ((2, "4"), (3, "2"), (16, "1")):
        command = WorkerProcesses(n_workers, NO_BROKER, "default", ["--keep-serving"]).command("worker-0", Path("r"))
        assert command[command.index("--threads") + 1] == threads and "--keep-serving" in command
    before = torch.get_num_threads()
    wanted = 1 if before > 1 else 2
    try:
        run_cli(["train-worker", "--broker", NO_BROKER, "--id", "0", "--threads", str(wanted)])
        assert torch.get_num_threads() == wanted
    finally:
        torch.set_num_threads(before)
    assert_one_error_line(*run_cli(["train-worker", "--broker", NO_BROKER, "--id", "0", "--threads", "0"]), "--threads")
