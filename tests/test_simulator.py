"""The robust-training simulator: Draco-coded runs train exactly the adversary-free model, attacks are real."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from robust_training.attacks import ATTACKS
from robust_training.data import load_dataset
from robust_training.dgd import train_distributed
from robust_training.errors import TrainingError
from robust_training.models import make_objective
from robust_training.simulator import SimulationConfig, Simulator, shared_compute_s


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def _run(digits, model: str = "logistic", **overrides):
    train, test = digits
    settings = dict(n_workers=9, rounds=4, lr=0.1, batch_size=16, seed=1)
    settings.update(overrides)
    simulator = Simulator(make_objective(model, train), train, test, SimulationConfig(**settings))
    return simulator, simulator.run()


def _relative_gap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_uncoded_mean_without_adversaries_is_plain_dgd_on_unequal_nodes(digits) -> None:
    simulator, result = _run(digits, tau=2, batch_size=None, unequal_sizes=True, rounds=5)
    assert len(set(result.partition_sizes)) > 1
    reference = train_distributed(simulator.objective, simulator.params0, simulator.partitions, lr=0.1, tau=2,
                                  rounds=5, seed=1)
    assert _relative_gap(result.params, reference.params[-1]) < 1e-12


def test_runs_are_deterministic_given_the_seed(digits) -> None:
    kwargs = dict(code="cyclic", redundancy=3, n_adversaries=1, attack="gaussian")
    _, first = _run(digits, **kwargs)
    _, second = _run(digits, **kwargs)
    assert np.array_equal(first.params, second.params)
    assert [r.adversaries for r in first.records] == [r.adversaries for r in second.records]
    assert first.flagged == second.flagged


@pytest.mark.parametrize("tau", [1, 3])
@pytest.mark.parametrize(("code", "redundancy"), [("repetition", 3), ("cyclic", 3), ("cyclic", 5)])
def test_every_attack_leaves_the_coded_model_equal_to_the_adversary_free_one(digits, code: str, redundancy: int,
                                                                             tau: int) -> None:
    n_adversaries = (redundancy - 1) // 2
    _, clean = _run(digits, code=code, redundancy=redundancy, tau=tau)
    assert clean.flagged == []
    for attack in ATTACKS:
        _, attacked = _run(digits, code=code, redundancy=redundancy, tau=tau, n_adversaries=n_adversaries,
                           attack=attack)
        assert _relative_gap(attacked.params, clean.params) < 1e-6, attack
        assert attacked.records[-1].test_accuracy == clean.records[-1].test_accuracy
        every_adversary = {w for r in attacked.records for w in r.adversaries}
        assert attacked.flagged and set(attacked.flagged) <= every_adversary, attack


def test_a_torch_network_trained_under_attack_with_local_steps_equals_the_clean_one(digits) -> None:
    settings = dict(model="lenet", n_workers=7, rounds=3, lr=0.05, code="cyclic", redundancy=5, tau=2)
    _, clean = _run(digits, **settings)
    for attack in ("alie", "constant"):
        _, attacked = _run(digits, n_adversaries=2, attack=attack, **settings)
        assert _relative_gap(attacked.params, clean.params) < 1e-6, attack
        assert attacked.flagged


def test_cyclic_code_without_adversaries_is_uncoded_dgd(digits) -> None:
    _, coded = _run(digits, code="cyclic", redundancy=3, tau=2)
    _, plain = _run(digits, tau=2)
    assert _relative_gap(coded.params, plain.params) < 1e-6


def test_one_reverse_gradient_adversary_destroys_the_mean_but_not_the_geometric_median(digits) -> None:
    _, clean = _run(digits, rounds=10)
    _, attacked = _run(digits, rounds=10, n_adversaries=1, attack="reverse")
    _, robust = _run(digits, rounds=10, n_adversaries=1, attack="reverse", aggregator="geomedian")
    clean_accuracy = clean.records[-1].test_accuracy
    assert clean_accuracy > 0.85
    assert not np.isfinite(attacked.train_loss) or attacked.train_loss > 10 * clean.train_loss
    assert attacked.records[-1].test_accuracy < 0.5
    assert robust.records[-1].test_accuracy > clean_accuracy - 0.1


def test_round_times_follow_the_time_model(digits) -> None:
    simulator, result = _run(digits, code="repetition", redundancy=3, bandwidth_bps=1e6)
    d = simulator.objective.n_params
    elapsed = 0.0
    for record in result.records:
        assert record.transfer_s == pytest.approx((d * 8 + d * 8) * 8 / 1e6)
        assert record.compute_s > 0 and record.aggregate_s > 0
        elapsed += record.compute_s + record.aggregate_s + record.transfer_s
        assert record.elapsed_s == pytest.approx(elapsed)
    assert result.seconds == pytest.approx(elapsed)


def test_workers_sharing_cores_wait_for_each_other() -> None:
    assert shared_compute_s([0.1, 0.3, 0.2], None) == pytest.approx(0.3)   # a core each: the slowest
    assert shared_compute_s([0.1, 0.1, 0.1, 0.1], 2) == pytest.approx(0.2)  # 4 equal jobs on 2 cores: 2 each
    assert shared_compute_s([0.5, 0.1, 0.1], 2) == pytest.approx(0.5)      # one long job still bounds it


def test_a_run_on_shared_cores_charges_the_total_work(digits) -> None:
    _, own = _run(digits, code="cyclic", redundancy=3, rounds=6)
    _, shared = _run(digits, code="cyclic", redundancy=3, rounds=6, cores=1)
    # on one core the 9 workers' equal work is ~9x the slowest's (medians: timings differ between the runs)
    assert np.median([r.compute_s for r in shared.records]) > 3 * np.median([r.compute_s for r in own.records])
    np.testing.assert_array_equal(own.params, shared.params)  # the time model never changes the model


def test_target_accuracy_stops_early_and_adaptive_tau_logs_its_choices(digits) -> None:
    _, early = _run(digits, rounds=50, target_accuracy=0.8)
    assert len(early.records) < 50 and early.records[-1].test_accuracy >= 0.8
    _, adaptive = _run(digits, rounds=5, adaptive_tau=True, tau=2, tau_max=10, split="dirichlet", batch_size=None)
    assert len(adaptive.tau_estimates) == 4
    # round 1 only records; the estimate logged after round t sets the tau of round t + 1
    assert [r.tau for r in adaptive.records[2:]] == [e.tau for e in adaptive.tau_estimates[:-1]]
    assert all(1 <= e.tau <= 10 for e in adaptive.tau_estimates)


@pytest.mark.parametrize(("overrides", "phrase"), [
    (dict(code="cyclic", redundancy=3, n_adversaries=2), "cannot decode"),
    (dict(code="repetition", redundancy=3, aggregator="median"), "only with --code none"),
    (dict(redundancy=3), "needs a code"),
    (dict(code="fountain"), "unknown code"),
    (dict(n_adversaries=9), "adversaries"),
    (dict(aggregator="average"), "unknown aggregator"),
    (dict(tau=0), "tau"),
    (dict(cores=0), "core"),
])
def test_invalid_settings_are_one_sentence_training_errors(digits, overrides: dict, phrase: str) -> None:
    config = dataclasses.replace(SimulationConfig(n_workers=9, rounds=1, lr=0.1), **overrides)
    with pytest.raises(TrainingError, match=phrase):
        config.validate()
        config.build()
