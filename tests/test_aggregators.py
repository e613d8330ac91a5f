"""One property suite driven by the registry and the rules' declared tags (in the spirit of scikit-learn's
parametrize_with_checks): registering a rule is what gets it tested."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robust_training.aggregators import (
    AGGREGATORS,
    PRE_AGGREGATIONS,
    InfeasibleAggregationError,
    Krum,
    TrimmedMean,
    check_feasible,
    make_aggregator,
    weiszfeld,
)
from robust_training.errors import TrainingError

#: Every rule, and every pre-aggregation in front of a coordinate-wise and a distance-based rule.
ALL = list(AGGREGATORS) + [f"{stage}+{rule}" for stage in PRE_AGGREGATIONS for rule in ("median", "krum")]
PROPERTY_SETTINGS = settings(max_examples=20, deadline=None)


def tags(name: str):
    return make_aggregator(name).tags


def names_where(predicate) -> list[str]:
    return [name for name in ALL if predicate(tags(name))]


@st.composite
def feasible_case(draw, name: str):
    """(updates, f) with as many workers as the rule declares it needs for f adversaries; rows distinct a.s."""
    f = draw(st.integers(0, 3))
    n = draw(st.integers(0, 5)) + make_aggregator(name).min_workers(f)
    d = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31))
    scale = 10.0 ** draw(st.floats(-3, 3))
    return scale * np.random.default_rng(seed).standard_normal((n, d)), f


def aggregate(name: str, updates: np.ndarray, f: int) -> np.ndarray:
    """A fresh instance per call: rules with memory (centered clipping) or a generator (bucketing) start
    from the same state every time."""
    if name == "geomedian":  # tight tolerance so that properties of the exact minimiser are visible
        return AGGREGATORS["geomedian"](max_iter=2000, tol=1e-12)(updates, f)
    return make_aggregator(name)(updates, f)


def assert_close(name: str, actual: np.ndarray, expected: np.ndarray, scale: float) -> None:
    np.testing.assert_allclose(actual, expected, rtol=0, atol=tags(name).tolerance * scale)


@pytest.mark.parametrize("name", ALL)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_output_is_one_d_vector(name, data):
    updates, f = data.draw(feasible_case(name))
    assert aggregate(name, updates, f).shape == (updates.shape[1],)


@pytest.mark.parametrize("name", names_where(lambda t: t.permutation_invariant))
@PROPERTY_SETTINGS
@given(data=st.data(), seed=st.integers(0, 2**31))
def test_permutation_invariance(name, data, seed):
    updates, f = data.draw(feasible_case(name))
    order = np.random.default_rng(seed).permutation(updates.shape[0])
    assert_close(name, aggregate(name, updates[order], f), aggregate(name, updates, f), np.abs(updates).max())


@pytest.mark.parametrize("name", names_where(lambda t: t.unanimous))
@PROPERTY_SETTINGS
@given(data=st.data())
def test_identical_updates_give_that_update(name, data):
    updates, f = data.draw(feasible_case(name))
    identical = np.repeat(updates[:1], updates.shape[0], axis=0)
    np.testing.assert_allclose(aggregate(name, identical, f), updates[0], rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("name", names_where(lambda t: t.translation_equivariant))
@PROPERTY_SETTINGS
@given(data=st.data(), shift_seed=st.integers(0, 2**31))
def test_translation_equivariance(name, data, shift_seed):
    updates, f = data.draw(feasible_case(name))
    shift = np.abs(updates).max() * np.random.default_rng(shift_seed).standard_normal(updates.shape[1])
    scale = np.abs(updates).max() + np.abs(shift).max()
    assert_close(name, aggregate(name, updates + shift, f), aggregate(name, updates, f) + shift, 1e2 * scale)


@pytest.mark.parametrize("name", names_where(lambda t: t.scale_equivariant))
@PROPERTY_SETTINGS
@given(data=st.data(), exponent=st.sampled_from([-150, -12, -6, 6, 12, 150]))
def test_scale_equivariance(name, data, exponent):
    """agg(c X) = c agg(X) for c > 0, down to update sizes of 1e-150 and up to 1e150."""
    updates, f = data.draw(feasible_case(name))
    factor = 10.0**exponent
    expected = factor * aggregate(name, updates, f)
    np.testing.assert_allclose(aggregate(name, factor * updates, f), expected, rtol=0,
                               atol=tags(name).tolerance * factor * np.abs(updates).max())


def with_huge_adversaries(updates: np.ndarray, f: int, seed: int) -> np.ndarray:
    """The last f rows replaced by values of 1e6 to 1e7 times the honest scale, random signs."""
    attacked = updates.copy()
    if f:
        rng = np.random.default_rng(seed)
        signs = rng.choice([-1.0, 1.0], size=(f, updates.shape[1]))
        attacked[-f:] = 1e6 * np.abs(updates).max() * signs * rng.uniform(1.0, 10.0, size=(f, updates.shape[1]))
    return attacked


def assert_in_honest_box(result: np.ndarray, honest: np.ndarray) -> None:
    slack = 1e-9 * np.abs(honest).max()
    assert np.all(result >= honest.min(axis=0) - slack)
    assert np.all(result <= honest.max(axis=0) + slack)


@pytest.mark.parametrize("name", names_where(lambda t: t.far_outliers_ignored))
@PROPERTY_SETTINGS
@given(data=st.data(), seed=st.integers(0, 2**31))
def test_robust_aggregators_stay_in_the_honest_bounding_box(name, data, seed):
    updates, f = data.draw(feasible_case(name))
    result = aggregate(name, with_huge_adversaries(updates, f, seed), f)
    assert_in_honest_box(result, updates[: updates.shape[0] - f])


@pytest.mark.parametrize("name", names_where(lambda t: t.selects_a_row))
@PROPERTY_SETTINGS
@given(data=st.data(), seed=st.integers(0, 2**31))
def test_selecting_rules_pick_an_honest_update_under_their_bound(name, data, seed):
    updates, f = data.draw(feasible_case(name))
    result = aggregate(name, with_huge_adversaries(updates, f, seed), f)
    assert any(np.array_equal(result, row) for row in updates[: updates.shape[0] - f])


@PROPERTY_SETTINGS
@given(data=st.data(), seed=st.integers(0, 2**31))
def test_geometric_median_stays_near_the_honest_points(data, seed):
    """||z - mean_H|| <= 2(n - f)/(n - 2f) * max_H ||x_i - mean_H|| (Lopuhaa & Rousseeuw, 1991)."""
    updates, f = data.draw(feasible_case("geomedian"))
    n = updates.shape[0]
    honest = updates[: n - f]
    center = honest.mean(axis=0)
    result = aggregate("geomedian", with_huge_adversaries(updates, f, seed), f)
    bound = 2 * (n - f) / (n - 2 * f) * np.linalg.norm(honest - center, axis=1).max()
    assert np.linalg.norm(result - center) <= bound * (1 + 1e-6) + 1e-12


@PROPERTY_SETTINGS
@given(data=st.data(), seed=st.integers(0, 2**31))
def test_one_huge_adversary_destroys_the_mean(data, seed):
    updates, _ = data.draw(feasible_case("krum"))
    honest_mean = updates[:-1].mean(axis=0)
    result = aggregate("mean", with_huge_adversaries(updates, 1, seed), 1)
    assert np.linalg.norm(result - honest_mean) > 1e3 * np.abs(updates).max()


# -- item 4: extreme rows --------------------------------------------------------------------------------

NON_FINITE = [np.inf, -np.inf, np.nan]
HUGE = [1e308, -1e308, 1e300, 1e200]


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("value", NON_FINITE)
def test_a_non_finite_row_is_excluded_reported_and_counted_as_an_adversary(name, value):
    updates = np.random.default_rng(0).standard_normal((15, 8))
    attacked = updates.copy()
    attacked[6, 3] = value
    report = make_aggregator(name).explain(attacked, 2)
    assert report.excluded == [6]
    np.testing.assert_array_equal(report.point, make_aggregator(name)(np.delete(updates, 6, axis=0), 1))


@pytest.mark.parametrize("name", [name for name in ALL if tags(name).requirement.factor > 0])
@pytest.mark.parametrize("value", HUGE)
def test_one_huge_finite_row_among_fifteen_leaves_robust_rules_finite_and_near_the_honest_rows(name, value):
    """One row of 1e308 (or 1e200) made the geometric median NaN: squared distances overflowed."""
    updates = np.random.default_rng(1).standard_normal((15, 8))
    updates[4] = value
    honest = np.delete(updates, 4, axis=0)
    result = aggregate(name, updates, 1)
    assert np.all(np.isfinite(result))
    if tags(name).far_outliers_ignored:
        assert_in_honest_box(result, honest)
    else:
        assert np.abs(result).max() < 1e3


def test_every_update_non_finite_is_refused():
    with pytest.raises(TrainingError, match="NaN or infinity"):
        make_aggregator("median")(np.full((5, 3), np.nan), 1)


def test_geometric_median_is_scale_equivariant_at_tiny_updates():
    """At an update scale of 1e-12 an absolute smoothing eps made every weight equal: the plain mean."""
    updates = np.random.default_rng(2).standard_normal((15, 6))
    updates[:3] += 40.0  # three far rows pull the mean but not the median
    unit = aggregate("geomedian", updates, 3)
    tiny = aggregate("geomedian", 1e-12 * updates, 3)
    assert np.linalg.norm(updates.mean(axis=0) - unit) > 1.0
    np.testing.assert_allclose(tiny, 1e-12 * unit, rtol=0, atol=1e-9 * 1e-12 * np.abs(updates).max())


def test_weiszfeld_says_when_it_stops_without_converging(caplog):
    points = np.random.default_rng(0).standard_normal((9, 5))
    converged = weiszfeld(points, max_iter=500, tol=1e-10)
    assert converged.converged and 1 < converged.iterations < 500
    with caplog.at_level(logging.WARNING, logger="robust_training.aggregators.geometric"):
        capped = weiszfeld(points, max_iter=2, tol=1e-14)
    assert not capped.converged and capped.iterations == 2
    assert "before its step fell below" in caplog.text
    gradient = sum((converged.point - p) / np.linalg.norm(converged.point - p) for p in points)
    assert np.linalg.norm(gradient) < 1e-6  # the first-order condition of the geometric median


@pytest.mark.parametrize("name", ["krum", "multikrum", "bulyan", "mda", "nnm+krum"])
def test_distance_rules_are_unmoved_by_a_large_shared_offset(name):
    """|a|^2 + |b|^2 - 2a.b loses every digit when the updates share an offset 1e7 times their spread:
    Krum then picked a Byzantine row. With the offset the choice must be exactly the offset-free one."""
    rng = np.random.default_rng(3)
    wrong = 0
    for _ in range(40):
        updates = rng.standard_normal((15, 50))
        updates[-3:] = updates[:12].mean(axis=0) + 2.0 * rng.standard_normal((3, 50))  # near, but not nearest
        offset = 1e7 * (1.0 + rng.random(50))
        shifted = aggregate(name, updates + offset, 3) - offset
        wrong += not np.allclose(shifted, aggregate(name, updates, 3), rtol=0, atol=1e-6)
    assert wrong == 0


# -- item 7: where we differ from ByzFL -------------------------------------------------------------------


def test_krum_scores_use_blanchards_n_minus_f_minus_2_neighbours_not_byzfls_n_minus_f_minus_1():
    """1-D points 1, -2, -1, -7, 5 with f = 1. Squared distances to the nearest others:
    1: 4, 9, 16; -2: 1, 9, 25; -1: 1, 4, 36; -7: 25, 36; 5: 16, 36.
    Blanchard et al. (n - f - 2 = 2 neighbours): scores 13, 10, 5, 61, 52 -> -1.
    ByzFL (mean over n - f - 1 = 3): 29/3, 35/3, 41/3, ... -> 1."""
    points = np.array([[1.0], [-2.0], [-1.0], [-7.0], [5.0]])
    assert Krum()(points, 1)[0] == -1.0


def test_geometric_median_converges_where_byzfls_three_steps_stop_short():
    """ByzFL's default: from zero, distances floored at an absolute 0.1, three Weiszfeld steps."""
    points = np.random.default_rng(40).standard_normal((15, 10)) + 3.0
    points[:3] *= 20.0
    three_steps = np.zeros(10)
    for _ in range(3):
        weights = 1.0 / np.maximum(np.linalg.norm(points - three_steps, axis=1), 0.1)
        three_steps = weights @ points / weights.sum()
    ours = aggregate("geomedian", points, 3)
    gradient = sum((ours - p) / np.linalg.norm(ours - p) for p in points)
    assert np.linalg.norm(gradient) < 1e-6
    assert np.linalg.norm(three_steps - ours) > 0.1


