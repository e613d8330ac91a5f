"""The attacks do what they claim, only to the adversaries' rows, and are strong enough to matter."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest

from robust_training.aggregators import Mean
from robust_training.attacks import (
    ALIE,
    ATTACKS,
    AdversarySchedule,
    Constant,
    GaussianNoise,
    ReverseGradient,
    SignFlip,
    alie_z_max,
    choose_adversaries,
    make_attack,
)
from robust_training.errors import TrainingError

ADVERSARIES = [1, 4]


@pytest.fixture
def messages() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((7, 2000)) + 3.0


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_only_adversarial_rows_change_and_input_is_untouched(name, messages):
    original = messages.copy()
    attacked = make_attack(name).apply(messages, ADVERSARIES, np.random.default_rng(1))
    np.testing.assert_array_equal(messages, original)
    honest = np.setdiff1d(np.arange(7), ADVERSARIES)
    np.testing.assert_array_equal(attacked[honest], messages[honest])
    assert np.all(np.any(attacked[ADVERSARIES] != messages[ADVERSARIES], axis=1))


def test_reverse_constant_and_signflip_values(messages):
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(ReverseGradient().apply(messages, ADVERSARIES, rng)[ADVERSARIES],
                                  -100.0 * messages[ADVERSARIES])
    np.testing.assert_array_equal(Constant().apply(messages, ADVERSARIES, rng)[ADVERSARIES], -100.0)
    np.testing.assert_array_equal(SignFlip().apply(messages, ADVERSARIES, rng)[ADVERSARIES], -messages[ADVERSARIES])


def test_gaussian_adds_noise_of_the_requested_std(messages):
    attacked = GaussianNoise(std=5.0).apply(messages, ADVERSARIES, np.random.default_rng(0))
    noise = attacked[ADVERSARIES] - messages[ADVERSARIES]
    assert abs(noise.std() - 5.0) < 0.2 and abs(noise.mean()) < 0.3


def test_alie_sends_mean_plus_z_std_of_the_honest_rows(messages):
    attacked = ALIE(z=1.5).apply(messages, ADVERSARIES, np.random.default_rng(0))
    honest = np.delete(messages, ADVERSARIES, axis=0)
    expected = honest.mean(axis=0) + 1.5 * honest.std(axis=0)
    np.testing.assert_allclose(attacked[ADVERSARIES], np.vstack([expected, expected]))


def test_alie_default_z_is_the_papers_z_max():
    n, f = 45, 10
    swayed = n // 2 + 1 - f
    assert alie_z_max(n, f) == pytest.approx(NormalDist().inv_cdf((n - swayed) / n))
    assert alie_z_max(3, 0) == 1.0  # formula gives z <= 0: fall back to 1.0


def test_one_reverse_gradient_adversary_destroys_the_mean(messages):
    attacked = ReverseGradient().apply(messages, [0], np.random.default_rng(0))
    honest_mean = messages[1:].mean(axis=0)
    assert np.linalg.norm(Mean()(attacked, 1) - honest_mean) > 10 * np.linalg.norm(honest_mean)


def test_bad_arguments_are_refused(messages):
    with pytest.raises(TrainingError, match="outside"):
        SignFlip().apply(messages, [7], np.random.default_rng(0))
    with pytest.raises(TrainingError, match="unknown attack"):
        make_attack("flood")
    with pytest.raises(TrainingError):
        choose_adversaries(3, 4, np.random.default_rng(0))


def test_choose_adversaries_is_distinct_sorted_and_seeded():
    chosen = choose_adversaries(45, 10, np.random.default_rng(3))
    assert chosen == sorted(set(chosen)) and len(chosen) == 10 and all(0 <= w < 45 for w in chosen)
    assert chosen == choose_adversaries(45, 10, np.random.default_rng(3))


def test_adversary_schedule_fixed_or_redrawn_deterministically():
    fixed = AdversarySchedule(45, 5, redraw=False, seed=1)
    assert fixed.for_round(0) == fixed.for_round(17)
    redrawn = AdversarySchedule(45, 5, redraw=True, seed=1)
    rounds = [redrawn.for_round(t) for t in range(10)]
    assert len({tuple(r) for r in rounds}) > 1
    assert rounds == [AdversarySchedule(45, 5, redraw=True, seed=1).for_round(t) for t in range(10)]
    assert rounds != [AdversarySchedule(45, 5, redraw=True, seed=2).for_round(t) for t in range(10)]
