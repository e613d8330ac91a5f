"""One property suite run against every aggregator (in the spirit of scikit-learn's parametrize_with_checks)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robust_training.aggregators import AGGREGATORS, GeometricMedian, Krum, TrimmedMean, make_aggregator, weiszfeld
from robust_training.errors import TrainingError

ALL = sorted(AGGREGATORS)
#: Aggregators that stay inside the honest updates' bounding box when n > 2f + 2 and f adversaries send
#: arbitrarily large values.
BOX_BOUNDED = ["krum", "median", "multikrum", "trimmed"]
PROPERTY_SETTINGS = settings(max_examples=25, deadline=None)


@st.composite
def honest_and_f(draw):
    """(updates, f) with n > 2f + 2 so that every aggregator's bound holds; rows distinct a.s."""
    f = draw(st.integers(0, 4))
    n = draw(st.integers(2 * f + 3, 2 * f + 9))
    d = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31))
    scale = 10.0 ** draw(st.floats(-3, 3))
    return scale * np.random.default_rng(seed).standard_normal((n, d)), f


def aggregate(name: str, updates: np.ndarray, f: int) -> np.ndarray:
    if name == "geomedian":  # tight tolerance so that properties of the exact minimiser are visible
        return GeometricMedian(max_iter=2000, tol=1e-12)(updates, f)
    return make_aggregator(name)(updates, f)


@pytest.mark.parametrize("name", ALL)
@PROPERTY_SETTINGS
@given(case=honest_and_f())
def test_output_is_one_d_vector(name, case):
    updates, f = case
    assert aggregate(name, updates, f).shape == (updates.shape[1],)


@pytest.mark.parametrize("name", ALL)
@PROPERTY_SETTINGS
@given(case=honest_and_f(), seed=st.integers(0, 2**31))
def test_permutation_invariance(name, case, seed):
    updates, f = case
    order = np.random.default_rng(seed).permutation(updates.shape[0])
    scale = np.abs(updates).max()
    np.testing.assert_allclose(aggregate(name, updates[order], f), aggregate(name, updates, f), atol=1e-9 * scale)


@pytest.mark.parametrize("name", ALL)
@PROPERTY_SETTINGS
@given(case=honest_and_f())
def test_identical_updates_give_that_update(name, case):
    updates, f = case
    identical = np.repeat(updates[:1], updates.shape[0], axis=0)
    np.testing.assert_allclose(aggregate(name, identical, f), updates[0], rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("name", ALL)
@PROPERTY_SETTINGS
@given(case=honest_and_f(), shift_seed=st.integers(0, 2**31))
def test_translation_equivariance(name, case, shift_seed):
    updates, f = case
    shift = np.abs(updates).max() * np.random.default_rng(shift_seed).standard_normal(updates.shape[1])
    scale = np.abs(updates).max() + np.abs(shift).max()
    np.testing.assert_allclose(aggregate(name, updates + shift, f), aggregate(name, updates, f) + shift,
                               atol=1e-7 * scale)


def with_huge_adversaries(updates: np.ndarray, f: int, seed: int) -> np.ndarray:
    """The last f rows replaced by values of 1e6 to 1e7 times the honest scale, random signs."""
    attacked = updates.copy()
    if f:
        rng = np.random.default_rng(seed)
        signs = rng.choice([-1.0, 1.0], size=(f, updates.shape[1]))
        attacked[-f:] = 1e6 * np.abs(updates).max() * signs * rng.uniform(1.0, 10.0, size=(f, updates.shape[1]))
    return attacked


@pytest.mark.parametrize("name", BOX_BOUNDED)
@PROPERTY_SETTINGS
@given(case=honest_and_f(), seed=st.integers(0, 2**31))
def test_robust_aggregators_stay_in_the_honest_bounding_box(name, case, seed):
    updates, f = case
    honest = updates[: updates.shape[0] - f]
    result = aggregate(name, with_huge_adversaries(updates, f, seed), f)
    slack = 1e-9 * np.abs(honest).max()
    assert np.all(result >= honest.min(axis=0) - slack)
    assert np.all(result <= honest.max(axis=0) + slack)


@PROPERTY_SETTINGS
@given(case=honest_and_f(), seed=st.integers(0, 2**31))
def test_geometric_median_stays_near_the_honest_points(case, seed):
    """||z - mean_H|| <= 2(n - f)/(n - 2f) * max_H ||x_i - mean_H|| (Lopuhaa & Rousseeuw, 1991)."""
    updates, f = case
    n = updates.shape[0]
    honest = updates[: n - f]
    center = honest.mean(axis=0)
    result = aggregate("geomedian", with_huge_adversaries(updates, f, seed), f)
    bound = 2 * (n - f) / (n - 2 * f) * np.linalg.norm(honest - center, axis=1).max()
    assert np.linalg.norm(result - center) <= bound * (1 + 1e-6) + 1e-12


@PROPERTY_SETTINGS
@given(case=honest_and_f(), seed=st.integers(0, 2**31))
def test_krum_picks_an_honest_update_under_its_bound(case, seed):
    updates, f = case
    n = updates.shape[0]
    result = aggregate("krum", with_huge_adversaries(updates, f, seed), f)
    assert any(np.array_equal(result, row) for row in updates[: n - f])


@PROPERTY_SETTINGS
@given(case=honest_and_f(), seed=st.integers(0, 2**31))
def test_one_huge_adversary_destroys_the_mean(case, seed):
    updates, _ = case
    honest_mean = updates[:-1].mean(axis=0)
    result = aggregate("mean", with_huge_adversaries(updates, 1, seed), 1)
    assert np.linalg.norm(result - honest_mean) > 1e3 * np.abs(updates).max()


@pytest.mark.parametrize("name", ALL)
def test_bad_arguments_are_refused(name):
    with pytest.raises(TrainingError):
        make_aggregator(name)(np.zeros((4, 2)), 4)
    with pytest.raises(TrainingError):
        make_aggregator(name)(np.zeros(4), 0)


def test_aggregators_that_need_more_workers_say_so():
    with pytest.raises(TrainingError, match="n > 2f"):
        TrimmedMean()(np.zeros((4, 2)), 2)
    with pytest.raises(TrainingError, match="Krum needs"):
        Krum()(np.zeros((4, 2)), 2)
    with pytest.raises(TrainingError, match="unknown aggregator"):
        make_aggregator("average")


def test_weiszfeld_reports_iterations_and_stops_at_max_iter():
    points = np.random.default_rng(0).standard_normal((9, 5))
    converged = weiszfeld(points, max_iter=500, tol=1e-10)
    assert converged.converged and 1 < converged.iterations < 500
    capped = weiszfeld(points, max_iter=2, tol=1e-14)
    assert not capped.converged and capped.iterations == 2
    gradient = sum((converged.point - p) / np.linalg.norm(converged.point - p) for p in points)
    assert np.linalg.norm(gradient) < 1e-6  # the first-order condition of the geometric median