# -- the new rules against their definitions -----------------------------------------------------------


def test_bulyan_hand_computed():
    """n = 7, f = 1 (n >= 4f + 3): theta = 5 Krum picks, then per coordinate the mean of the beta = 3 picks
    nearest their median. 1-D points 0..5 and 100; Krum with max(remaining - 3, 1) neighbours:
    7 left, 4 neighbours: scores 30 15 10 10 15 30 (100: huge), tie 2 | 3 -> 2 (smaller sum);
    6 left, 3: 0: 26, 1: 14, 3: 6, 4: 11, 5: 21 -> 3;  5 left, 2: 17 10 10 17 -> 1 (tie with 4);
    4 left, 1: 0: 16, 4: 1, 5: 1 -> 4;  3 left, 1: 0: 25, 5: 25 -> 0.
    S = {0, 1, 2, 3, 4}, median 2, nearest three 1, 2, 3 -> 2. The second coordinate -x gives -2 (all
    row sums are 0 there, so ties go to the smaller norm: the same picks)."""
    points = np.array([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0], [100.0]])
    assert make_aggregator("bulyan")(points, 1)[0] == 2.0
    points_2d = np.column_stack([points[:, 0], -points[:, 0]])
    np.testing.assert_array_equal(make_aggregator("bulyan")(points_2d, 1), [2.0, -2.0])
    assert make_aggregator("bulyan")(points[::-1], 1)[0] == 2.0


