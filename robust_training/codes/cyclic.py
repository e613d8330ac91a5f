"""Draco's cyclic code, rebuilt over the reals so that it decodes exactly in float64.

Assignment (as in Draco): n workers, n partitions, worker i computes partitions i, ..., i + r - 1 (mod n)
and sends y_i = sum_j W[i, j] g_j. With p = r - 1 parity constraints the code corrects
s = (r - 1) // 2 adversarial messages.

Construction, and why it differs from the reference
----------------------------------------------------
The messages y = W G must lie in a code C of dimension n - p and distance p + 1 = r whose columns W[:, j]
are supported on the r workers holding partition j. We take C = the real vectors c with
    sum_k c_k exp(-i theta_u k) = 0,   theta_u = pi + 2 pi (u - (p - 1) / 2) / n,   u = 0..p-1,
i.e. the vectors without content at the p frequencies nearest to Nyquist (a real BCH/DFT code: any n - p
coordinates determine a codeword, consecutive frequencies give an algebraic error locator). Column j of W
is the unique (up to scale) codeword on the r consecutive workers holding j; its entries are the
coefficients of prod_u (x - exp(-i theta_u)), a polynomial whose roots sit around -1, so they look like
binomial weights (all of one sign) and their sum, the polynomial at +1, is the largest it can be. Scaling
each column so that its entries sum to 1 makes 1^T W = 1^T: the sum of all partitions is simply the sum of
the codeword, and the weights stay below 1.

The reference instead removes the 2s frequencies next to zero and reads the sum from frequency zero; its
columns are then polynomials with roots clustered around +1, normalised by their (tiny) value at 1, which
is where its max |W| of 1.8e5 (n = 45, s = 5, DESIGN.md 5) and its precision trouble come from. Ours has
max |W| = 0.16 at n = 45, r = 21 (0.24 at r = 11). When n + p - 1 is odd (n even, r odd) the code is
negacyclic instead of cyclic (a wrap flips the sign); 1 is then not a codeword and a cosine functional a
with a^T W = 1^T replaces it (max |W| = 4.5 at n = 44, r = 21).

Decoding
--------
1. Project the (n, d) messages on two random vectors (uniform, drawn from the code's seeded generator at
   every decode, unknown to the workers): a deviating message stays deviating with probability 1, and
   everything after this is O(n^3), independent of d.
2. Syndromes at the p parity frequencies; for t = s, s - 1, ..., 0 the null space of the stacked Hankel
   matrices gives an error locator of degree t; the t workers where it is smallest are the candidates.
3. A candidate is accepted only if the remaining rows are consistent with the code (least-squares
   residual <= rtol * their norm): if at most s workers deviate, any consistent candidate removes all of
   them (two codewords agreeing on n - 2s rows are equal), so the result is exact. Removed rows that
   agree with the accepted codeword after all (within rtol) are given back, not flagged. Trying the
   largest t first matters numerically: with a smaller t, a deviating row left alone inside a block of
   removed rows is almost free in the fit (leverage ~1), so the gate barely sees it.
   If no candidate passes, two more attempts go through the same gate:
   - rows more than 1e6 times the median row (a forged 1e200 drowns everyone else's syndromes in
     rounding) become erasures: zeroed, and annihilated by Forney's modified syndromes;
   - a consensus fallback (for clustered adversaries with s large against n, where the Hankel system is
     ill-conditioned) fits the code through random sets of n - p rows and tries the s rows farthest from
     the best fits.
   If nothing passes, DecodeError.
4. The sum is one weighted sum of the honest rows, a_H^T R_H, with a_H from a least-squares solve in the
   code basis: one pass over the messages.

What is guaranteed
------------------
- At most s deviating workers: the exact sum (relative error <= 1.0e-12 measured at n = 45, s = 10 for
  all five attacks, bench/cyclic_exactness.py), and `flagged` is exactly the set of deviating workers.
  A deviation of the order of rtol * ||messages||_2 (in projection) is indistinguishable from rounding:
  it may go unflagged and moves the sum by at most about that much times ||a_H|| (measured: relative
  error <= 1.1e-9 for Gaussian noise of std 1e-6 on messages of scale 1e-4..1e4, n <= 45).
  rtol = 1e-11 sits four orders above the rounding of honest float64 messages (1e-15, also at
  d = 1e6); messages computed in float32 need rtol ~ 1e-5.
- More than s deviating workers: DecodeError, unless the received messages lie within s rows of another
  codeword. No decoder can tell that case from an honest one (the distance is 2s + 1); it needs colluding
  adversaries who know W and craft messages along a codeword, or at least n - s adversaries whose messages
  are consistent with the code among themselves (e.g. identical messages when r >= n - 1). The five
  attacks in `robust_training.attacks` with s + 1 and s + 2 adversaries (n - s > s + 2) are tested to
  raise, and colluders along a codeword are tested to fool it as stated.
- Real DFT codes lose numerical distance as n and s grow (a contiguous block of 2s workers can be almost
  a codeword's support). The constructor measures that margin and refuses (n, r) pairs whose margin is
  below what the tests show to decode reliably in float64; n = 45 works for every r.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from robust_training.codes.base import Code, DecodeResult
from robust_training.errors import DecodeError, TrainingError

logger = logging.getLogger(__name__)

#: Number of random projections used to locate adversaries (two make the locator's null space sharper
#: than one; by blocks, the second column costs nothing: the pass over the messages is the cost).
N_PROJECTIONS = 2
#: Smallest singular value of the code basis restricted to the complement of 2s consecutive workers that
#: we accept (n = 45, s = 10 gives 9e-11 and decodes exactly; n = 64, s = 7 gives 7e-12 and does not).
MIN_NUMERICAL_DISTANCE_MARGIN = 5e-11
#: Random fits the fallback locator tries before the decode gives up (only paid when the algebraic
#: locator fails, i.e. on inconsistent rounds or rare clustered error patterns).
CONSENSUS_SAMPLES = 2000
#: How many of the best-fitting random fits go through the consistency gate.
CONSENSUS_CHECKS = 5
#: Columns per block when projecting the messages (a block of 45 messages stays in cache).
_PROJECTION_BLOCK_COLUMNS = 8192
#: A row this many times larger than the median row is erased (not located) on the second attempt.
GIANT_FACTOR = 1e6


class CyclicCode(Code):
    """n workers, n partitions, worker i computes partitions i..i+r-1 (mod n); tolerates s = (r-1)//2."""

    def __init__(self, n_workers: int, redundancy: int, seed: int = 0, rtol: float = 1e-11) -> None:
        if not 1 <= redundancy <= n_workers:
            raise TrainingError(
                f"the cyclic code needs 1 <= redundancy <= n_workers, got r={redundancy} and n={n_workers}."
            )
        if rtol <= 0:
            raise TrainingError(f"rtol must be positive, got {rtol}.")
        self.n_workers = n_workers
        self.n_partitions = n_workers
        self.redundancy = redundancy
        self.max_adversaries = (redundancy - 1) // 2
        self.rtol = rtol
        self._rng = np.random.default_rng(seed)
        n_parity = redundancy - 1
        positions = np.arange(n_workers)
        frequencies = np.pi + 2 * np.pi * (np.arange(n_parity) - (n_parity - 1) / 2) / n_workers
        self._parity_check = np.exp(-1j * np.outer(frequencies, positions))  # (p, n), consecutive powers
        self._locator_points = np.exp(-2j * np.pi * positions / n_workers)  # ratio between parity rows
        self._real_parity, self._basis = _split_real_parity_and_code(self._parity_check)
        unscaled = self._minimum_weight_columns()
        self._sum_functional = self._choose_sum_functional(unscaled)
        self._weights = unscaled / (self._sum_functional @ unscaled)
        self._check_numerical_margin()

    @property
    def encoding_matrix(self) -> np.ndarray:
        """W (n_workers, n_partitions): worker i sends sum_j W[i, j] g_j (a copy)."""
        return self._weights.copy()

    def partitions_of(self, worker: int) -> list[int]:
        self._check_worker(worker)
        return [(worker + offset) % self.n_workers for offset in range(self.redundancy)]

    def encode(self, worker: int, partition_updates: np.ndarray) -> np.ndarray:
        updates = self._check_worker_updates(worker, partition_updates)
        return self._weights[worker, self.partitions_of(worker)] @ updates

    def encode_all(self, partition_updates: np.ndarray) -> np.ndarray:
        return self._weights @ self._check_partition_updates(partition_updates)

    def decode(self, messages: np.ndarray) -> DecodeResult:
        received = self._check_messages(messages)
        projections = self._rng.random((received.shape[1], N_PROJECTIONS)) - 0.5  # 10x cheaper than normals
        projected = _project(received, projections)
        finite = np.isfinite(projected).all(axis=1)  # an inf or nan anywhere in a row reaches its projection
        if not finite.all():  # a zero row is an ordinary (locatable) error; inf/nan would poison the sums
            received = np.where(finite[:, None], received, 0.0)
            projected = np.where(finite[:, None], projected, 0.0)
        flagged = self._locate(projected)
        weights = np.zeros(self.n_workers)
        honest = np.setdiff1d(np.arange(self.n_workers), flagged)
        weights[honest] = self._recovery_weights(honest)
        if flagged:
            logger.debug("cyclic decode flagged workers %s", flagged)
        return DecodeResult(total=weights @ received, flagged=flagged)

    # -- construction ---------------------------------------------------------------------------------------

    def _holders(self, partition: int) -> list[int]:
        return [(partition - self.redundancy + 1 + offset) % self.n_workers for offset in range(self.redundancy)]

    def _minimum_weight_columns(self) -> np.ndarray:
        """Column j: the codeword supported on the workers holding j (null vector of the parity there)."""
        columns = np.zeros((self.n_workers, self.n_partitions))
        for partition in range(self.n_partitions):
            holders = self._holders(partition)
            if self._real_parity.shape[0] == 0:
                columns[holders, partition] = 1.0
                continue
            _, _, right = np.linalg.svd(self._real_parity[:, holders])
            columns[holders, partition] = right[-1]
        return columns

    def _choose_sum_functional(self, columns: np.ndarray) -> np.ndarray:
        """A codeword a with a^T W[:, j] far from zero for every j, so that scaling gives a^T W = 1^T.

        Cyclic case: a = 1 (all columns are shifts of one another, so 1^T W[:, j] is the same for all j).
        Negacyclic case: a cosine of the lowest (half-integer) frequency, phase chosen so that no column
        lands near its zero crossing.
        """
        ones = np.ones(self.n_workers)
        if np.linalg.norm(self._real_parity @ ones) <= 1e-9 * np.sqrt(self.n_workers):
            return ones
        positions = np.arange(self.n_workers)
        best, best_margin = ones, -1.0
        for phase in np.linspace(0.0, 1.0, 16, endpoint=False):
            candidate = self._project_on_code(np.cos(np.pi * (positions + phase) / self.n_workers))
            responses = np.abs(candidate @ columns)
            margin = responses.min() / responses.max()
            if margin > best_margin:
                best, best_margin = candidate, margin
        return best

    def _project_on_code(self, vector: np.ndarray) -> np.ndarray:
        return self._basis @ (self._basis.T @ vector)

    def _check_numerical_margin(self) -> None:
        n_erased = 2 * self.max_adversaries
        if n_erased == 0:
            return
        kept = np.arange(n_erased, self.n_workers)
        margin = np.linalg.svd(self._basis[kept], compute_uv=False)[-1]
        if margin < MIN_NUMERICAL_DISTANCE_MARGIN:
            raise TrainingError(
                f"the cyclic code with n={self.n_workers}, r={self.redundancy} cannot decode reliably in float64 "
                f"(numerical distance margin {margin:.1e} < {MIN_NUMERICAL_DISTANCE_MARGIN:.0e}); use fewer "
                f"workers per code or a smaller redundancy."
            )

    # -- decoding ------------------------------------------------------------------------------------------

    def _locate(self, projected: np.ndarray) -> list[int]:
        """Workers whose messages deviate from the code, found on the (n, k) projections; see module doc."""
        s = self.max_adversaries
        if s == 0:  # nothing to correct, but with r = 2 a deviation is still detected
            if self._consistent(projected, np.array([], dtype=int)):
                return []
            raise DecodeError(
                f"the cyclic code with redundancy {self.redundancy} detects inconsistent messages but corrects "
                f"none (it needs r >= 3 to correct one adversary)."
            )
        found = self._locate_algebraically(projected, erased=np.array([], dtype=int))
        if found is None:
            giants = _giant_rows(projected)
            if 0 < len(giants) <= s:
                found = self._locate_algebraically(projected, erased=giants)
        if found is None:
            found = self._locate_by_consensus(projected)
        if found is None:
            raise DecodeError(
                f"the cyclic code cannot decode: no set of at most {s} workers explains the messages, so more "
                f"than {s} of the {self.n_workers} workers sent inconsistent messages."
            )
        return found

    def _locate_algebraically(self, projected: np.ndarray, erased: np.ndarray) -> list[int] | None:
        """Error locator from the syndromes, treating the `erased` rows as known-bad (their values unused).

        Erasures enter through Forney's modified syndromes T_u = sum_k gamma_k S_{u+k}, gamma the
        coefficients of prod_{e in erased} (z - z_e): they annihilate the erased rows' contributions,
        leaving p - e syndromes for the unknown errors. Without erasures, T = S.
        """
        cleared = projected.copy()
        cleared[erased] = 0.0  # a forged 1e200 would otherwise drown every other syndrome in rounding
        syndromes = self._parity_check @ cleared  # (p, k)
        # np.poly gives gamma in descending powers, which is the kernel np.convolve needs for sum_k gamma_k S_{u+k}
        kernel = np.poly(self._locator_points[erased]) if erased.size else np.ones(1)
        modified = np.stack(
            [np.convolve(syndromes[:, column], kernel, mode="valid") for column in range(syndromes.shape[1])], axis=1
        )
        max_errors = min(self.max_adversaries - len(erased), modified.shape[0] // 2)
        if max_errors < 0:
            return None
        n_rows = modified.shape[0] - max_errors
        hankel = np.vstack(
            [
                np.lib.stride_tricks.sliding_window_view(modified[:, column], max_errors + 1)[:n_rows]
                for column in range(modified.shape[1])
            ]
        )
        _, _, right = np.linalg.svd(hankel)
        powers = self._locator_points[:, None] ** np.arange(max_errors + 1)[None, :]
        for n_errors in range(max_errors, -1, -1):  # most removals first, see module doc
            candidate = erased
            if n_errors:
                locators = right[n_errors:].conj().T  # null space of dimension max_errors + 1 - n_errors
                scores = np.linalg.norm(powers @ locators, axis=1)
                scores[erased] = np.inf
                candidate = np.union1d(erased, np.argsort(scores, kind="stable")[:n_errors])
            confirmed = self._confirm(projected, candidate)
            if confirmed is not None:
                return confirmed
        return None

    def _locate_by_consensus(self, projected: np.ndarray) -> list[int] | None:
        """Fallback when the algebraic locator's candidates all fail (clustered errors, large s / n).

        Fit the code exactly through random sets of n - p rows (one batched solve); a set that is all
        honest fits every honest row, so its s farthest rows include every deviating row. The fits whose
        n - s nearest rows fit best go through the same consistency gate.
        """
        s = self.max_adversaries
        dimension = self._basis.shape[1]
        n_samples = _samples_for_one_honest_set(self.n_workers, s, dimension)
        samples = np.argsort(self._rng.random((n_samples, self.n_workers)), axis=1)[:, :dimension]
        try:
            coefficients = np.linalg.solve(self._basis[samples], projected[samples])
        except np.linalg.LinAlgError:
            return None
        with np.errstate(over="ignore", invalid="ignore"):  # a forged row may overflow: it is then farthest
            distances = np.linalg.norm(projected[None, :, :] - self._basis @ coefficients, axis=2)
        distances = np.nan_to_num(distances, nan=np.inf)
        order = np.argsort(distances, axis=1)
        inlier_error = np.take_along_axis(distances, order[:, : self.n_workers - s], axis=1).sum(axis=1)
        tried: set[tuple[int, ...]] = set()
        for best in np.argsort(inlier_error):
            farthest = tuple(sorted(int(w) for w in order[best, self.n_workers - s :]))
            if farthest in tried:
                continue
            tried.add(farthest)
            confirmed = self._confirm(projected, np.array(farthest))
            if confirmed is not None:
                return confirmed
            if len(tried) == CONSENSUS_CHECKS:
                return None
        return None

    def _confirm(self, projected: np.ndarray, removed: np.ndarray) -> list[int] | None:
        """If the rows left after `removed` are consistent with the code, the removed rows that really
        deviate from that codeword (a candidate may include honest rows: they are given back)."""
        if not self._consistent(projected, removed):
            return None
        kept = np.setdiff1d(np.arange(self.n_workers), removed)
        fit, *_ = np.linalg.lstsq(self._basis[kept], projected[kept], rcond=None)
        tolerance = self.rtol * _norm_without_overflow(projected[kept])
        deviations = [_norm_without_overflow(projected[worker] - self._basis[worker] @ fit) for worker in removed]
        return [int(worker) for worker, deviation in zip(removed, deviations) if deviation > tolerance]

    def _consistent(self, projected: np.ndarray, removed: np.ndarray) -> bool:
        kept = np.setdiff1d(np.arange(self.n_workers), removed)
        rows = projected[kept]
        coefficients, *_ = np.linalg.lstsq(self._basis[kept], rows, rcond=None)
        residual = _norm_without_overflow(rows - self._basis[kept] @ coefficients)
        return bool(residual <= self.rtol * _norm_without_overflow(rows))

    def _recovery_weights(self, honest: np.ndarray) -> np.ndarray:
        """a_H with a_H^T W[honest] = 1^T: the sum from the honest rows alone (minimum-norm solution)."""
        target = self._basis.T @ self._sum_functional
        weights, *_ = np.linalg.lstsq(self._basis[honest].T, target, rcond=None)
        return weights


def _project(messages: np.ndarray, projections: np.ndarray) -> np.ndarray:
    """messages @ projections by blocks of columns: as fast as one matrix-vector product for a few
    projections (a plain (n, d) @ (d, 2) product runs at half that speed in OpenBLAS here)."""
    projected = np.zeros((messages.shape[0], projections.shape[1]))
    for start in range(0, messages.shape[1], _PROJECTION_BLOCK_COLUMNS):
        stop = start + _PROJECTION_BLOCK_COLUMNS
        projected += messages[:, start:stop] @ projections[start:stop]
    return projected


def _norm_without_overflow(values: np.ndarray) -> float:
    """Frobenius norm that survives forged values near the float64 limit (squares of 1e200 overflow)."""
    largest = float(np.max(np.abs(values), initial=0.0))
    if largest == 0.0 or not np.isfinite(largest):
        return largest
    return largest * float(np.linalg.norm(values / largest))


def _giant_rows(projected: np.ndarray) -> np.ndarray:
    """Rows more than GIANT_FACTOR times the median row's size: forged values so large that they would
    drown the other rows' syndromes; the second locator attempt treats them as erasures."""
    sizes = np.abs(projected).max(axis=1)
    return np.flatnonzero(sizes > GIANT_FACTOR * np.median(sizes))


def _samples_for_one_honest_set(n_workers: int, n_adversaries: int, dimension: int) -> int:
    """Random row sets needed to draw one free of s adversaries with probability 0.999 (capped)."""
    all_honest = math.comb(n_workers - n_adversaries, dimension) / math.comb(n_workers, dimension)
    if all_honest >= 1.0:
        return 1
    if all_honest <= 0.0:
        return CONSENSUS_SAMPLES
    return int(min(CONSENSUS_SAMPLES, math.ceil(math.log(1e-3) / math.log1p(-all_honest))))


def _split_real_parity_and_code(parity_check: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal real bases of the parity space (p, n) and of the code (n, n - p).

    The complex parity rows come in conjugate pairs, so their real and imaginary parts span a real space
    of dimension p; an SVD gives both orthonormal bases without a rank guess (the spectrum is exactly
    sqrt(n) p times, then zero).
    """
    n_parity, n = parity_check.shape
    if n_parity == 0:
        return np.zeros((0, n)), np.eye(n)
    stacked = np.vstack([parity_check.real, parity_check.imag])
    _, _, right = np.linalg.svd(stacked)
    return right[:n_parity], right[n_parity:].T
