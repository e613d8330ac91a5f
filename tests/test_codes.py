"""Conformance suite run against every code, plus what is specific to the repetition and cyclic codes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from code_rounds import DEVIATIONS, assert_explained, deviate, honest_round, relative_error

from robust_training.attacks import ATTACKS, Constant, GaussianNoise, SignFlip, choose_adversaries
from robust_training.codes import CODE_NAMES, CODES, Code, CyclicCode, DecodeResult, RepetitionCode, make_code
from robust_training.errors import DecodeError, TrainingError

ATTACK_NAMES = sorted(ATTACKS)

#: Sizes every registered code is checked at (those it accepts): odd and even r, negacyclic n = 10.
SIZES = [(9, 3), (9, 5), (10, 5), (12, 4), (15, 7), (25, 11)]
CODE_FACTORIES = {
    f"{name}-{n}-{r}": (lambda name=name, n=n, r=r: CODES[name](n, r))
    for name in sorted(CODES)
    for n, r in SIZES
    if name != "repetition" or n % r == 0
}


@pytest.fixture(params=sorted(CODE_FACTORIES), scope="module")
def code(request) -> Code:
    return CODE_FACTORIES[request.param]()


# ---- conformance: every code -----------------------------------------------------------------------------


def test_every_partition_is_computed_by_redundancy_workers(code):
    holders = np.zeros(code.n_partitions, dtype=int)
    for worker in range(code.n_workers):
        partitions = code.partitions_of(worker)
        assert len(set(partitions)) == len(partitions)
        holders[partitions] += 1
    assert np.all(holders * code.n_partitions == code.n_workers * len(code.partitions_of(0)))
    assert code.max_adversaries == (code.redundancy - 1) // 2


def test_encode_all_matches_per_worker_encode(code):
    updates, messages = honest_round(code, d=6, seed=1)
    for worker in range(code.n_workers):
        np.testing.assert_allclose(code.encode(worker, updates[code.partitions_of(worker)]), messages[worker])


@settings(max_examples=15, deadline=None)
@given(d=st.integers(1, 12), seed=st.integers(0, 2**31), log_scale=st.floats(-6, 6))
def test_adversary_free_decode_is_the_exact_sum(code, d, seed, log_scale):
    updates, messages = honest_round(code, d, seed, scale=10.0**log_scale)
    result = code.decode(messages)
    assert isinstance(result, DecodeResult)
    assert result.total.shape == (d,)
    assert result.flagged == []
    assert relative_error(result.total, updates.sum(axis=0)) <= 1e-9


@pytest.mark.parametrize("attack_name", ATTACK_NAMES)
def test_up_to_s_adversaries_change_nothing_and_are_flagged(code, attack_name):
    rng = np.random.default_rng(7)
    for n_adversaries in range(1, code.max_adversaries + 1):
        updates, messages = honest_round(code, d=9, seed=n_adversaries)
        adversaries = choose_adversaries(code.n_workers, n_adversaries, rng)
        if not code.correctable(adversaries):  # s per group, placed in the first group (the worst case)
            adversaries = list(range(n_adversaries))
        attacked = ATTACKS[attack_name]().apply(messages, adversaries, rng)
        result = code.decode(attacked)
        assert relative_error(result.total, updates.sum(axis=0)) <= 1e-6
        assert result.flagged == adversaries


def test_messages_of_the_wrong_shape_are_refused(code):
    with pytest.raises(TrainingError):
        code.decode(np.zeros((code.n_workers + 1, 3)))
    with pytest.raises(TrainingError):
        code.encode(0, np.zeros((len(code.partitions_of(0)) + 1, 3)))
    with pytest.raises(TrainingError):
        code.partitions_of(code.n_workers)


def test_a_non_finite_message_is_flagged_not_propagated(code):
    updates, messages = honest_round(code, d=5, seed=3)
    messages[1, 2] = np.inf
    messages[1, 0] = np.nan
    result = code.decode(messages)
    assert result.flagged == [1]
    assert relative_error(result.total, updates.sum(axis=0)) <= 1e-9


# ---- properties of every registered code (hypothesis) --------------------------------------------------


@st.composite
def registered_codes(draw) -> Code:
    """Any registered code at any size it accepts: n = r * groups (+ extra workers where allowed)."""
    name = draw(st.sampled_from(sorted(CODES)))
    redundancy = draw(st.integers(1, 7) | st.integers(1, 15))
    groups = draw(st.integers(1, max(1, 45 // redundancy)))
    extra = draw(st.integers(0, min(redundancy - 1, 45 - redundancy * groups)))
    seed = draw(st.integers(0, 3))
    try:
        return CODES[name](redundancy * groups + extra, redundancy, seed=seed)
    except TrainingError:  # e.g. repetition needs r | n
        return CODES[name](redundancy * groups, redundancy, seed=seed)


@st.composite
def rounds(draw, correctable: bool):
    """(code, updates, honest messages, adversaries, forged messages) with a correctable adversary set or
    not, deviations of every kind from 1e3 rtol (correctable; 1e-8 otherwise) to 1e15."""
    code = draw(registered_codes())
    n = code.n_workers
    if correctable:
        adversaries = draw(st.lists(st.integers(0, n - 1), unique=True, max_size=max(code.max_adversaries, 0)))
        assume(code.correctable(adversaries))
        low = np.log10(1e3 * code.rtol)
    else:  # s + 1, s + 2, ... workers in a random order, grown until the code cannot correct them
        order = draw(st.permutations(range(n)))
        count = min(n, code.max_adversaries + draw(st.integers(1, 2) | st.integers(1, n)))
        while code.correctable(order[:count]):
            count += 1
        adversaries = list(order[:count])
        low = -8.0
    magnitude = 10.0 ** draw(st.sampled_from([low, -3.0, 0.0, 3.0, 9.0, 12.0, 15.0]) | st.floats(low, 15.0))
    kind = draw(st.sampled_from(DEVIATIONS))
    seed = draw(st.integers(0, 2**31))
    scale = 10.0 ** draw(st.floats(-3, 3))
    updates, messages = honest_round(code, draw(st.integers(1, 12)), seed, scale)
    forged = deviate(messages, sorted(adversaries), kind, magnitude, np.random.default_rng(seed))
    return code, updates, messages, sorted(adversaries), forged


@settings(max_examples=120, deadline=None)
@given(case=rounds(correctable=True))
def test_a_correctable_set_of_deviating_workers_is_located_exactly_and_changes_nothing(case):
    code, updates, _, adversaries, forged = case
    result = code.decode(forged)
    assert result.flagged == adversaries
    assert relative_error(result.total, updates.sum(axis=0)) <= 1e-9


@settings(max_examples=200, deadline=None)
@given(case=rounds(correctable=False))
def test_beyond_what_a_code_corrects_it_raises_or_its_answer_is_explained_by_the_kept_messages(case):
    code, _, messages, _, forged = case
    try:
        result = code.decode(forged)
    except DecodeError:
        return
    assert_explained(code, forged, result.flagged, result.total, messages)


@settings(max_examples=40, deadline=None)
@given(case=rounds(correctable=True) | rounds(correctable=False))
def test_decoding_is_a_function_of_the_messages(case):
    code, _, _, _, forged = case
    twin = type(code)(code.n_workers, code.redundancy, seed=code.seed)
    outcomes = []
    for decoder in (code, code, twin):
        try:
            result = decoder.decode(forged)
            outcomes.append((result.flagged, result.total.tobytes()))
        except DecodeError as error:
            outcomes.append(str(error))
    assert outcomes[0] == outcomes[1] == outcomes[2]


# ---- cyclic code -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cyclic_45_21() -> CyclicCode:
    return CyclicCode(45, 21)


def adversary_sets(n: int, count: int, rng: np.random.Generator) -> list[list[int]]:
    """A random set, a contiguous block (the hardest pattern for a DFT code) and a wrapped block."""
    start = int(rng.integers(n))
    return [
        choose_adversaries(n, count, rng),
        list(range(count)),
        sorted((start + offset) % n for offset in range(count)),
    ]


@pytest.mark.parametrize("attack_name", ATTACK_NAMES)
def test_cyclic_is_exact_at_n45_s10_where_the_reference_fails(cyclic_45_21, attack_name):
    rng = np.random.default_rng(45)
    worst = 0.0
    for trial, adversaries in enumerate(adversary_sets(45, 10, rng)):
        updates, messages = honest_round(cyclic_45_21, d=32, seed=trial, scale=10.0 ** (trial - 1))
        result = cyclic_45_21.decode(ATTACKS[attack_name]().apply(messages, adversaries, rng))
        assert result.flagged == adversaries
        worst = max(worst, relative_error(result.total, updates.sum(axis=0)))
    assert worst <= 1e-6


@pytest.mark.parametrize(
    ("n_workers", "redundancy"),
    [(9, 3), (9, 5), (9, 7), (15, 5), (15, 7), (15, 11), (25, 5), (25, 11), (25, 15), (45, 3), (45, 11), (45, 31)],
)
def test_cyclic_is_exact_for_various_n_and_s(n_workers, redundancy):
    code = CyclicCode(n_workers, redundancy, seed=n_workers)
    rng = np.random.default_rng(redundancy)
    for attack_name in ATTACK_NAMES:
        for adversaries in adversary_sets(n_workers, code.max_adversaries, rng):
            updates, messages = honest_round(code, d=8, seed=len(adversaries))
            result = code.decode(ATTACKS[attack_name]().apply(messages, adversaries, rng))
            assert relative_error(result.total, updates.sum(axis=0)) <= 1e-6
            assert result.flagged == adversaries


@pytest.mark.parametrize(("n_workers", "redundancy"), [(9, 3), (15, 7), (25, 11), (45, 21), (10, 5)])
@pytest.mark.parametrize("attack_name", ATTACK_NAMES)
def test_cyclic_with_too_many_adversaries_raises_instead_of_returning_garbage(n_workers, redundancy, attack_name):
    """With s + 1 and s + 2 adversaries: DecodeError, or (never observed) the exact sum; never a wrong sum."""
    code = CyclicCode(n_workers, redundancy, seed=1)
    s = code.max_adversaries
    rng = np.random.default_rng(n_workers * 100 + redundancy)
    raised = 0
    for n_adversaries in (s + 1, s + 2):
        for adversaries in adversary_sets(n_workers, n_adversaries, rng):
            updates, messages = honest_round(code, d=8, seed=n_adversaries)
            attacked = ATTACKS[attack_name]().apply(messages, adversaries, rng)
            try:
                result = code.decode(attacked)
            except DecodeError as error:
                assert "cannot decode" in str(error)
                raised += 1
            else:
                assert relative_error(result.total, updates.sum(axis=0)) <= 1e-6
    assert raised > 0


def test_cyclic_consensus_fallback_decodes_clustered_adversaries_at_large_s():
    """r = n = 45 (s = 22) with 22 consecutive sign-flippers: the Hankel locator alone fails here."""
    code = CyclicCode(45, 45)
    rng = np.random.default_rng(0)
    for _ in range(30):
        adversaries = sorted(int(w) for w in (int(rng.integers(45)) + np.arange(22)) % 45)
        updates = rng.standard_normal((45, 6)) * 10.0 ** rng.uniform(-4, 4)
        result = code.decode(SignFlip().apply(code.encode_all(updates), adversaries, rng))
        assert result.flagged == adversaries
        assert relative_error(result.total, updates.sum(axis=0)) <= 1e-9


@pytest.mark.parametrize(("n_workers", "redundancy"), [(15, 7), (45, 21)])
def test_cyclic_mixed_scale_adversaries_are_all_found(n_workers, redundancy):
    """One adversary at 1e200 hides the others' deviations from the Hankel locator; the fallback finds them."""
    code = CyclicCode(n_workers, redundancy)
    rng = np.random.default_rng(5)
    adversaries = choose_adversaries(n_workers, code.max_adversaries, rng)
    updates, messages = honest_round(code, d=6, seed=1)
    attacked = Constant().apply(messages, adversaries, rng)
    attacked[adversaries[0]] = 1e200
    result = code.decode(attacked)
    assert result.flagged == adversaries
    assert relative_error(result.total, updates.sum(axis=0)) <= 1e-9


