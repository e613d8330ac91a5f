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
is where its max |W| of 1.8e5 (n = 45, s = 5, docs/architecture.md §5) and its precision trouble come from. Ours has
max |W| = 0.16 at n = 45, r = 21 (0.24 at r = 11). When n + p - 1 is odd (n even, r odd) the code is
negacyclic instead of cyclic (a wrap flips the sign); 1 is then not a codeword and a cosine functional a
with a^T W = 1^T replaces it (max |W| = 4.5 at n = 44, r = 21).

Decoding
--------
1. Rows the caller names in `erased` (workers that did not answer) are missing and never read; rows
   holding inf or NaN are unreadable. Both are removed from every proposal. An unreadable row is a wrong
   message at a known place and costs two parity checks like an adversary; a missing one costs one, so
   s' adversaries are corrected beside e missing rows when 2 s' + e <= p and float64 can still read the
   sum from the rows left (`_adversaries_beside`); beyond that: DecodeError.
2. The usual round, in one pass over the messages. Locate on a sample: SAMPLE_CHUNKS runs of contiguous
   columns at places drawn from the code's seed (4096 columns; all of them when d is smaller), projected
   on N_PROJECTIONS random vectors from the same seed (so a decode is a function of its inputs); the
   locator (`cyclic_locate`) ranks removals by how well the kept rows fit the code on those (n, c)
   projections. Then verify on ALL columns: one pass over the kept rows (`kept_pass`, a numba kernel)
   forms their sum a_H^T R_H, the residual of the p - t checks that vanish on codewords (`cyclic_fit`:
   computed from the kept rows only, relative to the median kept row) and the kept rows' norms. Removed
   rows are never read. If the residual is within tolerance, that is the answer: the sample only chose
   which rows to try, the test that accepts them is the same as in step 3, so every guarantee below holds.
   If not, the pass has also said in which column blocks the residual lies: the WORST_BLOCKS worst join
   the sample and the locate and pass are repeated once (a deviation hidden from the sample shows there).
