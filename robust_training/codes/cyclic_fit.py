"""The one test an accepted cyclic decode passes: the kept rows are consistent with the code.

For removed rows F (at most s) and kept rows H, the rows of Lambda_F^T P_H span the vectors orthogonal
to the code restricted to H (P: orthonormal real parity rows, Lambda_F: orthonormal basis of the left
null space of P[:, F]); their product with the kept rows is the residual. It is computed from the kept
rows alone, so a removed row never enters it, not even through rounding (a forged 1e15 row would
otherwise add 1e15 * 1e-16 to every residual).

Tolerance, and what an adversary can slip under it:
    residual <= rtol * sqrt(|H|) * median_{i in H} ||row_i||  +  ROUNDING_ULPS * eps * scale_H,
    scale_H = min(||rows_H||_F, MAX_SPREAD * sqrt(|H|) * median_{i in H} ||row_i||).
The first term is relative to the typical kept row: adversaries' huge rows cannot inflate it unless they
are most of the kept rows. Deviations below it are indistinguishable from noise on honest messages.
The second is float64 rounding of the kept rows (eps = 2.2e-16; honest rows with partitions of very
different scales need it). Uncapped, it let more than s colluders with rows kept at M ~ 1e15 times the
honest scale hide honest-scale inconsistencies under 16 eps M (two equal constants at mirror positions
of an r = 3 code cancel exactly in the check); capped, what rounding can hide is at most
ROUNDING_ULPS * eps * MAX_SPREAD = 3.5e-9 of the typical kept row. The price: an honest round whose kept
messages spread more than MAX_SPREAD (RMS over median: e.g. all but a few partitions' updates exactly
zero, or one partition's update 1e6 times the others') raises DecodeError rather than risk that.
(Issue 8: the tolerance was rtol times the kept rows' norm, 1e-11 M, and Constant(-1e12) at n = 9
returned a sum off by 5e11 without a word.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Rounding allowance in units of eps times the kept rows' norm (measured on honest rounds, n <= 45, d <= 2e5,
#: partitions of scales 1e-4..1e4: <= 4.6 eps on the full messages, <= 6.3 eps on the projections).
ROUNDING_ULPS = 16.0
#: Largest spread (RMS over median of the kept rows' norms) the rounding allowance follows; see above.
MAX_SPREAD = 1e6
_EPS = float(np.finfo(np.float64).eps)
_SMALLEST_EXACT_NORM = 1e-145  # its square, 1e-290, is still a normal float64


@dataclass(frozen=True)
class Fit:
    """The consistency of the rows kept after removing `removed` (sorted worker ids)."""

    removed: tuple[int, ...]
    residual: float
    tolerance: float
    rounding: float

    @property
    def passes(self) -> bool:
        return bool(self.residual <= self.tolerance)

    @property
    def exact(self) -> bool:
        """Consistent to rounding: no other explanation can be told apart from this one."""
        return bool(self.residual <= self.rounding)

    @property
    def ratio(self) -> float:
        """residual / tolerance, the figure candidates are ranked by (NaN counts as infinitely bad)."""
        if not np.isfinite(self.residual):
            return np.inf
        return self.residual / self.tolerance if self.tolerance > 0 else (0.0 if self.residual == 0 else np.inf)


class KeptRowTest:
    """Residuals and tolerances of kept rows against the code with parity rows `parity` (p, n)."""

    def __init__(self, parity: np.ndarray, rtol: float) -> None:
        self.parity = parity
        self.rtol = rtol

    def complement(self, removed: np.ndarray) -> np.ndarray:
        """Orthonormal (p, p - t) basis of the parity combinations that vanish on the removed rows."""
        n_parity = self.parity.shape[0]
        if removed.size == 0:
            return np.eye(n_parity)
        left, _, _ = np.linalg.svd(self.parity[:, removed], full_matrices=True)
        return left[:, removed.size:]

    def checks(self, removed: np.ndarray, kept: np.ndarray) -> np.ndarray:
        """(p - t, |H|) orthonormal rows spanning what the code leaves unexplained on the kept rows."""
        return self.complement(removed).T @ self.parity[:, kept]

    def fit(self, rows: np.ndarray, norms: np.ndarray, removed: np.ndarray) -> Fit:
        """The residual of `rows` (n, c) kept after `removed`, with `norms` the rows' 2-norms."""
        removed = np.unique(removed)
        kept = np.setdiff1d(np.arange(rows.shape[0]), removed)
        with np.errstate(over="ignore", invalid="ignore"):
            residual = frobenius(self.checks(removed, kept) @ rows[kept])
        return self.judge(tuple(int(w) for w in removed), residual, norms[kept])

    def judge(self, removed: tuple[int, ...], residual: float, kept_norms: np.ndarray) -> Fit:
        tolerance, rounding = kept_tolerance(kept_norms, self.rtol)
        return Fit(removed, residual, tolerance, rounding)


def kept_tolerance(kept_norms: np.ndarray, rtol: float) -> tuple[float, float]:
    """(tolerance, its rounding part) for kept rows of these norms; see the module doc."""
    if kept_norms.size == 0:
        return 0.0, 0.0
    typical = np.sqrt(kept_norms.size) * float(np.median(kept_norms))
    rounding = ROUNDING_ULPS * _EPS * rounding_scale(kept_norms)
    return rtol * typical + rounding, rounding


def rounding_scale(kept_norms: np.ndarray) -> float:
    """The kept rows' Frobenius norm, capped at MAX_SPREAD times sqrt(|H|) times their median norm."""
    return min(frobenius(kept_norms), MAX_SPREAD * np.sqrt(kept_norms.size) * float(np.median(kept_norms)))


def frobenius(values: np.ndarray) -> float:
    """Frobenius norm that survives values near the float64 limit (squares of 1e200 overflow).

    The sum of squares is tried first (no temporary: this runs on (p, d) residuals at d = 1e6); only
    when it overflows, underflows to zero or meets inf/NaN are the values rescaled by their largest.
    """
    flat = values.reshape(-1)
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        squares = float(np.dot(flat, flat))
    if np.isfinite(squares) and squares > 1e-290:
        return float(np.sqrt(squares))
    largest = float(np.max(np.abs(values), initial=0.0))
    if largest == 0.0 or not np.isfinite(largest):
        return largest
    return largest * float(np.linalg.norm(values / largest))


def row_norms(rows: np.ndarray, squares: np.ndarray | None = None, ids: np.ndarray | None = None) -> np.ndarray:
    """Per-row 2-norms without overflow for finite rows; inf or NaN for rows holding inf or NaN.

    `squares`: the rows' sums of squares if a pass over the rows already made them (the decodes' passes
    do), for the rows `ids` of `rows` (default: all); only rows whose sum overflowed or fell among the
    subnormals (norms below 1e-145 lose digits there) are then read again.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        norms = np.sqrt(np.einsum("ij,ij->i", rows, rows) if squares is None else squares)
    ids = np.arange(norms.size) if ids is None else ids
    inexact = ~np.isfinite(norms) | ((norms > 0.0) & (norms < _SMALLEST_EXACT_NORM))
    for index in np.flatnonzero(inexact):
        if np.isfinite(rows[ids[index]]).all():
            norms[index] = frobenius(rows[ids[index]])
    return norms