def test_colluders_along_a_codeword_fool_any_decoder_as_documented():
    """The limit of every decoder (distance 2s + 1): s + 1 adversaries who know W shift partition 0.

    They add W[i, 0] * v to their messages; the received word is then within s rows of the codeword of
    updates whose partition 0 is g_0 + v, so the decode returns sum + v and blames the honest holders.
    """
    code = CyclicCode(15, 7)
    s = code.max_adversaries
    holders_of_0 = [worker for worker in range(15) if 0 in code.partitions_of(worker)]
    colluders, blamed = holders_of_0[: s + 1], holders_of_0[s + 1 :]
    updates, messages = honest_round(code, d=4, seed=0)
    shift = np.array([1.0, -2.0, 3.0, 0.5])
    forged = messages.copy()
    forged[colluders] += code.encoding_matrix[colluders, 0][:, None] * shift
    result = code.decode(forged)
    assert result.flagged == blamed
    np.testing.assert_allclose(result.total, updates.sum(axis=0) + shift, rtol=1e-9)


def test_cyclic_encoding_matrix_is_supported_on_the_assignment_and_well_scaled(cyclic_45_21):
    weights = cyclic_45_21.encoding_matrix
    for worker in range(45):
        held = np.zeros(45, dtype=bool)
        held[cyclic_45_21.partitions_of(worker)] = True
        assert np.all(weights[worker, ~held] == 0.0)
        assert np.all(weights[worker, held] != 0.0)
    np.testing.assert_allclose(weights.sum(axis=0), 1.0, rtol=1e-12)
    assert np.abs(weights).max() < 0.2  # the reference's construction reaches 1.8e5 here


