"""`--runner torch` trains the simulator's model with real processes: P workers and a PS over gloo.

Each case starts P + 1 processes (seconds of torch imports each), so the runs are few and small: the
numpy logistic/svm models on digits, 3-5 workers, 3 rounds. Equality is on the saved parameters.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import psutil
import pytest

from test_cli_bad_inputs import assert_one_error_line, run_cli
from test_runner_mqtt_fleet import assert_sigkill_leaves_no_child

from robust_training.errors import TrainingError
from robust_training.runners.torch_distributed import TrainJob, run_spawned
from robust_training.simulator import RoundRecord, SimulationConfig

BASE = ["train", "--dataset", "digits", "--rounds", "3", "--lr", "0.1", "--batch-size", "16", "--seed", "3",
        "--json"]


def _train(folder: Path, runner: str, args: list[str]) -> tuple[dict, dict[str, np.ndarray]]:
    model_path = folder / f"{runner}.npz"
    code, stdout, stderr = run_cli([*BASE, *args, "--runner", runner, "--save", str(model_path)])
    assert code == 0, stderr[-3000:]
    with np.load(model_path, allow_pickle=False) as arrays:
        return json.loads(stdout), {name: arrays[name] for name in arrays.files}


def _assert_same_model(sim: dict[str, np.ndarray], torch_run: dict[str, np.ndarray]) -> None:
    assert sim.keys() == torch_run.keys()
    for name in sim:
        gap = np.linalg.norm(torch_run[name] - sim[name]) / np.linalg.norm(sim[name])
        assert gap < 1e-6, (name, gap)


@pytest.mark.parametrize("args", [
    ["--model", "logistic", "--nodes", "4", "--tau", "1"],
    ["--model", "logistic", "--nodes", "5", "--code", "cyclic", "--redundancy", "3", "--adversaries", "1",
     "--attack", "reverse", "--tau", "1"],
    ["--model", "svm", "--nodes", "5", "--code", "cyclic", "--redundancy", "3", "--adversaries", "1",
     "--attack", "labelflip", "--tau", "2"],
    ["--model", "logistic", "--nodes", "3", "--code", "repetition", "--redundancy", "3", "--adversaries", "1",
     "--attack", "gaussian", "--tau", "2"],
    ["--model", "svm", "--nodes", "3", "--code", "repetition", "--redundancy", "3", "--adversaries", "1",
     "--attack", "alie", "--tau", "1"],
], ids=["mean-clean-tau1", "cyclic-reverse-tau1", "cyclic-labelflip-tau2", "repetition-gaussian-tau2",
        "repetition-alie-tau1"])
def test_torch_runner_saves_the_simulators_model(tmp_path: Path, args: list[str]) -> None:
    sim_summary, sim_model = _train(tmp_path, "sim", args)
    torch_summary, torch_model = _train(tmp_path, "torch", args)
    _assert_same_model(sim_model, torch_model)
    assert torch_summary["flagged_per_round"] == sim_summary["flagged_per_round"]
    assert [r["adversaries"] for r in torch_summary["history"]] == [r["adversaries"] for r in sim_summary["history"]]
    # measured per-round split, start-up apart; gloo moves at least the sim's modelled model + message
    assert torch_summary["startup_s"] > 0 and sim_summary["startup_s"] is None
    for record, sim_record, sent, modelled in zip(torch_summary["history"], sim_summary["history"],
                                                  torch_summary["bytes_per_round"], sim_summary["bytes_per_round"]):
        assert record["compute_s"] > 0 and record["transfer_s"] >= 0 and record["aggregate_s"] > 0
        assert record["batch_loss"] == pytest.approx(sim_record["batch_loss"], rel=1e-9)
        assert sent >= modelled > 0


def _readme_torchrun_command() -> list[str]:
    """The README's host-A line, word for word (continuation lines joined)."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = text[text.index("# host A\n") + len("# host A\n"):text.index("# host B")]
    return shlex.split(block.replace("\\\n", " "))


def _with_value(command: list[str], option: str, value: str) -> list[str]:
    index = command.index(option)
    return [*command[:index + 1], value, *command[index + 2:]]


