"""The attacks do what they claim, only to the adversaries' rows, and are strong enough to matter."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest

from robust_training.aggregators import Mean, make_aggregator
from robust_training.attacks import (
    ALIE,
    ATTACK_NAMES,
    ATTACKS,
    AdversarySchedule,
    Constant,
    DataAttack,
    GaussianNoise,
    InnerProductManipulation,
    LabelFlipping,
    Mimic,
    ReverseGradient,
    SignFlip,
    alie_z_max,
    choose_adversaries,
    make_attack,
)
from robust_training.codes import RepetitionCode
from robust_training.data import Dataset
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


def test_ipm_sends_minus_epsilon_times_the_honest_mean_and_turns_the_mean_around(messages):
    """Xie et al.: the mean becomes ((n - f) - epsilon f) / n times the honest mean; with n = 7, f = 2,
    epsilon = 3 > (n - f) / f = 2.5 that is -1/7 of it: a negative inner product with the true direction."""
    honest = np.delete(messages, ADVERSARIES, axis=0)
    attacked = InnerProductManipulation(epsilon=3.0).apply(messages, ADVERSARIES, np.random.default_rng(0))
    np.testing.assert_allclose(attacked[ADVERSARIES], -3.0 * np.vstack([honest.mean(axis=0)] * 2))
    mean = Mean()(attacked, 2)
    np.testing.assert_allclose(mean, -honest.mean(axis=0) / 7, atol=1e-12)
    assert mean @ honest.mean(axis=0) < 0


def test_mimic_copies_one_honest_worker():
    messages = np.arange(12.0).reshape(6, 2)
    attacked = Mimic(target=1).apply(messages, [0, 2], np.random.default_rng(0))
    np.testing.assert_array_equal(attacked[[0, 2]], [messages[3], messages[3]])  # honest ids 1, 3, 4, 5
    with pytest.raises(TrainingError, match="honest workers"):
        Mimic(target=4).apply(messages, [0, 2], np.random.default_rng(0))


def test_mimic_inside_its_own_repetition_group_is_an_honest_message():
    """Why mimic is not in ATTACKS: copying a replica of one's own partition changes nothing to flag."""
    code = RepetitionCode(10, 5)
    updates = np.random.default_rng(0).standard_normal((2, 6))
    result = code.decode(Mimic().apply(code.encode_all(updates), [0, 1, 5], np.random.default_rng(0)))
    np.testing.assert_allclose(result.total, updates.sum(axis=0), rtol=1e-12)
    assert result.flagged == [5]  # workers 0 and 1 copied worker 2, a replica of their own partition


def test_infinity_rows_are_excluded_by_every_aggregator(messages):
    attacked = make_attack("infinity").apply(messages, ADVERSARIES, np.random.default_rng(0))
    assert np.all(np.isinf(attacked[ADVERSARIES]))
    report = make_aggregator("median").explain(attacked, 2)
    assert report.excluded == ADVERSARIES
    np.testing.assert_array_equal(report.point, np.median(np.delete(messages, ADVERSARIES, axis=0), axis=0))


def test_label_flipping_poisons_data_not_messages():
    data = Dataset(np.arange(8.0).reshape(4, 2), np.array([0, 1, 2, 9]), 10, (1, 2))
    poisoned = make_attack("labelflip").poison(data)
    assert isinstance(make_attack("labelflip"), DataAttack) and isinstance(make_attack("labelflip"), LabelFlipping)
    np.testing.assert_array_equal(poisoned.labels, [9, 8, 7, 0])
    assert poisoned.features is data.features and poisoned.n_classes == 10
    np.testing.assert_array_equal(LabelFlipping().poison(poisoned).labels, data.labels)
    assert set(ATTACK_NAMES) == set(ATTACKS) | {"mimic", "labelflip"}


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