def test_negacyclic_case_still_recovers_the_sum_functional():
    code = CyclicCode(44, 21)
    functional = code._sum_functional
    np.testing.assert_allclose(functional @ code.encoding_matrix, 1.0, rtol=1e-12)
    assert np.abs(code.encoding_matrix).max() < 10


def test_cyclic_refuses_sizes_it_cannot_decode_in_float64():
    with pytest.raises(TrainingError, match="cannot decode reliably"):
        CyclicCode(99, 41)
    with pytest.raises(TrainingError):
        CyclicCode(5, 6)


def test_cyclic_without_redundancy_is_a_plain_sum():
    code = CyclicCode(6, 1)
    updates, messages = honest_round(code, d=4, seed=0)
    np.testing.assert_allclose(messages, updates)
    np.testing.assert_allclose(code.decode(messages).total, updates.sum(axis=0))


def test_cyclic_with_r2_detects_what_it_cannot_correct():
    code = CyclicCode(6, 2)
    updates, messages = honest_round(code, d=4, seed=0)
    np.testing.assert_allclose(code.decode(messages).total, updates.sum(axis=0))
    with pytest.raises(DecodeError, match="corrects none"):
        code.decode(SignFlip().apply(messages, [3], np.random.default_rng(0)))


# ---- repetition code -------------------------------------------------------------------------------------