def test_centered_clipping_hand_computed_and_remembers_its_center():
    """v = 0: x = (3, 4) at distance 5 clipped to radius 1 -> (0.6, 0.8); x = (0.5, 0) kept;
    v = mean = (0.55, 0.4). The next call starts from there."""
    rule = AGGREGATORS["cc"](radius=1.0)
    points = np.array([[3.0, 4.0], [0.5, 0.0]])
    first = rule(points, 0)
    np.testing.assert_allclose(first, [0.55, 0.4])
    second = rule(points, 0)
    to_far = np.array([3.0, 4.0]) - first
    clipped = to_far / np.linalg.norm(to_far)
    np.testing.assert_allclose(second, first + (clipped + (np.array([0.5, 0.0]) - first)) / 2)


@pytest.mark.parametrize("seed", range(15))
def test_mda_has_the_smallest_diameter_of_all_subsets(seed):
    from itertools import combinations

    rng = np.random.default_rng(seed)
    n = int(rng.integers(4, 10))
    f = int(rng.integers(1, (n - 1) // 2 + 1))
    points = rng.standard_normal((n, 3))
    distances = np.linalg.norm(points[:, None] - points[None], axis=2)
    best = min(distances[np.ix_(s, s)].max() for s in combinations(range(n), n - f))
    result = make_aggregator("mda")(points, f)
    matches = [s for s in combinations(range(n), n - f) if np.allclose(points[list(s)].mean(axis=0), result)]
    assert matches and distances[np.ix_(matches[0], matches[0])].max() == pytest.approx(best)


def test_monna_averages_the_n_minus_f_nearest_to_the_pivot():
    points = np.array([[0.0], [1.0], [-3.0], [10.0], [0.5]])  # pivot 0: nearest 3 are 0, 0.5, 1
    assert make_aggregator("monna")(points, 2)[0] == pytest.approx(0.5)


def test_nnm_replaces_each_row_by_the_mean_of_its_n_minus_f_nearest():
    points = np.array([[0.0], [1.0], [3.0], [10.0]])
    mixed = make_aggregator("nnm+mean").stages[0].transform(points, 2)
    np.testing.assert_allclose(mixed[:, 0], [0.5, 0.5, 2.0, 6.5])


def test_bucketing_averages_disjoint_buckets_covering_every_row():
    """Rows 1, 2, 4, 8, 16: a bucket's sum, written in binary, names its members."""
    points = np.array([[1.0], [2.0], [4.0], [8.0], [16.0]])
    buckets = make_aggregator("bucketing+mean").stages[0].transform(points, 1)
    sums = np.rint(buckets[:, 0] * [2, 2, 1]).astype(int)  # two full buckets, then the remainder
    assert [bin(s).count("1") for s in sums] == [2, 2, 1]
    assert np.bitwise_or.reduce(sums) == 31 and sums.sum() == 31  # disjoint, and every row in one


def test_static_clipping_bounds_norms_and_keeps_directions():
    points = np.array([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    clipped = make_aggregator("clip+mean").stages[0].transform(points, 0)
    np.testing.assert_allclose(clipped, [[1.2, 1.6], [0.3, 0.4], [0.0, 0.0]])


def test_trimmed_mean_and_median_match_their_definitions():
    updates = np.random.default_rng(5).standard_normal((11, 40))
    np.testing.assert_allclose(make_aggregator("median")(updates, 2), np.median(updates, axis=0), rtol=0, atol=0)
    expected = np.partition(updates, (2, 8), axis=0)[2:9].mean(axis=0)
    np.testing.assert_allclose(TrimmedMean()(updates, 2), expected, rtol=1e-15, atol=1e-15)


# -- feasibility, names ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_feasibility_is_checkable_before_training_and_matches_the_call(name):
    rule = make_aggregator(name)
    for f in range(4):
        n = rule.min_workers(f)
        check_feasible(name, n, f)
        rule(np.random.default_rng(0).standard_normal((n, 3)), f)
        if n - 1 > f:
            with pytest.raises(InfeasibleAggregationError) as refused:
                check_feasible(name, n - 1, f)
            assert str(refused.value).count(". ") == 0 and str(refused.value).endswith(".")
            with pytest.raises(InfeasibleAggregationError):
                rule(np.zeros((n - 1, 3)), f)


def test_declared_requirements_are_the_papers():
    assert [make_aggregator(name).min_workers(2) for name in ("krum", "bulyan", "median", "geomedian", "mean")] \
        == [7, 11, 5, 5, 3]
    assert make_aggregator("bucketing+krum").min_workers(2) == 13  # ceil(13 / 2) = 7 buckets > 2f + 2


@pytest.mark.parametrize("name", ALL)
def test_bad_arguments_are_refused(name):
    with pytest.raises(TrainingError):
        make_aggregator(name)(np.zeros((4, 2)), 4)
    with pytest.raises(TrainingError):
        make_aggregator(name)(np.zeros(4), 0)


def test_aggregators_that_need_more_workers_say_so():
    with pytest.raises(TrainingError, match="n > 2f"):
        TrimmedMean()(np.zeros((4, 2)), 2)
    with pytest.raises(TrainingError, match=r"krum needs n > 2f \+ 2"):
        Krum()(np.zeros((4, 2)), 2)
    with pytest.raises(TrainingError, match="unknown aggregator"):
        make_aggregator("average")
    with pytest.raises(TrainingError, match="unknown pre-aggregation"):
        make_aggregator("mix+krum")
