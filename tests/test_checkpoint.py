"""Checkpoint and resume in the simulator's loop: a run stopped after a checkpoint and resumed ends with
the model of the uninterrupted run, bit for bit; a checkpoint of another run, a torn or a pickled one is
refused in one sentence. (The CLI and real-process kills: tests/test_checkpoint_kill.py.)"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import robust_training.checkpoint as checkpoint_module
from robust_training.checkpoint import MANIFEST, Checkpointer
from robust_training.data import load_dataset
from robust_training.errors import TrainingError
from robust_training.models import make_objective
from robust_training.simulator import RoundRecord, SimulationConfig, Simulator


class Crash(Exception):
    """Stands for the process dying after a round."""


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def _simulator(digits, model: str = "logistic", **overrides) -> Simulator:
    train, test = digits
    settings = dict(n_workers=6, rounds=9, lr=0.1, batch_size=16, seed=4)
    settings.update(overrides)
    return Simulator(make_objective(model, train), train, test, SimulationConfig(**settings))


def _crash_after(round_number: int):
    def on_round(record: RoundRecord) -> None:
        if record.round == round_number:
            raise Crash()
    return on_round


CASES = {
    "mean-clean": dict(),
    # the gaussian attack draws from the adversary generator in every round: its state must survive
    "cyclic-gaussian-tau2": dict(code="cyclic", redundancy=3, n_adversaries=1, attack="gaussian", tau=2),
    # bucketing shuffles with its own generator, found inside the composed aggregator
    "bucketing-median-gaussian": dict(aggregator="bucketing+median", n_adversaries=1, attack="gaussian"),
    "fixed-adversaries": dict(code="repetition", redundancy=3, n_adversaries=1, attack="reverse",
                              redraw_adversaries=False),
    "adaptive-tau": dict(adaptive_tau=True, tau_max=6, batch_size=None),
}


def _timed_like_clockwork(simulator: Simulator):
    """The simulator's own rounds with fixed times: adaptive tau chooses from measured times, so two
    uninterrupted runs choose the same taus only when their rounds took the same time."""
    def play_round(params, round_index, tau, adversaries, elapsed_s, probe):
        new_params, updates, record = simulator._play_round(params, round_index, tau, adversaries, elapsed_s, probe)
        record.compute_s, record.aggregate_s, record.transfer_s = 0.01 * tau, 0.002, 0.003
        record.elapsed_s = elapsed_s + record.round_s
        return new_params, updates, record
    return play_round


def _run(simulator: Simulator, **kwargs):
    return simulator.run(play_round=_timed_like_clockwork(simulator), **kwargs)


@pytest.mark.parametrize("overrides", CASES.values(), ids=CASES.keys())
def test_a_run_resumed_from_a_checkpoint_ends_with_the_uninterrupted_model(digits, tmp_path: Path,
                                                                           overrides: dict) -> None:
    uninterrupted = _run(_simulator(digits, **overrides))
    with pytest.raises(Crash):  # dies after round 5; the last checkpoint is round 4's
        _run(_simulator(digits, **overrides), on_round=_crash_after(5), checkpoints=Checkpointer(tmp_path, 2))
    assert json.loads((tmp_path / MANIFEST).read_text())["round"] == 4
    played: list[int] = []
    resumed = _run(_simulator(digits, **overrides), on_round=lambda r: played.append(r.round),
                   checkpoints=Checkpointer(tmp_path, 2, resume=True))
    assert played == [5, 6, 7, 8, 9]
    assert np.array_equal(resumed.params, uninterrupted.params)
    assert [r.adversaries for r in resumed.records] == [r.adversaries for r in uninterrupted.records]
    assert [r.flagged for r in resumed.records] == [r.flagged for r in uninterrupted.records]
    assert [r.tau for r in resumed.records] == [r.tau for r in uninterrupted.records]
    assert resumed.tau_estimates == uninterrupted.tau_estimates
    assert [r.test_accuracy for r in resumed.records] == [r.test_accuracy for r in uninterrupted.records]


def test_a_torch_network_resumes_to_the_same_model(digits, tmp_path: Path) -> None:
    overrides = dict(rounds=4, n_workers=3)
    uninterrupted = _simulator(digits, "lenet", **overrides).run()
    with pytest.raises(Crash):
        _simulator(digits, "lenet", **overrides).run(on_round=_crash_after(3), checkpoints=Checkpointer(tmp_path, 1))
    resumed = _simulator(digits, "lenet", **overrides).run(checkpoints=Checkpointer(tmp_path, 1, resume=True))
    assert np.array_equal(resumed.params, uninterrupted.params)


def test_a_run_that_reached_its_target_stays_finished_after_a_resume(digits, tmp_path: Path) -> None:
    first = _simulator(digits, rounds=50, target_accuracy=0.8).run(checkpoints=Checkpointer(tmp_path, 1))
    assert len(first.records) < 50
    again = _simulator(digits, rounds=50, target_accuracy=0.8).run(checkpoints=Checkpointer(tmp_path, 1, resume=True))
    assert np.array_equal(again.params, first.params) and len(again.records) == len(first.records)


@pytest.mark.parametrize(("change", "phrase"), [
    (dict(lr=0.2), "config.lr: 0.1 there, 0.2 here"),
    (dict(seed=5), "config.seed: 4 there, 5 here"),
])
def test_a_checkpoint_of_another_config_is_refused(digits, tmp_path: Path, change: dict, phrase: str) -> None:
    _simulator(digits, rounds=2).run(checkpoints=Checkpointer(tmp_path, 1))
    with pytest.raises(TrainingError, match="belongs to a different run") as caught:
        _simulator(digits, rounds=2, **change).run(checkpoints=Checkpointer(tmp_path, 1, resume=True))
    assert phrase in str(caught.value)


def test_a_checkpoint_of_another_model_or_data_is_refused(digits, tmp_path: Path) -> None:
    _simulator(digits, rounds=2).run(checkpoints=Checkpointer(tmp_path, 1))
    with pytest.raises(TrainingError, match="objective.type"):
        _simulator(digits, "svm", rounds=2).run(checkpoints=Checkpointer(tmp_path, 1, resume=True))
    other = load_dataset("digits", seed=1)
    with pytest.raises(TrainingError, match="data_sha256"):
        _simulator(other, rounds=2).run(checkpoints=Checkpointer(tmp_path, 1, resume=True))


def test_resuming_without_a_checkpoint_is_one_error(digits, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="no checkpoint to resume"):
        _simulator(digits).run(checkpoints=Checkpointer(tmp_path, 1, resume=True))


def test_tampered_and_pickled_arrays_are_refused(digits, tmp_path: Path) -> None:
    _simulator(digits, rounds=2).run(checkpoints=Checkpointer(tmp_path, 1))
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    arrays = tmp_path / manifest["arrays"]
    with arrays.open("wb") as file:
        np.savez(file, params=np.array([object()], dtype=object))
    with pytest.raises(TrainingError, match="do not match its SHA-256"):
        _simulator(digits, rounds=2).run(checkpoints=Checkpointer(tmp_path, 1, resume=True))
    manifest["arrays_sha256"] = checkpoint_module._sha256(arrays)  # a consistent but pickled checkpoint
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(TrainingError, match="without pickle"):
        _simulator(digits, rounds=2).run(checkpoints=Checkpointer(tmp_path, 1, resume=True))


def test_not_a_checkpoint_is_refused(digits, tmp_path: Path) -> None:
    (tmp_path / MANIFEST).write_text(json.dumps({"format": "something else"}))
    with pytest.raises(TrainingError, match="not a training checkpoint"):
        _simulator(digits).run(checkpoints=Checkpointer(tmp_path, 1, resume=True))


def test_a_write_cut_short_leaves_the_previous_checkpoint_whole(digits, tmp_path: Path, monkeypatch) -> None:
    """The process dies between writing round 2's arrays and committing its manifest: round 1's
    checkpoint is still the one on disk, readable, and no temporary file is left behind."""
    _simulator(digits, rounds=1).run(checkpoints=Checkpointer(tmp_path, 1))
    real_replace = os.replace

    def die_on_the_manifest(source, target) -> None:
        if Path(target).name == MANIFEST:
            raise Crash()
        real_replace(source, target)

    monkeypatch.setattr(checkpoint_module.os, "replace", die_on_the_manifest)
    with pytest.raises(Crash):
        _simulator(digits, rounds=3).run(checkpoints=Checkpointer(tmp_path, 1))
    monkeypatch.undo()
    assert json.loads((tmp_path / MANIFEST).read_text())["round"] == 1
    assert not list(tmp_path.glob(".*.tmp"))
    snapshot = Checkpointer(tmp_path, 1, resume=True).load(_simulator(digits, rounds=1).identity())
    assert snapshot is not None and snapshot.round == 1


@pytest.mark.parametrize(("content", "phrase"), [
    (b"", "not valid JSON"),
    (b"\xff\xfe garbage", "not UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000, "too deeply"),
    (b'{"format": "edgecloud-training-checkpoint", "n": 1' + b"0" * 5000 + b"}", "integer too long"),
    (b'{"format": "edgecloud-training-checkpoint", "round": NaN}', "NaN"),
    (b"[1, 2]", "not a training checkpoint"),
    (b'{"format": "edgecloud-training-checkpoint", "version": 99}', "format version 99"),
])
def test_a_bad_manifest_is_one_training_error(digits, tmp_path: Path, content: bytes, phrase: str) -> None:
    (tmp_path / MANIFEST).write_bytes(content)
    with pytest.raises(TrainingError, match=phrase):
        _simulator(digits).run(checkpoints=Checkpointer(tmp_path, 1, resume=True))
