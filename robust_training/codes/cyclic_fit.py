"""The one test an accepted cyclic decode passes: the kept rows are consistent with the code.

For removed rows F (at most s) and kept rows H, the rows of Lambda_F^T P_H span the vectors orthogonal
to the code restricted to H (P: orthonormal real parity rows, Lambda_F: orthonormal basis of the left
null space of P[:, F]); their product with the kept rows is the residual. It is computed from the kept
rows alone, so a removed row never enters it, not even through rounding (a forged 1e15 row would
otherwise add 1e15 * 1e-16 to every residual).

Tolerance, and what an adversary can slip under it:
    residual <= rtol * sqrt(|H|) * median_{i in H} ||row_i||  +  ROUNDING_ULPS * eps * ||rows_H||_F.
The first term is relative to the typical kept row: adversaries' huge rows cannot inflate it unless they
are most of the kept rows. Deviations below it are indistinguishable from noise on honest messages. The
second term is float64 rounding of the kept rows themselves (eps = 2.2e-16): a kept row of magnitude M
makes inconsistencies below ~ROUNDING_ULPS * eps * M invisible to any float64 computation, so
adversaries whose rows are kept at M ~ 1e13+ times the honest scale can hide honest-scale errors there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Rounding allowance in units of eps times the kept rows' norm (measured honest residuals: <= 2 eps).
ROUNDING_ULPS = 8.0
_EPS = float(np.finfo(np.float64).eps)


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
    rounding = ROUNDING_ULPS * _EPS * frobenius(kept_norms)
    return rtol * np.sqrt(kept_norms.size) * float(np.median(kept_norms)) + rounding, rounding


def frobenius(values: np.ndarray) -> float:
    """Frobenius norm that survives values near the float64 limit (squares of 1e200 overflow)."""
    largest = float(np.max(np.abs(values), initial=0.0))
    if largest == 0.0 or not np.isfinite(largest):
        return largest
    return largest * float(np.linalg.norm(values / largest))


def row_norms(rows: np.ndarray) -> np.ndarray:
    """Per-row 2-norms without overflow for finite rows; inf or NaN for rows holding inf or NaN."""
    with np.errstate(over="ignore", invalid="ignore"):
        norms = np.sqrt(np.einsum("ij,ij->i", rows, rows))
    for row in np.flatnonzero(~np.isfinite(norms)):
        if np.isfinite(rows[row]).all():
            norms[row] = frobenius(rows[row])
    return norms