def test_the_readmes_two_host_torchrun_command_trains_the_simulators_model(tmp_path: Path) -> None:
    """The README's two-host torchrun command exactly as printed, both "hosts" on loopback (only the
    address, the port and the --save path changed; host B with --node-rank 1, as the README says):
    rank 0 alone prints and saves, and the model is `--runner sim`'s for the same train options."""
    command = _readme_torchrun_command()
    assert command[0] == "torchrun" and command[command.index("-m") + 1] == "edgecloud.cli.app"
    train_args = command[command.index("-m") + 2:]
    model_path = tmp_path / "torchrun.npz"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = _with_value(_with_value(_with_value(command, "--master-addr", "127.0.0.1"), "--master-port", str(port)),
                          "--save", str(model_path))

    def host(node_rank: int) -> subprocess.Popen:
        line = [sys.executable, "-m", "torch.distributed.run", *_with_value(command, "--node-rank", str(node_rank))[1:]]
        return subprocess.Popen(line, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})

    hosts = [host(0), host(1)]
    try:
        outputs = [h.communicate(timeout=400) for h in hosts]
    finally:
        for h in hosts:
            h.kill()
    assert [h.returncode for h in hosts] == [0, 0], [err[-3000:] for _, err in outputs]
    assert json.loads(outputs[0][0])["runner"] == "torch" and outputs[1][0] == ""  # rank 0 alone prints
    sim_path = tmp_path / "sim.npz"
    code, _, stderr = run_cli([*_with_value(_with_value(train_args, "--runner", "sim"), "--save", str(sim_path))])
    assert code == 0, stderr[-3000:]
    with np.load(model_path, allow_pickle=False) as arrays, np.load(sim_path, allow_pickle=False) as sim:
        _assert_same_model({name: sim[name] for name in sim.files}, {name: arrays[name] for name in arrays.files})


@pytest.mark.parametrize(("extra", "phrase"), [
    (["--runner", "mpi"], "unknown runner 'mpi'"),
    (["--runner", "torch", "--adaptive-tau"], "fixed tau"),
])
def test_bad_runner_settings_are_one_line_errors(extra: list[str], phrase: str) -> None:
    assert_one_error_line(*run_cli([*BASE, "--nodes", "3", *extra]), phrase)


def test_a_worker_that_dies_mid_run_ends_the_run_with_a_training_error() -> None:
    """Round 2's callback at rank 0 kills one worker this run spawned: the next round fails in one
    sentence and the other workers are gone, instead of a gloo traceback or a hang."""
    config = SimulationConfig(n_workers=3, rounds=50, lr=0.1, batch_size=16, seed=0)

    def kill_a_worker(record: RoundRecord) -> None:
        if record.round == 2:
            os.kill(multiprocessing.active_children()[0].pid, signal.SIGKILL)

    with pytest.raises(TrainingError, match="worker process died"):
        run_spawned(TrainJob("digits", "logistic", config), on_round=kill_a_worker)
    for child in multiprocessing.active_children():
        child.join(timeout=10)
    assert multiprocessing.active_children() == []


def test_a_sigkilled_rank_0_leaves_no_worker() -> None:
    """Rank 0 SIGKILLed mid-run (no cleanup runs): its spawned workers, blocked in a collective, end by
    themselves (robust_training.runners.parent_death) instead of waiting out gloo's timeout."""
    assert_sigkill_leaves_no_child([*BASE, "--nodes", "3", "--rounds", "100000", "--runner", "torch"], 3)