def test_repetition_needs_n_divisible_by_r():
    with pytest.raises(TrainingError, match="10 workers cannot form groups of 3"):
        RepetitionCode(10, 3)


def test_repetition_tolerance_lets_only_tiny_deviations_through():
    code = RepetitionCode(9, 3, rtol=1e-6)
    updates, messages = honest_round(code, d=4, seed=0)
    slipped = messages.copy()
    slipped[0] += 0.5e-6 * np.abs(messages[0]).max()  # within tolerance: goes through, sum moves that much
    result = code.decode(slipped)
    assert result.flagged == []
    assert np.abs(result.total - updates.sum(axis=0)).max() <= 1e-6 * np.abs(messages).max()
    caught = messages.copy()
    caught[0] += 1e-3 * np.abs(messages[0]).max()
    result = code.decode(caught)
    assert result.flagged == [0]
    np.testing.assert_allclose(result.total, updates.sum(axis=0), rtol=1e-12)


def test_repetition_tolerance_is_relative_to_the_smaller_message_not_the_forgery():
    """At rtol = 0.5 a forgery 2h sent first agreed with h under max(|a|, |b|) and became the answer: the
    group's contribution moved by |h|, twice the stated slip rtol * |h|."""
    code = RepetitionCode(3, 3, rtol=0.5)
    updates, messages = honest_round(code, d=4, seed=0)
    messages[0] = 2 * messages[1]
    result = code.decode(messages)
    assert result.flagged == [0]
    np.testing.assert_allclose(result.total, updates.sum(axis=0))


