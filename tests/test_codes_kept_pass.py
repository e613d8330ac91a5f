"""The cyclic decode's one pass over the kept rows (`kept_pass`) against numpy on the same numbers."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from robust_training.codes.kept_pass import kept_rows_pass


@st.composite
def passes(draw):
    """(messages, kept row ids, combination) of every shape the tiles and column blocks cut unevenly."""
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    n = draw(st.integers(1, 45))
    d = draw(st.sampled_from([1, 7, 511, 512, 513]) | st.integers(1, 1500))
    kept = np.sort(rng.choice(n, draw(st.integers(1, n)), replace=False))
    combination = rng.standard_normal((draw(st.integers(1, 22)), kept.size))
    messages = rng.standard_normal((n, d)) * 10.0 ** draw(st.floats(-3, 3))
    return messages, kept, combination


@settings(max_examples=60, deadline=None)
@given(case=passes())
def test_the_pass_is_the_product_of_the_kept_rows(case):
    messages, kept, combination = case
    result = kept_rows_pass(messages, kept, combination)
    product = combination @ messages[kept]
    scale = np.linalg.norm(combination) * np.linalg.norm(messages[kept])
    assert np.abs(result.total - product[-1]).max() <= 1e-13 * scale
    assert abs(result.residual - np.linalg.norm(product[:-1])) <= 1e-13 * scale
    np.testing.assert_allclose(result.norms, np.linalg.norm(messages[kept], axis=1), rtol=1e-13)


@settings(max_examples=30, deadline=None)
@given(case=passes(), forged=st.sampled_from([np.nan, np.inf, -np.inf, 1e308]))
def test_removed_rows_are_never_read(case, forged):
    """A removed row of NaN, inf or 1e308 changes no bit of the result (it would, through rounding or
    0 * inf, if it entered the product with a zero coefficient)."""
    messages, kept, combination = case
    removed = np.setdiff1d(np.arange(messages.shape[0]), kept)
    spoiled = messages.copy()
    spoiled[removed] = forged
    clean, dirty = kept_rows_pass(messages, kept, combination), kept_rows_pass(spoiled, kept, combination)
    assert clean.total.tobytes() == dirty.total.tobytes()
    assert clean.residual == dirty.residual
    assert clean.norms.tobytes() == dirty.norms.tobytes()


def test_non_finite_kept_rows_give_a_non_finite_residual():
    rng = np.random.default_rng(0)
    messages = rng.standard_normal((9, 700))
    messages[4, 650] = np.nan
    assert not np.isfinite(kept_rows_pass(messages, np.arange(9), rng.standard_normal((3, 9))).residual)


def test_huge_and_tiny_rows_keep_their_residual():
    """Squares of 1e200 overflow and of 1e-160 underflow: the pass rescales the checks exactly instead."""
    rng = np.random.default_rng(1)
    messages = rng.standard_normal((12, 600))
    combination = rng.standard_normal((5, 12))
    reference = kept_rows_pass(messages, np.arange(12), combination)
    for scale in (1e200, 1e-160):
        scaled = kept_rows_pass(messages * scale, np.arange(12), combination)
        assert abs(scaled.residual / scale - reference.residual) <= 1e-12 * reference.residual
        np.testing.assert_allclose(scaled.norms / scale, reference.norms, rtol=1e-12)


def test_the_pass_is_a_function_of_its_inputs():
    rng = np.random.default_rng(2)
    messages, combination = rng.standard_normal((45, 3000)), rng.standard_normal((11, 35))
    kept = np.sort(rng.choice(45, 35, replace=False))
    first, second = kept_rows_pass(messages, kept, combination), kept_rows_pass(messages, kept, combination)
    assert first.total.tobytes() == second.total.tobytes() and first.residual == second.residual


def test_importing_the_codes_does_not_import_numba():
    """numba takes ~0.4 s to import and the CLI imports the codes at start-up: it loads at the first pass."""
    probe = "import sys, robust_training.codes; print('numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
