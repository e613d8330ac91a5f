"""DGD: Theorem 2 (tau = 1, full gradients, size-weighted sync == centralized GD), local SGD, adaptive tau."""

from __future__ import annotations

import numpy as np
import pytest

from robust_training.adaptive_tau import AdaptiveTau, bound_gap
from robust_training.data import load_dataset, split_dataset
from robust_training.dgd import (batch_rng, local_update, local_updates, synchronize, train_centralized,
                                 train_distributed)
from robust_training.errors import TrainingError
from robust_training.models import make_objective


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


@pytest.mark.parametrize("model", ["logistic", "svm"])
def test_theorem_2_dgd_with_tau_1_is_centralized_gd_over_unequal_nodes(digits, model: str) -> None:
    train, _ = digits
    nodes = split_dataset(train, 7, "iid", seed=3, unequal=True)
    sizes = [len(n) for n in nodes]
    assert max(sizes) > 3 * min(sizes)  # really unequal local data
    objective = make_objective(model, train)
    params0 = objective.initial_params(train.features, np.random.default_rng(0))
    everything = split_dataset(train, 1)[0]
    # the nodes hold a permutation of the rows; the mean loss and gradient do not depend on row order
    central = train_centralized(objective, params0, everything, lr=0.1, steps=20)
    distributed = train_distributed(objective, params0, nodes, lr=0.1, tau=1, rounds=20)
    for step, (c, d) in enumerate(zip(central.params, distributed.params)):
        assert np.max(np.abs(c - d)) <= 1e-6 * max(1.0, np.max(np.abs(c))), f"round {step}"
    assert central.train_loss[-1] < central.train_loss[0]


def test_unweighted_average_would_break_theorem_2(digits) -> None:
    """The |D_n|/|D| weights matter: the plain mean of the local models drifts from centralized GD."""
    train, _ = digits
    nodes = split_dataset(train, 5, "dirichlet", seed=1, alpha=0.3)
    objective = make_objective("logistic", train)
    params0 = objective.initial_params(train.features, np.random.default_rng(0))
    central = train_centralized(objective, params0, split_dataset(train, 1)[0], lr=0.1, steps=3)
    deltas = np.stack([local_update(objective, params0, n, 0.1, 1, None, batch_rng(0, 0, i)).delta
                       for i, n in enumerate(nodes)])
    assert not np.allclose(params0 + deltas.mean(axis=0), central.params[1], atol=1e-6)


def test_tau_above_1_trains_but_differs_from_centralized_gd(digits) -> None:
    train, test = digits
    nodes = split_dataset(train, 4, "shards", seed=0)
    objective = make_objective("logistic", train)
    params0 = objective.initial_params(train.features, np.random.default_rng(0))
    central = train_centralized(objective, params0, split_dataset(train, 1)[0], lr=0.1, steps=20)
    local_steps = train_distributed(objective, params0, nodes, lr=0.1, tau=5, rounds=4)
    assert not np.allclose(central.params[-1], local_steps.params[-1], atol=1e-6)
    assert local_steps.train_loss[-1] < local_steps.train_loss[0]
    assert objective.accuracy(local_steps.params[-1], test.features, test.labels) > 0.5


def test_seeded_minibatch_sgd_is_repeatable_and_depends_on_the_seed(digits) -> None:
    train, _ = digits
    objective = make_objective("svm", train)
    params0 = objective.initial_params(train.features, np.random.default_rng(0))
    runs = [train_distributed(objective, params0, split_dataset(train, 3), 0.05, 3, 5, batch_size=16, seed=s)
            for s in (7, 7, 8)]
    assert np.array_equal(runs[0].params[-1], runs[1].params[-1])
    assert not np.array_equal(runs[0].params[-1], runs[2].params[-1])


def test_bad_step_settings_are_training_errors(digits) -> None:
    train, _ = digits
    objective = make_objective("logistic", train)
    params0 = np.zeros(objective.n_params)
    with pytest.raises(TrainingError):
        train_distributed(objective, params0, split_dataset(train, 2), lr=0.1, tau=0, rounds=1)
    with pytest.raises(TrainingError):
        train_centralized(objective, params0, train, lr=-1.0, steps=1)


def test_bound_prefers_long_periods_when_nodes_agree_and_syncs_are_dear() -> None:
    gaps = {tau: bound_gap(tau, beta=1.0, rho=1.0, delta=0.0, lr=0.01, phi=0.025, budget_s=100.0,
                           step_s=0.01, sync_s=1.0) for tau in (1, 10, 50)}
    assert gaps[50] < gaps[10] < gaps[1]
    diverging = {tau: bound_gap(tau, beta=50.0, rho=5.0, delta=50.0, lr=0.05, phi=0.025, budget_s=100.0,
                                step_s=0.01, sync_s=0.001) for tau in (1, 20)}
    assert diverging[1] < diverging[20]


def test_adaptive_tau_logs_its_estimates_and_chooses_within_bounds(digits) -> None:
    train, _ = digits
    nodes = split_dataset(train, 4, "dirichlet", seed=2, alpha=0.2)
    objective = make_objective("logistic", train)
    params = objective.initial_params(train.features, np.random.default_rng(0))
    controller = AdaptiveTau(initial_tau=2, tau_max=30)
    sizes = [len(n) for n in nodes]
    for round_index in range(4):
        updates = local_updates(objective, params, nodes, 0.1, controller.tau, None,
                                [batch_rng(0, round_index, i) for i in range(len(nodes))], probe=True)
        tau = controller.observe(params, updates, sizes, lr=0.1, budget_s=10.0, step_s=0.001, sync_s=0.05)
        params = synchronize(params, updates.deltas, sizes)
        assert 1 <= tau <= 30
    assert len(controller.log) == 3
    assert all(e.beta > 0 and e.rho >= 0 and e.delta > 0 for e in controller.log)


def test_vectorised_partitions_train_what_the_one_by_one_loop_trains(digits) -> None:
    import torch

    train, _ = digits
    objective = make_objective("fc", train, dtype=torch.float64)
    params = objective.initial_params(train.features, np.random.default_rng(0))
    partitions = split_dataset(train, 5, seed=0)
    for tau in (1, 3):
        batched = local_updates(objective, params, partitions, 0.05, tau, 8, [batch_rng(0, 0, p) for p in range(5)])
        looped = [local_update(objective, params, part, 0.05, tau, 8, batch_rng(0, 0, p))
                  for p, part in enumerate(partitions)]
        for p, single in enumerate(looped):
            assert np.allclose(batched.deltas[p], single.delta, rtol=1e-9, atol=1e-12)
            assert batched.start_losses[p] == pytest.approx(single.start_loss, rel=1e-12)
