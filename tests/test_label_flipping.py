"""Label flipping in the simulator: adversaries train on flipped labels and send that honestly."""

from __future__ import annotations

import numpy as np
import pytest

from robust_training.attacks import LabelFlipping
from robust_training.data import load_dataset
from robust_training.dgd import batch_rng, local_updates
from robust_training.models import make_objective
from robust_training.simulator import SimulationConfig, Simulator


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def _simulator(digits, **overrides) -> Simulator:
    train, test = digits
    settings = dict(n_workers=9, rounds=3, lr=0.1, batch_size=16, seed=1, redraw_adversaries=False)
    settings.update(overrides)
    return Simulator(make_objective("logistic", train), train, test, SimulationConfig(**settings))


def test_an_adversary_sends_the_update_of_its_partition_with_flipped_labels(digits):
    simulator = _simulator(digits, n_adversaries=2, attack="labelflip")
    params = simulator.params0
    honest = local_updates(simulator.objective, params, simulator.partitions, 0.1, 1, 16,
                           [batch_rng(1, 0, p) for p in range(9)]).deltas * simulator.message_scale[:, None]
    messages = honest.copy()
    simulator._send_poisoned(LabelFlipping(), messages, params, 0, 1, [2, 5])
    for worker in (2, 5):
        flipped = LabelFlipping().poison(simulator.partitions[worker])
        expected = local_updates(simulator.objective, params, [flipped], 0.1, 1, 16, [batch_rng(1, 0, worker)])
        np.testing.assert_allclose(messages[worker], expected.deltas[0] * simulator.message_scale[worker],
                                   rtol=1e-12, atol=1e-15)
    untouched = [w for w in range(9) if w not in (2, 5)]
    np.testing.assert_array_equal(messages[untouched], honest[untouched])
    assert not np.allclose(messages[2], honest[2])


def test_label_flipping_changes_the_uncoded_mean_model(digits):
    clean = _simulator(digits).run()
    flipped = _simulator(digits, n_adversaries=3, attack="labelflip").run()
    assert np.linalg.norm(flipped.params - clean.params) > 1e-3 * np.linalg.norm(clean.params)


def test_a_cyclic_code_corrects_label_flipping_exactly(digits):
    clean = _simulator(digits, code="cyclic", redundancy=3).run()
    flipped = _simulator(digits, code="cyclic", redundancy=3, n_adversaries=1, attack="labelflip").run()
    assert np.linalg.norm(flipped.params - clean.params) <= 1e-9 * np.linalg.norm(clean.params)
    assert flipped.flagged == flipped.records[0].adversaries