def test_repetition_without_a_strict_majority_raises_naming_the_group():
    code = RepetitionCode(9, 3)
    _, messages = honest_round(code, d=4, seed=0)
    attacked = GaussianNoise().apply(messages, [3, 4], np.random.default_rng(0))  # two different forgeries
    with pytest.raises(DecodeError, match=r"group 1 \(workers 3\.\.5\)"):
        code.decode(attacked)


@pytest.mark.parametrize("attack_name", ATTACK_NAMES)
def test_repetition_with_more_than_s_adversaries_raises_or_reports_the_split(attack_name):
    """s + 1 of r = 5: distinct forgeries leave no strict majority (DecodeError naming the group); colluding
    identical ones outvote the honest pair, which is then flagged: never a changed sum without a word."""
    code = RepetitionCode(10, 5)
    updates, messages = honest_round(code, d=6, seed=8)
    attacked = ATTACKS[attack_name]().apply(messages, [5, 6, 7], np.random.default_rng(0))
    try:
        result = code.decode(attacked)
    except DecodeError as error:
        assert "group 1 (workers 5..9)" in str(error)
    else:
        assert result.flagged == [8, 9]
        assert relative_error(result.total, updates.sum(axis=0)) > 1e-3


def test_repetition_trusts_an_agreeing_majority_as_documented():
    """s + 1 colluding replicas that agree are the group's majority: undetectable, as for any vote."""
    code = RepetitionCode(9, 3)
    updates, messages = honest_round(code, d=4, seed=0)
    attacked = Constant(-100.0).apply(messages, [0, 1], np.random.default_rng(0))
    result = code.decode(attacked)
    assert result.flagged == [2]
    np.testing.assert_allclose(result.total, updates[1:].sum(axis=0) - 100.0)


def test_repetition_outvoted_first_replica_cannot_cancel_other_groups():
    """A huge forged first replica must not swallow the other groups' contributions in the sum."""
    code = RepetitionCode(9, 3)
    updates, messages = honest_round(code, d=4, seed=0)
    messages[3] = 1e300
    messages[6] = -np.inf
    result = code.decode(messages)
    assert result.flagged == [3, 6]
    np.testing.assert_allclose(result.total, updates.sum(axis=0), rtol=1e-12)


def test_repetition_tolerates_s_adversaries_in_every_group_at_once():
    code = RepetitionCode(15, 5)
    updates, messages = honest_round(code, d=6, seed=2)
    adversaries = [0, 1, 5, 6, 10, 11]
    result = code.decode(ATTACKS["reverse"]().apply(messages, adversaries, np.random.default_rng(0)))
    assert result.flagged == adversaries
    np.testing.assert_allclose(result.total, updates.sum(axis=0))


# ---- factory ---------------------------------------------------------------------------------------------


def test_make_code_builds_each_registered_code_by_name():
    assert make_code("none", 9, 3) is None
    assert CODE_NAMES == ("none", *CODES)
    assert CODES == {"repetition": RepetitionCode, "cyclic": CyclicCode}
    for name, code_class in CODES.items():
        assert code_class.name == name
        assert isinstance(make_code(name, 9, 3), code_class)
    with pytest.raises(TrainingError, match="unknown code"):
        make_code("fountain", 9, 3)


# ---- repetition vote: the fast vote is the pairwise vote -------------------------------------------------


def pairwise_vote(replicas: np.ndarray, rtol: float, atol: float) -> tuple[int, list[int]] | int:
    """The straightforward O(r^2 d) vote the docstring states: (answer, members agreeing with it), or the
    size of the largest agreeing set when there is no strict majority."""
    with np.errstate(invalid="ignore", over="ignore"):
        norms = np.abs(replicas).max(axis=1)
        distance = np.abs(replicas[:, None, :] - replicas[None, :, :]).max(axis=2)
        agree = distance <= atol + rtol * np.minimum(norms[:, None], norms[None, :])
    finite = np.isfinite(norms)
    agree &= finite[:, None] & finite[None, :]
    counts = agree.sum(axis=1)
    winner = int(np.argmax(counts))
    if 2 * counts[winner] <= len(replicas):
        return int(counts[winner])
    return winner, [int(member) for member in np.flatnonzero(agree[winner])]