def _spawned_workers() -> list[psutil.Process]:
    """This process's torch.multiprocessing children; one that exits meanwhile (a zombie of an earlier
    test's, or gone) is none: reading its command line raised, which killed the killer thread and let
    the run succeed (CI, 8 Dec)."""
    workers = []
    for child in psutil.Process().children():
        try:
            if any("spawn_main" in part for part in child.cmdline()):
                workers.append(child)
        except (psutil.ZombieProcess, psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return workers


def test_a_worker_that_dies_before_joining_fails_the_run_within_seconds() -> None:
    """A worker killed while it starts (still importing torch) never joins the group: rank 0 used to
    wait for gloo's 10-minute timeout; it watches its workers and fails in one sentence."""
    config = SimulationConfig(n_workers=3, rounds=5, lr=0.1, batch_size=16, seed=0)
    killed: list[int] = []

    def kill_the_first_worker() -> None:
        deadline = time.monotonic() + 120
        while not killed and time.monotonic() < deadline:
            for worker in _spawned_workers()[:1]:
                worker.kill()
                killed.append(worker.pid)
            time.sleep(0.01)

    killer = threading.Thread(target=kill_the_first_worker)
    killer.start()
    started = time.monotonic()
    with pytest.raises(TrainingError, match="exited before joining the process group"):
        run_spawned(TrainJob("digits", "logistic", config))
    waited_s = time.monotonic() - started
    killer.join()
    assert killed and waited_s < 60, waited_s  # gloo's timeout is 600 s
    _, alive = psutil.wait_procs(_spawned_workers(), timeout=30)
    assert not alive


def test_rank_0_allocates_no_message_sized_array_per_round() -> None:
    """Per round rank 0 used to copy the P messages three times (stack, contiguous copy, the honest rows
    for the finiteness check) plus an (n, d) boolean mask; numpy allocations are traced here, and a
    round's peak must stay below half of one (P, d) float64 array."""
    config = SimulationConfig(n_workers=4, rounds=3, lr=0.05, batch_size=16, seed=0)
    peaks: list[int] = []  # per round: the peak above what was in use when the round started
    in_use = [0]

    def measure(record: RoundRecord) -> None:
        current, peak = tracemalloc.get_traced_memory()
        peaks.append(peak - in_use[0])
        in_use[0] = current
        tracemalloc.reset_peak()

    tracemalloc.start()
    try:
        result = run_spawned(TrainJob("digits", "fc", config), on_round=measure).result
    finally:
        tracemalloc.stop()
    messages_bytes = config.n_workers * result.params.size * 8
    assert len(peaks) == 3 and max(peaks[1:]) < messages_bytes / 2, (peaks, messages_bytes)


def test_rank_0_loads_the_data_once(monkeypatch) -> None:
    """The CLI loads the data for rank 0 and hands it over instead of the runner loading it again."""
    import robust_training.data
    import robust_training.runners.torch_distributed as runner

    loads: list[str] = []
    real = robust_training.data.load_dataset

    def counting(name: str, *args, **kwargs):
        loads.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(robust_training.data, "load_dataset", counting)
    monkeypatch.setattr(runner, "load_dataset", counting)
    code, _, stderr = run_cli([*BASE, "--nodes", "3", "--runner", "torch"])
    assert code == 0, stderr[-3000:]
    assert loads == ["digits"]


def test_a_series_of_runs_on_one_set_of_workers_trains_each_runs_own_model() -> None:
    """Runs that differ only in tau and rounds share the worker processes (the benchmark pays start-up
    once); each ends with the model the simulator trains for its own config."""
    from robust_training.runners.torch_distributed import build_simulator, run_spawned_series

    base = SimulationConfig(n_workers=3, rounds=3, lr=0.1, batch_size=16, seed=1, code="repetition", redundancy=3,
                            n_adversaries=1, attack="gaussian")
    jobs = [TrainJob("digits", "logistic", dataclasses.replace(base, tau=tau, rounds=rounds))
            for tau, rounds in ((1, 3), (3, 2))]
    results = run_spawned_series(jobs)
    assert results[0].startup_s > 0 and results[1].startup_s == 0.0
    for job, distributed in zip(jobs, results):
        alone = build_simulator(job).run()
        assert len(distributed.result.records) == job.config.rounds
        gap = np.linalg.norm(distributed.result.params - alone.params) / np.linalg.norm(alone.params)
        assert gap < 1e-6, gap
    with pytest.raises(TrainingError, match="may differ only in tau"):
        run_spawned_series([jobs[0], TrainJob("digits", "logistic", dataclasses.replace(base, lr=0.2))])
