"""Where the deviating rows of a cyclic-code word are, found on its (n, c) projections.

The locator proposes sets of at most s rows to remove, ranks them by how well the kept rows fit the code
(`cyclic_fit`, residual / tolerance), and returns the best one that passes, with the removed rows that
agree with its codeword given back. Ranking matters, not just passing: at n = 45, s = 10, a block of 10
workers deviating by 1e-7 of their messages has wrong explanations that fit to ~1e-11 (a contiguous
block of 2s workers almost carries a codeword), inside the tolerance, while the right one fits to
rounding. Proposals, cheapest first, stopping as soon as one fits to rounding:
1. nothing removed (the usual round);
2. the algebraic error locator (null space of the stacked Hankel matrices of the syndromes, as in Draco)
   for every number of errors, after erasing the largest rows when their norms stand apart (a forged
   1e15 row drowns the syndromes of 1e-8 deviations elsewhere in rounding; Forney's modified syndromes
   annihilate erased rows);
3. a local search from the best proposal: swap a removed row for a kept one (or add one) while the fit
   improves, moves ranked by a rank-one downdate and then evaluated exactly;
4. if nothing passes: fits of the code through random sets of n - p rows (clustered errors at large
   s / n, where the Hankel system is ill-conditioned), their farthest s rows, then the local search.
All randomness comes from the code's seed: the outcome is a function of the projections.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from robust_training.codes.cyclic_fit import ROUNDING_ULPS, Fit, KeptRowTest, rounding_scale, row_norms

#: Norm ratio between consecutive rows (sorted by norm) above which the larger ones are erased.
ERASURE_GAP = 100.0
#: Local-search steps, and the downdate-ranked moves evaluated exactly at each step.
SEARCH_STEPS = 40
MOVES_PER_STEP = 6
#: Best distinct proposals the local search starts from.
SEARCH_STARTS = 3
#: Random fits the fallback tries, and how many of the best go through the local search.
CONSENSUS_SAMPLES = 2000
CONSENSUS_CHECKS = 3


@dataclass(frozen=True)
class CyclicGeometry:
    """What the locator needs from a cyclic code."""

    parity_check: np.ndarray  # (p, n) complex, consecutive powers of locator_points
    locator_points: np.ndarray  # (n,) complex
    real_parity: np.ndarray  # (p, n) orthonormal rows
    basis: np.ndarray  # (n, k) orthonormal code basis
    max_adversaries: int
    rtol: float
    seed: int


class Locator:
    """One locate over the projections `projected` (n, c); `forced` rows are removed in every proposal,
    and no proposal removes more than `max_removed` rows in all (the forced ones included)."""

    def __init__(self, geometry: CyclicGeometry, projected: np.ndarray, forced: np.ndarray,
                 max_removed: int) -> None:
        self.geometry = geometry
        self.projected = projected
        self.norms = row_norms(projected)
        self.forced = forced
        self.max_removed = max_removed
        self.test = KeptRowTest(geometry.real_parity, geometry.rtol)
        self.n_workers = projected.shape[0]
        self.free = np.setdiff1d(np.arange(self.n_workers), forced)

    def locate(self) -> Fit | None:
        """The best-fitting passing removal (removed rows that agree given back), or None."""
        best = self.fit(self.forced)
        if best.exact:
            return best
        fits = [best]
        for erased in self._erasure_sets():
            for candidate in [erased, *algebraic_candidates(self.geometry, self.projected, erased,
                                                            self.max_removed)]:
                fits.append(self.fit(candidate))
                if fits[-1].exact:
                    return self.give_back(fits[-1])
        fits += [self.fit(candidate) for candidate in self._blocks()]
        best = min(fits, key=_rank)
        for start in _distinct_best(fits, SEARCH_STARTS):
            best = min(best, self.improve(start), key=_rank)
            if best.exact:
                break
        if not best.passes:
            for candidate in self._consensus_candidates():
                best = min(best, self.improve(self.fit(candidate)), key=_rank)
                if best.passes:
                    break
        return self.give_back(best) if best.passes else None

    def fit(self, removed: np.ndarray) -> Fit:
        return self.test.fit(self.projected, self.norms, np.asarray(removed, dtype=int))

    # -- proposals ----------------------------------------------------------------------------------------

    def _erasure_sets(self) -> list[np.ndarray]:
        """The forced rows, then each set of largest rows whose norms stand ERASURE_GAP above the next."""
        sets = [self.forced]
        budget = self.max_removed - self.forced.size
        order = self.free[np.argsort(-self.norms[self.free], kind="stable")]
        sizes = self.norms[order]
        for count in range(1, min(budget, len(order) - 1) + 1):
            if sizes[count - 1] > ERASURE_GAP * sizes[count]:
                sets.append(np.union1d(self.forced, order[:count]))
        return sets

    def _blocks(self) -> list[np.ndarray]:
        """Every cyclic block of s consecutive workers (with the forced rows): the pattern the syndromes
        resolve worst, and the one a local search of single swaps reaches worst from a split block."""
        s = self.geometry.max_adversaries
        if self.forced.size or s == 0:
            return []
        return [(start + np.arange(s)) % self.n_workers for start in range(self.n_workers)]

    def _consensus_candidates(self) -> list[np.ndarray]:
        """Farthest rows from the best exact fits through random sets of n - p free rows."""
        geometry = self.geometry
        budget = self.max_removed - self.forced.size
        dimension = geometry.basis.shape[1]
        if budget <= 0 or self.free.size <= dimension:
            return []
        rng = np.random.default_rng(np.random.SeedSequence([geometry.seed, 1]))
        n_samples = _samples_for_one_honest_set(self.free.size, budget, dimension)
        picks = np.argsort(rng.random((n_samples, self.free.size)), axis=1)[:, :dimension]
        samples = self.free[picks]
        try:
            coefficients = np.linalg.solve(geometry.basis[samples], self.projected[samples])
        except np.linalg.LinAlgError:
            return []
        with np.errstate(over="ignore", invalid="ignore"):  # a forged row may overflow: it is then farthest
            distances = np.linalg.norm(self.projected[self.free][None] - geometry.basis[self.free] @ coefficients,
                                       axis=2)
        distances = np.nan_to_num(distances, nan=np.inf)
        order = np.argsort(distances, axis=1)
        inlier_error = np.take_along_axis(distances, order[:, : self.free.size - budget], axis=1).sum(axis=1)
        candidates: list[np.ndarray] = []
        seen: set[tuple[int, ...]] = set()
        for best in np.argsort(inlier_error, kind="stable"):
            farthest = tuple(sorted(int(w) for w in self.free[order[best, self.free.size - budget:]]))
            if farthest not in seen:
                seen.add(farthest)
                candidates.append(np.union1d(self.forced, farthest))
            if len(candidates) == CONSENSUS_CHECKS:
                break
        return candidates

    # -- local search ---------------------------------------------------------------------------------------

    def improve(self, start: Fit) -> Fit:
        """Swap (or add) removed rows while the fit improves; stops at a fit exact to rounding."""
        best = start
        for _ in range(SEARCH_STEPS):
            if best.exact:
                break
            trials = [self.fit(move) for move in self._promising_moves(np.array(best.removed, dtype=int))]
            challenger = min(trials, key=_rank, default=None)
            if challenger is None or not _rank(challenger) < _rank(best):
                break
            best = challenger
        return best

    def _promising_moves(self, removed: np.ndarray) -> list[np.ndarray]:
        """The MOVES_PER_STEP removals one swap or one addition away whose downdated residual is least.

        Dropping row j from the kept rows H leaves the residual y (of H) minus its component along the
        check direction u_j = Lambda^T P[:, j]: |y|^2 - |u_j^T y|^2 / |u_j|^2 (rounding makes this a
        ranking only; the chosen moves are evaluated exactly from their kept rows).
        """
        parity = self.geometry.real_parity
        scores, moves = [], []
        swappable = np.setdiff1d(removed, self.forced)
        bases = [(removed, -1)] if removed.size < self.max_removed else []
        bases += [(np.setdiff1d(removed, [row]), int(row)) for row in swappable]
        for base, returned in bases:
            kept = np.setdiff1d(np.arange(self.n_workers), base)
            complement = self.test.complement(base)
            if complement.shape[1] == 0:
                continue
            with np.errstate(over="ignore", invalid="ignore"):
                residual = complement.T @ (parity[:, kept] @ self.projected[kept])  # (p - t, c)
                directions = complement.T @ parity[:, kept]  # (p - t, |H|)
                lengths = np.einsum("ij,ij->j", directions, directions)
                explained = np.einsum("ic,ij->jc", residual, directions)
                remaining = np.einsum("ic,ic->", residual, residual) - np.einsum(
                    "jc,jc->j", explained, explained) / np.where(lengths > 0, lengths, np.inf)
            remaining = np.where(kept == returned, np.inf, np.nan_to_num(remaining, nan=np.inf))
            scores.append(remaining)
            moves += [(base, int(row)) for row in kept]
        if not moves:
            return []
        chosen, seen = [], set()
        for index in np.argsort(np.concatenate(scores), kind="stable"):
            base, row = moves[index]
            key = tuple(sorted([*base.tolist(), row]))
            if key not in seen:
                seen.add(key)
                chosen.append(np.array(key, dtype=int))
            if len(chosen) == MOVES_PER_STEP:
                break
        return chosen

    # -- result -----------------------------------------------------------------------------------------------

    def give_back(self, fit: Fit) -> Fit:
        """`fit` without the removed rows that agree with its codeword (predicted from the kept rows).

        A removed honest row is predicted to within rounding amplified by the conditioning of the kept
        rows' code basis (1 / sigma_min, up to 7e3 at n = 45, s = 10); that is its allowance above rtol.
        """
        removed = np.array(fit.removed, dtype=int)
        candidates = np.setdiff1d(removed, self.forced)
        if candidates.size == 0:
            return fit
        kept = np.setdiff1d(np.arange(self.n_workers), removed)
        basis = self.geometry.basis
        coefficients, _, _, singular = np.linalg.lstsq(basis[kept], self.projected[kept], rcond=None)
        with np.errstate(over="ignore", invalid="ignore"):
            deviations = row_norms(self.projected[candidates] - basis[candidates] @ coefficients)
        kept_norms = self.norms[kept]
        allowance = self.geometry.rtol * float(np.median(kept_norms)) + ROUNDING_ULPS * np.finfo(float).eps * (
            rounding_scale(kept_norms) / max(float(singular[-1]), 1e-300))
        agreeing = candidates[deviations <= allowance]
        if agreeing.size == 0:
            return fit
        smaller = self.fit(np.setdiff1d(removed, agreeing))
        return smaller if smaller.passes else fit


def _distinct_best(fits: list[Fit], count: int) -> list[Fit]:
    """The `count` best-ranked fits with distinct removals."""
    chosen, seen = [], set()
    for fit in sorted(fits, key=_rank):
        if fit.removed not in seen:
            seen.add(fit.removed)
            chosen.append(fit)
        if len(chosen) == count:
            break
    return chosen


def _rank(fit: Fit) -> tuple[float, int]:
    """Better fits first; among equal ones (exact zeros), fewer removed rows."""
    return (fit.ratio, len(fit.removed))


def algebraic_candidates(geometry: CyclicGeometry, projected: np.ndarray, erased: np.ndarray,
                         max_removed: int) -> list[np.ndarray]:
    """Removals of at most `max_removed` rows proposed by the error locator over the syndromes, the
    `erased` rows known bad.

    Erasures enter through Forney's modified syndromes T_u = sum_k gamma_k S_{u+k}, gamma the coefficients
    of prod_{e in erased} (z - z_e): they annihilate the erased rows, leaving p - e syndromes for the
    unknown errors. For t = max, ..., 1 errors the null space of the stacked Hankel matrices (dimension
    max + 1 - t) holds the locator polynomials; the t rows where their norm is smallest are proposed.
    """
    cleared = projected.copy()
    cleared[erased] = 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        syndromes = geometry.parity_check @ cleared  # (p, c)
    if not np.isfinite(syndromes).all():
        return []
    # np.poly gives gamma in descending powers, which is the kernel np.convolve needs for sum_k gamma_k S_{u+k}
    kernel = np.poly(geometry.locator_points[erased]) if erased.size else np.ones(1)
    modified = np.stack(
        [np.convolve(syndromes[:, column], kernel, mode="valid") for column in range(syndromes.shape[1])], axis=1
    )
    max_errors = min(max_removed - erased.size, modified.shape[0] // 2)
    if max_errors <= 0:
        return []
    n_rows = modified.shape[0] - max_errors
    hankel = np.vstack(
        [
            np.lib.stride_tricks.sliding_window_view(modified[:, column], max_errors + 1)[:n_rows]
            for column in range(modified.shape[1])
        ]
    )
    _, _, right = np.linalg.svd(hankel)
    powers = geometry.locator_points[:, None] ** np.arange(max_errors + 1)[None, :]
    candidates = []
    for n_errors in range(max_errors, 0, -1):
        locators = right[n_errors:].conj().T  # null space of dimension max_errors + 1 - n_errors
        scores = np.linalg.norm(powers @ locators, axis=1)
        scores[erased] = np.inf
        candidates.append(np.union1d(erased, np.argsort(scores, kind="stable")[:n_errors]))
    return candidates


def _samples_for_one_honest_set(n_rows: int, n_adversaries: int, dimension: int) -> int:
    """Random row sets needed to draw one free of the adversaries with probability 0.999 (capped)."""
    all_honest = math.comb(n_rows - n_adversaries, dimension) / math.comb(n_rows, dimension)
    if all_honest >= 1.0:
        return 1
    if all_honest <= 0.0:
        return CONSENSUS_SAMPLES
    return int(min(CONSENSUS_SAMPLES, math.ceil(math.log(1e-3) / math.log1p(-all_honest))))