3. Otherwise (deviations still not located, e.g. spread by colluders over more blocks than that; an
   unreadable row; a locate that fails on the sample): project all columns on
   N_PROJECTIONS fixed random vectors (one pass, with the rows' norms, which find the unreadable rows),
   locate on them and verify as in step 2. A deviation those projections missed (they are not secret
   either) fails the check; the residual's rows then become extra projection directions (they cannot be
   orthogonal to the deviation that caused them) and the locate is repeated, VERIFY_ATTEMPTS times in
   all. So correctness never rests on the sample or the projections being secret; an adversary who knows
   the seed can only make the decode slower: one more pass (step 2's second locate), or about three
   more when it defeats that too.
4. Threads: the pass is one numba thread and the small products (locator, projections) run on one BLAS
   thread (`blas.one_blas_thread`): under CPU contention a multi-threaded OpenBLAS spends its time
   waiting (issue 8: 1.2-2.0 s against 0.22-0.33 s at d = 1e6), and a second numba thread for the pass
   gained nothing at load 5 on this 2-core machine. Measured by bench/aggregation_cost.py at n = 45,
   d = 1e6 (best of 3, nine runs at load 5-16, 2 cores shared with other jobs): r = 21 with 10
   adversaries 0.033-0.100 s (before: 0.10-0.34 s), r = 11 with 5 0.033-0.084 s (before 0.09-0.47 s),
   r = 21 without adversaries (p + 1 = 21 combinations in the pass) 0.06-0.20 s, adversaries hidden
   from the sample (two passes) 0.10-0.29 s. CPU time: 0.032-0.038 s at r = 21 with 10 adversaries and
   r = 11 with 5, 0.06 s at r = 21 without, against 0.035 s for a plain mean.

What is guaranteed
------------------
- At most s deviating workers: the exact sum (relative error <= 1.1e-12 measured at n <= 45, s <= 10 for
  every attack, scalings by 1 + 1e-8 and constants up to 1e15 times the messages, bench/cyclic_exactness.py;
  tests/test_codes_cyclic.py asserts 1e-10), and `flagged` is exactly the deviating set for deviations
  of at least ~1e3 * rtol of the honest messages. Smaller deviations may be given back (not flagged) and then move the
  sum by about that much times ||a_H||: the tolerance is rtol times the median kept message (plus float64
  rounding of the kept rows, see `cyclic_fit`), and nothing below it can be told from rounding.
  rtol = 1e-11 sits far above the rounding of honest float64 messages (~1e-15, also at d = 1e6);
  messages computed in float32 need rtol ~ 1e-5.
- With e erasures, the same for s' deviating workers as far as `correctable(adversaries, erased)` says
  (2 s' + e <= r - 1 within the float64 margins), and the same promise beyond it.
- More than s deviating workers: DecodeError, unless the kept (unflagged) messages lie within that
  tolerance of a codeword, whose sum is then returned. No decoder can tell that case from an honest one
  (the distance is 2s + 1); it needs colluding adversaries who know W and craft messages along a codeword,
  or n - s adversaries consistent among themselves (e.g. identical messages when r >= n - 1). Colluders
  whose rows are kept at M times the honest scale can also hide inconsistencies below float64 rounding
  of their own rows, 3.5e-15 M (`cyclic_fit`); huge rows no longer inflate the rtol part of the
  tolerance (issue 8: Constant(-1e12) at n = 9 returned a sum off by 5e11 without a word).
- Real DFT codes lose numerical distance as n and s grow (a contiguous block of 2s workers can be almost
  a codeword's support). The constructor measures that margin and refuses (n, r) pairs whose margin is
  below what the tests show to decode reliably in float64; n = 45 works for every r. Adversaries who know
  W can exploit that margin with deviations crafted along such a near-codeword: below margin / rtol of
  the messages (about 10 % at n = 45, s = 10, contiguous) they are not reliably located.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np

from robust_training.codes.base import Code, DecodeResult
from robust_training.blas import one_blas_thread
from robust_training.codes.cyclic_fit import Fit, KeptRowTest, frobenius, row_norms
from robust_training.codes.cyclic_locate import CyclicGeometry, Locator
from robust_training.codes.kept_pass import KeptPass, kept_rows_pass
from robust_training.errors import DecodeError, TrainingError

logger = logging.getLogger(__name__)

#: Random projections the locator works on (more columns sharpen the locator's null space; the pass over
#: the messages costs the same for 1 to 8 of them: it is memory-bound).
N_PROJECTIONS = 4
#: Smallest singular value of the code basis restricted to the complement of 2s consecutive workers that
#: we accept (n = 45, s = 10 gives 9e-11 and decodes exactly; n = 64, s = 7 gives 7e-12 and does not).
MIN_NUMERICAL_DISTANCE_MARGIN = 5e-11
#: Smallest singular value of the code basis on the rows kept after erasures and adversaries that we accept:
#: the sum is read from them with an error of about eps / margin (n = 45, r = 21: 2e-4 with 10 rows removed,
#: 9e-11 with 20, where a round of 20 erasures came out 1.2e-6 off). Every accepted (n, r) has at least
#: 1.5e-4 with s rows removed, so this limits erasures only.
MIN_RECOVERY_MARGIN = 1e-5
#: Locate-and-verify rounds: each failed verification adds the residual's directions to the projections.
VERIFY_ATTEMPTS = 3
#: The sample the first locate runs on: runs of contiguous columns at seeded places (4096 columns: the
#: gather and its projection cost ~1 ms at n = 45, against ~30 ms for a pass over d = 1e6).
SAMPLE_CHUNKS = 64
SAMPLE_CHUNK_COLUMNS = 64
#: Locates on a sample before the full decode: the seeded one, then (each time the check fails) the same
#: with the WORST_BLOCKS column blocks where the failed check's residual was largest added: a deviation
#: hidden from the sample shows there, so a seed-aware adversary costs one pass more, not three.
SAMPLE_ATTEMPTS = 2
WORST_BLOCKS = 8
_FIRST_PASS_BLOCK_COLUMNS = 1 << 12  # 45 rows x 4096 float64 = 1.5 MB: within one core's 2 MB L2 here


class CyclicCode(Code):
    """n workers, n partitions, worker i computes partitions i..i+r-1 (mod n); tolerates s = (r-1)//2."""

    name = "cyclic"

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
        self.seed = seed
        self._projection_cache: np.ndarray | None = None
        self._sample_cache: tuple[int, np.ndarray, np.ndarray] | None = None
        n_parity = redundancy - 1
        positions = np.arange(n_workers)
        frequencies = np.pi + 2 * np.pi * (np.arange(n_parity) - (n_parity - 1) / 2) / n_workers
        self._parity_check = np.exp(-1j * np.outer(frequencies, positions))  # (p, n), consecutive powers
        self._locator_points = np.exp(-2j * np.pi * positions / n_workers)  # ratio between parity rows
        self._real_parity, self._basis = _split_real_parity_and_code(self._parity_check)
        unscaled = self._minimum_weight_columns()
        self._sum_functional = self._choose_sum_functional(unscaled)
        self._weights = unscaled / (self._sum_functional @ unscaled)
        self._removal_margins = self._contiguous_removal_margins()
        self._check_numerical_margin()
        self._capacity = [self._adversaries_beside(n_erased) for n_erased in range(n_workers + 1)]
        self._geometry = CyclicGeometry(self._parity_check, self._locator_points, self._real_parity, self._basis,
                                        self.max_adversaries, rtol, seed)

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

    def correctable(self, workers: Iterable[int], erased: Iterable[int] = ()) -> bool:
        """2 s' + e <= r - 1 (each erasure costs one parity check, each adversary two: distance r), as far
        as float64 allows: see `_adversaries_beside`."""
        missing = set(erased)
        return len(set(workers) - missing) <= self._max_adversaries_with(len(missing))

    def decode(self, messages: np.ndarray, erased: Iterable[int] = ()) -> DecodeResult:
        received = self._check_messages(messages)
        erased_ids = self._check_erased(erased)
        self._check_capacity(np.zeros(0, dtype=int), erased_ids)
        with one_blas_thread():
            quick = self._decode_from_sample(received, erased_ids)
            return quick if quick is not None else self._decode_from_projections(received, erased_ids)

    def _decode_from_sample(self, received: np.ndarray, erased_ids: np.ndarray) -> DecodeResult | None:
        """Step 2 of the module doc: locate on the sampled columns, verify on all of them in one pass;
        again on the blocks where that check failed most; None when neither settles the round (then the
        full decode does)."""
        columns, projections = self._sample(received.shape[1])
        for attempt in range(SAMPLE_ATTEMPTS):
            sample = received[:, columns]  # a copy: the erased rows are zeroed in it only
            sample[erased_ids] = 0.0
            if not np.isfinite(sample).all():
                return None  # unreadable rows: the full decode finds every one of them
            try:
                located = self._locate(sample @ projections, erased_ids, erased_ids.size)
            except DecodeError:
                return None  # the sample may weigh a deviation more than the full rows do: let them decide
            verified, kept_pass, _ = self._verify(received, np.array(located.removed, dtype=int))
            if verified.passes:
                return self._result(kept_pass.total, located.removed, erased_ids)
            if not np.isfinite(kept_pass.residual):
                return None
            columns = np.union1d(columns, kept_pass.worst_columns(WORST_BLOCKS))
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, received.shape[1], 2, attempt]))
            projections = rng.random((columns.size, N_PROJECTIONS)) - 0.5
        return None

    def _decode_from_projections(self, received: np.ndarray, erased_ids: np.ndarray) -> DecodeResult:
        """Step 3 of the module doc: locate on projections of all columns, verify, and repeat with the
        residual's directions; DecodeError when no located set verifies."""
        if erased_ids.size:  # their content is never read: zero rows are finite and project to zero
            received = received.copy()
            received[erased_ids] = 0.0
        norms, projected = self._norms_and_projections(received)
        readable = np.isfinite(norms)
        unreadable = np.flatnonzero(~readable)
        forced = np.union1d(erased_ids, unreadable)
        self._check_capacity(unreadable, erased_ids)
        if unreadable.size:  # 0 * inf would poison the products below; a row's projection is its own
            received = np.where(readable[:, None], received, 0.0)
            projected[unreadable] = 0.0
        for _ in range(VERIFY_ATTEMPTS):
            located = self._locate(projected, forced, erased_ids.size)
            verified, kept_pass, checks = self._verify(received, np.array(located.removed, dtype=int))
            if verified.passes:
                return self._result(kept_pass.total, located.removed, erased_ids)
            logger.debug("cyclic decode: the projections missed a deviation; adding %d directions", len(checks))
            with np.errstate(over="ignore", invalid="ignore"):
                projected = np.hstack([projected, received @ _directions(checks @ received)])
        correctable = self._max_adversaries_with(erased_ids.size)
        raise DecodeError(
            f"the cyclic code cannot decode: the messages kept after removing {correctable} or fewer "
            f"workers are never consistent with the code, so more than {correctable} of the "
            f"{self.n_workers - erased_ids.size} workers that answered sent inconsistent messages."
        )

    def _check_capacity(self, unreadable: np.ndarray, erased_ids: np.ndarray) -> None:
        """DecodeError when the unreadable rows (known wrong) and the missing ones are already too many."""
        if not self.correctable(unreadable, erased_ids):
            raise DecodeError(
                f"the cyclic code cannot decode: {unreadable.size} messages hold inf or NaN and "
                f"{erased_ids.size} are missing, more than it corrects (beside {erased_ids.size} missing, at "
                f"most {max(self._max_adversaries_with(erased_ids.size), 0)} wrong ones)."
            )

    @staticmethod
    def _result(total: np.ndarray, removed: tuple[int, ...], erased_ids: np.ndarray) -> DecodeResult:
        flagged = [w for w in removed if w not in erased_ids]
        if flagged:
            logger.debug("cyclic decode flagged workers %s", flagged)
        return DecodeResult(total=total, flagged=flagged)

    def _max_adversaries_with(self, n_erased: int) -> int:
        """s': adversaries corrected beside e erasures (-1: the erasures alone are too many)."""
        return self._capacity[n_erased]

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

    def _contiguous_removal_margins(self) -> np.ndarray:
        """margins[m]: smallest singular value of the code basis without m consecutive workers, m = 0..p
        (the worst pattern for a DFT code: consecutive rows carry a codeword most nearly)."""
        n_parity = self.redundancy - 1
        return np.array([np.linalg.svd(self._basis[removed:], compute_uv=False)[-1]
                         for removed in range(n_parity + 1)])

    def _adversaries_beside(self, n_erased: int) -> int:
        """The most adversaries a with 2 a + e <= p whose removal leaves the kept rows both unique (margin
        of e + 2 a removed rows, as the constructor demands of 2 s) and well-conditioned enough to read
        the sum from (margin of e + a removed rows); -1 when no a >= 0 qualifies."""
        margins = self._removal_margins
        for adversaries in range((len(margins) - 1 - n_erased) // 2, -1, -1):
            if (margins[n_erased + 2 * adversaries] >= MIN_NUMERICAL_DISTANCE_MARGIN
                    and margins[n_erased + adversaries] >= MIN_RECOVERY_MARGIN):
                return adversaries
        return -1

    def _check_numerical_margin(self) -> None:
        n_erased = 2 * self.max_adversaries
        if n_erased == 0:
            return
        margin = self._removal_margins[n_erased]
        if margin < MIN_NUMERICAL_DISTANCE_MARGIN:
            raise TrainingError(
                f"the cyclic code with n={self.n_workers}, r={self.redundancy} cannot decode reliably in float64 "
                f"(numerical distance margin {margin:.1e} < {MIN_NUMERICAL_DISTANCE_MARGIN:.0e}); use fewer "
                f"workers per code or a smaller redundancy."
            )
    # -- decoding ------------------------------------------------------------------------------------------

    def _projections(self, dimension: int) -> np.ndarray:
        """(d, c) uniform vectors from the code's seed; kept for the last d (32 MB at d = 1e6)."""
        if self._projection_cache is None or self._projection_cache.shape[0] != dimension:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, dimension]))
            self._projection_cache = rng.random((dimension, N_PROJECTIONS)) - 0.5  # 10x cheaper than normals
        return self._projection_cache

    def sampled_columns(self, dimension: int) -> np.ndarray:
        """The column ids the first locate reads at this d: public, as is the seed they come from (an
        adversary may know them; what it hides there is caught by the pass over all columns)."""
        return self._sample(dimension)[0].copy()

    def _sample(self, dimension: int) -> tuple[np.ndarray, np.ndarray]:
        """(sampled column ids, their (m, c) projections), from the code's seed; kept for the last d.

        All columns (and `_projections`) when d <= SAMPLE_CHUNKS * SAMPLE_CHUNK_COLUMNS; else SAMPLE_CHUNKS
        runs of SAMPLE_CHUNK_COLUMNS contiguous columns at random places, so that gathering them reads
        whole cache lines.
        """
        if self._sample_cache is not None and self._sample_cache[0] == dimension:
            return self._sample_cache[1:]
        if dimension <= SAMPLE_CHUNKS * SAMPLE_CHUNK_COLUMNS:
            columns, projections = np.arange(dimension), self._projections(dimension)
        else:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, dimension, 1]))
            starts = np.sort(rng.choice(dimension // SAMPLE_CHUNK_COLUMNS, SAMPLE_CHUNKS, replace=False))
            columns = (SAMPLE_CHUNK_COLUMNS * starts[:, None] + np.arange(SAMPLE_CHUNK_COLUMNS)).reshape(-1)
            projections = rng.random((columns.size, N_PROJECTIONS)) - 0.5
        self._sample_cache = (dimension, columns, projections)
        return columns, projections

    def _norms_and_projections(self, received: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The rows' norms and their random projections in one pass over the messages.

        Both read all n x d numbers (360 MB at n = 45, d = 1e6); by blocks of columns that stay in cache
        the messages are read from memory once instead of twice (0.06 s -> 0.04 s there).
        """
        projections = self._projections(received.shape[1])
        squares = np.zeros(received.shape[0])
        projected = np.zeros((received.shape[0], projections.shape[1]))
        with np.errstate(over="ignore", invalid="ignore"):
            for start in range(0, received.shape[1], _FIRST_PASS_BLOCK_COLUMNS):
                block = received[:, start : start + _FIRST_PASS_BLOCK_COLUMNS]
                projected += block @ projections[start : start + _FIRST_PASS_BLOCK_COLUMNS]
                squares += np.einsum("ij,ij->i", block, block)
        return row_norms(received, squares), projected

    def _locate(self, projected: np.ndarray, forced: np.ndarray, n_erased: int) -> Fit:
        """The removal the locator settles on, `forced` rows (erased and unreadable) always removed;
        DecodeError when none fits (see module doc)."""
        max_adversaries = self._max_adversaries_with(n_erased)
        locator = Locator(self._geometry, projected, forced, max_removed=n_erased + max_adversaries)
        if max_adversaries == 0:  # nothing to correct, but with r = 2 (or few erasures) a deviation is detected
            fit = locator.fit(forced)
            if fit.passes:
                return fit
            raise DecodeError(
                f"the cyclic code with redundancy {self.redundancy} and {n_erased} missing messages detects "
                f"inconsistent messages but corrects none beside them."
            )
        located = locator.locate()
        if located is None:
            raise DecodeError(
                f"the cyclic code cannot decode: no set of at most {max_adversaries} workers explains the "
                f"messages, so more than {max_adversaries} of the {self.n_workers - n_erased} workers that "
                f"answered sent inconsistent messages."
            )
        return located

    def _verify(self, received: np.ndarray, removed: np.ndarray) -> tuple[Fit, KeptPass, np.ndarray]:
        """(fit of the kept rows on the full messages, the pass (their sum a_H^T R_H, where the residual
        lies), the check rows): one pass over the kept rows (`kept_pass`), the removed ones never read."""
        test = KeptRowTest(self._real_parity, self.rtol)
        kept = np.setdiff1d(np.arange(self.n_workers), removed)
        combination = np.vstack([test.checks(removed, kept), self._recovery_weights(kept)[None, :]])
        kept_pass = kept_rows_pass(received, kept, combination)
        fit = test.judge(tuple(int(w) for w in removed), kept_pass.residual, kept_pass.norms)
        return fit, kept_pass, self._spread(combination[:-1], kept)

    def _spread(self, kept_checks: np.ndarray, kept: np.ndarray) -> np.ndarray:
        """(q, n) check rows over all workers, zero on the removed ones (`_directions` multiplies them by
        the zeroed messages)."""
        checks = np.zeros((kept_checks.shape[0], self.n_workers))
        checks[:, kept] = kept_checks
        return checks

    def _recovery_weights(self, honest: np.ndarray) -> np.ndarray:
        """a_H with a_H^T W[honest] = 1^T: the sum from the honest rows alone (minimum-norm solution)."""
        target = self._basis.T @ self._sum_functional
        weights, *_ = np.linalg.lstsq(self._basis[honest].T, target, rcond=None)
        return weights


def _directions(residual_rows: np.ndarray) -> np.ndarray:
    """(d, q) projection directions along the residual's rows, scaled like the uniform projections."""
    lengths = np.array([frobenius(row) for row in residual_rows])
    useful = residual_rows[(lengths > 0) & np.isfinite(lengths)]
    scale = np.sqrt(residual_rows.shape[1] / 12.0) / lengths[(lengths > 0) & np.isfinite(lengths)]
    return (useful * scale[:, None]).T


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