# How a forged replica sits relative to the honest value h, in units of the tolerance t = atol + rtol |h|:
# just inside, on, or just outside it; far off; a clone of another forgery; non-finite; a near-equal twin.
FORGERIES = st.sampled_from(["inside", "edge", "outside", "far", "clone", "nan", "inf", "twin", "huge"])


@st.composite
def repetition_rounds(draw):
    redundancy = draw(st.integers(1, 9))
    n_groups = draw(st.integers(1, 3))
    dimension = draw(st.integers(1, 200))
    rtol = draw(st.sampled_from([0.0, 1e-9, 1e-3, 0.5]))
    atol = draw(st.sampled_from([0.0, 1e-12, 1e-3]))
    seed = draw(st.integers(0, 2**31))
    forged = [[draw(st.none() | FORGERIES) for _ in range(redundancy)] for _ in range(n_groups)]
    return redundancy, n_groups, dimension, rtol, atol, seed, forged


def forge(honest: np.ndarray, kind: str, tolerance: float, rng: np.random.Generator, previous: np.ndarray | None):
    direction = np.zeros_like(honest)
    direction[rng.integers(len(honest))] = rng.choice([-1.0, 1.0])  # one coordinate: the inf-norm is exact
    if kind == "far":
        return honest + rng.standard_normal(len(honest)) * (1 + np.abs(honest).max())
    if kind == "clone" and previous is not None:
        return previous.copy()
    if kind in ("nan", "inf"):
        forged = honest.copy()
        forged[rng.integers(len(honest))] = np.nan if kind == "nan" else np.inf
        return forged
    if kind == "huge":
        return honest + 1e300 * direction
    factor = {"inside": 0.999, "edge": 1.0, "outside": 1.001, "twin": 1e-14, "clone": 3.0}[kind]
    return honest + factor * tolerance * direction


@settings(max_examples=300, deadline=None)
@given(case=repetition_rounds())
def test_repetition_vote_equals_the_pairwise_vote(case):
    redundancy, n_groups, dimension, rtol, atol, seed, forged = case
    rng = np.random.default_rng(seed)
    code = RepetitionCode(redundancy * n_groups, redundancy, rtol=rtol, atol=atol, seed=seed)
    updates = rng.standard_normal((n_groups, dimension)) * 10.0 ** rng.integers(-3, 4)
    messages = code.encode_all(updates)
    for group, kinds in enumerate(forged):
        honest = updates[group]
        tolerance = atol + rtol * np.abs(honest).max()
        previous = None
        for member, kind in enumerate(kinds):
            if kind is not None:
                messages[group * redundancy + member] = forge(honest, kind, tolerance, rng, previous)
                previous = messages[group * redundancy + member]
    expected_total, expected_flagged, expected_error = None, [], None
    with np.errstate(over="ignore", invalid="ignore"):
        for group in range(n_groups):
            outcome = pairwise_vote(messages[group * redundancy : (group + 1) * redundancy], rtol, atol)
            if isinstance(outcome, int):
                expected_error = (f"group {group} (workers {group * redundancy}..{(group + 1) * redundancy - 1}) "
                                  f"has no strict majority of agreeing replicas: the largest agreeing set has "
                                  f"{outcome} of {redundancy}.")
                break
            winner, agreeing = outcome
            answer = messages[group * redundancy + winner]
            expected_total = answer.copy() if expected_total is None else expected_total + answer
            expected_flagged += [group * redundancy + m for m in range(redundancy) if m not in agreeing]
    if expected_error is not None:
        with pytest.raises(DecodeError) as raised:
            code.decode(messages)
        assert expected_error in str(raised.value)
        return
    result = code.decode(messages)
    assert result.flagged == expected_flagged
    assert result.total.tobytes() == expected_total.tobytes()


def test_repetition_long_messages_scanned_in_parallel_ranges_are_decoded_exactly():
    code = RepetitionCode(9, 3)
    updates, messages = honest_round(code, d=600_000, seed=4)
    messages[0, -1] += 1.0  # only the last column differs: found by the last range's scan
    messages[4, 1] = np.nan
    result = code.decode(messages)
    assert result.flagged == [0, 4]
    assert result.total.tobytes() == updates.sum(axis=0).tobytes()
