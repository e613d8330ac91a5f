"""Draco's repetition code: groups of r workers compute the same partition; the PS takes the majority.

Worker w belongs to group w // r and computes partition w // r, so there are n / r partitions. Replicas
are compared within a tolerance instead of bit for bit (the reference's `np.array_equal`), because honest
replicas computed on different hardware or BLAS builds differ in the last bits.

What the tolerance lets an adversary slip through: two messages "agree" when
    max_k |a_k - b_k| <= atol + rtol * min(max_k |a_k|, max_k |b_k|).
The smaller norm, so that an adversary's own magnitude never widens the tolerance (with the larger one,
a forgery 2h agreed with an honest h at rtol = 0.5: a slip of |h|, twice what was stated). An adversary
whose message agrees with an honest replica may be picked as its group's answer, so it can move that
group's contribution to the sum by at most atol + rtol * ||honest||_inf per coordinate, and the total by
at most that times the number of groups it sits in. Anything farther is outvoted and flagged.

The vote: a group's answer is the replica agreeing with the most replicas (ties: lowest worker id) and
the replicas not agreeing with it are flagged; without a strict majority the decode raises DecodeError
naming the group. More than s colluding replicas that agree among themselves ARE the majority: no vote
can tell them from honest ones, and the group's answer is theirs: the decode returns only answers that
agree with a strict majority of their group. Erased replicas (workers that did not answer, named by the
caller) take no part: the vote is among the replicas that arrived, a strict majority of those, and a
group none of whose replicas arrived raises DecodeError naming it.

Cost: comparing every pair of replicas is O(r^2 d), 0.7 s per round at r = 15, d = 1e6. Instead a probe
of a few random columns names each group's likely answer (its reference) and bounds every pair's
distance from below; then ONE pass over all messages finds which replicas equal their group's reference.
When these facts settle the vote (the usual case: honest replicas bit-identical, forgeries far off), that
is all. Otherwise the triangle inequality turns each exact measurement into bounds on the other pairs'
distances and on the replicas' norms, and the group's replicas are measured against one replica at a time
(with their norms) until the bounds decide the vote: in the worst case every pair is measured, as the
pairwise vote does. Honest replicas that differ in their last bits need one such pass per group. The
outcome (answer, flags, error) is always the pairwise vote's; only its cost depends on the probe.
Measured by bench/aggregation_cost.py at n = 45, d = 1e6 with every group in dispute: 0.68 s -> 0.025 s
at r = 15, 0.091 s -> 0.039 s at r = 3 (the geometric median: 0.53 s).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from robust_training.codes.base import Code, DecodeResult
from robust_training.errors import DecodeError, TrainingError

logger = logging.getLogger(__name__)

#: Columns per block in the passes over the messages (temporaries of n x block doubles stay in cache).
_BLOCK_COLUMNS = 4096
#: Random columns the probe compares to pick each group's reference (cost only: the vote stays exact).
_PROBE_COLUMNS = 64
#: Relative slack on the triangle-inequality bounds, far above the rounding of the distances they combine,
#: so a bound never decides a pair the exact comparison would decide otherwise.
_BOUND_SLACK = 1e-12
#: Threads scanning column ranges in parallel, and the fewest columns worth a thread of their own.
SCAN_THREADS = min(4, os.cpu_count() or 1)
_PARALLEL_MIN_COLUMNS = 1 << 18


class RepetitionCode(Code):
    """n workers in groups of `redundancy`; tolerates s = (r - 1) // 2 adversaries per group.

    `seed` only drives the probe that makes the vote fast; decoded sums and flags do not depend on it,
    and the probe is drawn afresh from the seed at every decode, so even its cost is a function of the
    messages.
    """

    name = "repetition"

    def __init__(
        self, n_workers: int, redundancy: int, rtol: float = 1e-9, atol: float = 0.0, seed: int = 0
    ) -> None:
        if redundancy < 1 or n_workers < 1:
            raise TrainingError(f"need n_workers >= 1 and redundancy >= 1, got {n_workers} and {redundancy}.")
        if n_workers % redundancy:
            raise TrainingError(
                f"the repetition code needs n_workers divisible by redundancy: {n_workers} workers cannot form "
                f"groups of {redundancy}."
            )
        if rtol < 0 or atol < 0:
            raise TrainingError(f"tolerances must be non-negative, got rtol={rtol} and atol={atol}.")
        self.n_workers = n_workers
        self.redundancy = redundancy
        self.n_partitions = n_workers // redundancy
        self.max_adversaries = (redundancy - 1) // 2
        self.rtol = rtol
        self.atol = atol
        self.seed = seed

    def correctable(self, workers: Iterable[int], erased: Iterable[int] = ()) -> bool:
        """In every group, the honest replicas are a strict majority of those that arrived (with nothing
        erased: at most s adversaries per group)."""
        missing = set(erased)
        adversaries = np.bincount([worker // self.redundancy for worker in set(workers) - missing],
                                  minlength=self.n_partitions)
        arrived = self.redundancy - np.bincount([worker // self.redundancy for worker in missing],
                                                minlength=self.n_partitions)
        return bool(np.all(2 * adversaries < arrived))

    def group_of(self, worker: int) -> list[int]:
        """The workers that compute the same partition as `worker` (its replicas, itself included)."""
        self._check_worker(worker)
        first = worker - worker % self.redundancy
        return list(range(first, first + self.redundancy))

    def partitions_of(self, worker: int) -> list[int]:
        self._check_worker(worker)
        return [worker // self.redundancy]

    def encode(self, worker: int, partition_updates: np.ndarray) -> np.ndarray:
        return self._check_worker_updates(worker, partition_updates)[0].copy()

    def encode_all(self, partition_updates: np.ndarray) -> np.ndarray:
        return np.repeat(self._check_partition_updates(partition_updates), self.redundancy, axis=0)

    def decode(self, messages: np.ndarray, erased: Iterable[int] = ()) -> DecodeResult:
        """Per group, the strict majority of the replicas that arrived (`erased` ones are never read)."""
        received = self._check_messages(messages)
        groups = received.reshape(self.n_partitions, self.redundancy, -1)
        arrived = np.ones((self.n_partitions, self.redundancy), dtype=bool)
        arrived.reshape(-1)[self._check_erased(erased)] = False
        silent = np.flatnonzero(~arrived.any(axis=1))
        if silent.size:
            first = int(silent[0]) * self.redundancy
            raise DecodeError(
                f"repetition group {silent[0]} (workers {first}..{first + self.redundancy - 1}) has no strict "
                f"majority of agreeing replicas: none of its {self.redundancy} replicas arrived."
            )
        with np.errstate(invalid="ignore", over="ignore"):  # inf - inf in a forged row: it agrees with nothing
            references, probe_spread, probe_norms = self._probe(groups, arrived)
            equal, reference_total = _scan_against_references(groups, references)
            equal &= arrived  # a missing replica is never part of the answer's majority
            disputed = ~equal.all(axis=1)
            if not np.isfinite(reference_total).all():  # equal replicas may still be non-finite
                disputed |= ~np.isfinite(groups[np.arange(self.n_partitions), references]).all(axis=1)
            flagged: list[int] = []
            winners = np.zeros(self.n_partitions, dtype=int)  # replica index of each group's answer
            for group in np.flatnonzero(disputed):
                members = np.flatnonzero(arrived[group])  # replica indices that arrived
                replicas = groups[group] if members.size == self.redundancy else groups[group, members]  # no copy
                vote = _GroupVote(replicas, self.rtol, self.atol,
                                  probe_spread[group][np.ix_(members, members)], probe_norms[group, members])
                vote.learn_reference(int(np.searchsorted(members, references[group])), equal[group, members])
                first = group * self.redundancy
                winner, agreeing = vote.settle(int(group), first, self.redundancy)
                winners[group] = members[winner]
                flagged.extend(int(first + member) for member in members[~agreeing])
        total = reference_total
        if not equal[np.arange(self.n_partitions), winners].all():
            # an answer differs from the reference summed in the pass: sum the answers afresh
            rows = np.arange(self.n_partitions) * self.redundancy + winners
            total = received[rows[0]].copy()
            for row in rows[1:]:
                total += received[row]
        if flagged:
            logger.debug("repetition decode flagged workers %s", flagged)
        return DecodeResult(total=total, flagged=flagged)

    def _probe(self, groups: np.ndarray, arrived: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """On a few random columns: per group the arrived replica agreeing with the most arrived others
        (ties: lowest), and exact lower bounds on every pair's distance (groups, r, r) and every replica's
        norm (groups, r).
        """
        dimension = groups.shape[2]
        rng = np.random.default_rng(self.seed)
        columns = np.sort(rng.integers(0, max(dimension, 1), size=min(dimension, _PROBE_COLUMNS)))
        sample = groups[:, :, columns]
        spread = np.abs(sample[:, :, None, :] - sample[:, None, :, :]).max(axis=3, initial=0.0)
        norms = np.abs(sample).max(axis=2, initial=0.0)
        agree = spread <= self.atol + self.rtol * np.minimum(norms[:, :, None], norms[:, None, :])
        votes = np.where(arrived, (agree & arrived[:, None, :]).sum(axis=2), -1)
        return votes.argmax(axis=1), spread, norms


class _GroupVote:
    """The exact pairwise majority vote of one group in dispute, measuring only what its outcome needs.

    Knowledge is kept as bounds: on every pair's distance max_k |a_k - b_k| and on every replica's norm
    max_k |a_k|. A pair is settled when its bounds put it on one side of the tolerance whatever the exact
    values; a replica measured against all others (a pivot) has its row known exactly.
    """

    def __init__(self, replicas: np.ndarray, rtol: float, atol: float, spread_low: np.ndarray,
                 norm_low: np.ndarray) -> None:
        self.replicas = replicas
        self.rtol = rtol
        self.atol = atol
        self.size = len(replicas)
        self.pair_low = spread_low.copy()  # a max over some columns bounds the max over all from below
        self.pair_high = np.full((self.size, self.size), np.inf)
        np.fill_diagonal(self.pair_high, 0.0)
        self.norm_low = norm_low.copy()
        self.norm_high = np.full(self.size, np.inf)
        self.norms_exact = False
        self.pivots: set[int] = set()

    def learn_reference(self, reference: int, equal: np.ndarray) -> None:
        """The pass's facts: which replicas equal the reference (distance 0), and the reference's norm."""
        row = self.replicas[reference]
        norm = max(float(row.max(initial=0.0)), -float(row.min(initial=0.0)))  # NaN propagates
        self.norm_low[reference] = self.norm_high[reference] = norm
        self._learn_row(reference, np.where(equal, 0.0, self.pair_low[reference]), np.where(equal, 0.0, np.inf))

    def settle(self, group: int, first: int, group_size: int) -> tuple[int, np.ndarray]:
        """The pairwise vote's answer and its agreement row; measure more until the bounds decide them.

        `first`, `group_size`: the group's first worker and its replicas, arrived or not (for the error).
        """
        while True:
            agree, disagree = self._settled_pairs()
            count_low = agree.sum(axis=1)
            count_high = self.size - disagree.sum(axis=1)
            winner = int(np.argmax(count_low))
            best = int(count_low[winner])
            earlier = np.arange(self.size) < winner  # an earlier replica wins a tie
            blockers = np.where(earlier, count_high >= best, count_high > best)
            blockers[winner] = count_high[winner] != best
            if not blockers.any():
                break
            open_rows = ~(agree | disagree).all(axis=1)
            pivot = winner if open_rows[winner] else _strongest(blockers & open_rows, count_high)
            self._measure(pivot)
        if 2 * best <= self.size:
            raise DecodeError(
                f"repetition group {group} (workers {first}..{first + group_size - 1}) has no strict majority of "
                f"agreeing replicas: the largest agreeing set has {best} of {self.size}"
                + (" that arrived." if self.size < group_size else ".")
            )
        return winner, agree[winner]

    def _settled_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(r, r) masks of the pairs the bounds prove agreeing, and prove disagreeing.

        The tolerance uses the smaller norm, so disagreeing needs only one of the two norms bounded from
        above (a forgery's norm is unknown until measured): L > atol + rtol min(high_a, high_b) suffices.
        """
        finite = np.isfinite(self.norm_high)  # a non-finite replica agrees with nothing, not even itself
        agree = self.pair_high <= self.atol + self.rtol * np.minimum.outer(self.norm_low, self.norm_low)
        agree &= np.outer(finite, finite)
        disagree = self.pair_low > self.atol + self.rtol * np.minimum.outer(self.norm_high, self.norm_high)
        if self.norms_exact:
            disagree |= ~np.outer(finite, finite)
        return agree, disagree

    def _measure(self, pivot: int) -> None:
        """One pass over the group: exact distances to `pivot` (and every norm, the first time)."""
        distances, norms = _distances_and_norms(self.replicas, pivot, with_norms=not self.norms_exact)
        if norms is not None:
            self.norm_low, self.norm_high, self.norms_exact = norms, norms.copy(), True
        self.pivots.add(pivot)
        if np.isfinite(self.norm_high[pivot]):
            self._learn_row(pivot, distances, distances)

    def _learn_row(self, pivot: int, low: np.ndarray, high: np.ndarray) -> None:
        """Bounds on the distances from `pivot` to every replica, spread to all pairs and norms by the
        triangle inequality (with slack for the rounding of the distances combined)."""
        with np.errstate(invalid="ignore"):
            through_low = np.maximum(np.subtract.outer(low, high), np.subtract.outer(low, high).T)
            through_low -= _BOUND_SLACK * np.add.outer(high, high)
            through_high = np.add.outer(high, high) * (1 + _BOUND_SLACK)
            self.pair_low = np.fmax(self.pair_low, through_low)  # a NaN bound says nothing
            self.pair_high = np.fmin(self.pair_high, through_high)
            self.pair_low[pivot] = self.pair_low[:, pivot] = np.fmax(self.pair_low[pivot], low)
            self.pair_high[pivot] = self.pair_high[:, pivot] = np.fmin(self.pair_high[pivot], high)
            if not self.norms_exact:
                norm_low, norm_high = self.norm_low[pivot], self.norm_high[pivot]
                implied_low = np.maximum(low - norm_high, norm_low - high) * (1 - _BOUND_SLACK)
                self.norm_low = np.fmax(self.norm_low, implied_low)
                self.norm_high = np.fmin(self.norm_high, (norm_high + high) * (1 + _BOUND_SLACK))
                self.norm_low[pivot], self.norm_high[pivot] = norm_low, norm_high
            np.fill_diagonal(self.pair_low, 0.0)
            np.fill_diagonal(self.pair_high, 0.0)


def _strongest(candidates: np.ndarray, count_high: np.ndarray) -> int:
    """The candidate that could agree with the most replicas (ties: lowest id)."""
    ids = np.flatnonzero(candidates)
    return int(ids[np.argmax(count_high[ids])])


def _distances_and_norms(replicas: np.ndarray, pivot: int, with_norms: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Per replica max_k |replica_k - pivot_k| and, if asked, max_k |replica_k|, by blocks of columns."""
    size, dimension = replicas.shape
    distances = np.zeros(size)
    norms = np.zeros(size) if with_norms else None
    buffer = np.empty((size, min(dimension, _BLOCK_COLUMNS)))
    for start in range(0, dimension, _BLOCK_COLUMNS):
        block = replicas[:, start : start + _BLOCK_COLUMNS]
        work = buffer[:, : block.shape[1]]
        if norms is not None:
            np.abs(block, out=work)
            np.maximum(norms, work.max(axis=1, initial=0.0), out=norms)
        np.subtract(block, block[pivot], out=work)
        np.abs(work, out=work)
        np.maximum(distances, work.max(axis=1, initial=0.0), out=distances)
    return distances, norms


def _scan_against_references(groups: np.ndarray, references: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One pass over the data: which replicas equal their group's reference (groups, r), and the sum of
    the references (d,), which is the total when every group's answer equals its reference.

    Equality (NaN equals nothing) is the cheapest exact fact a pass can establish; distances are measured
    only for groups that need them. Long messages are cut into column ranges scanned by parallel threads
    (numpy releases the GIL in its loops; each range writes its own slice of the total).
    """
    dimension = groups.shape[2]
    reference_total = np.empty(dimension)
    n_threads = min(SCAN_THREADS, dimension // _PARALLEL_MIN_COLUMNS) or 1
    bounds = [dimension * part // n_threads // _BLOCK_COLUMNS * _BLOCK_COLUMNS for part in range(n_threads)]
    ranges = list(zip(bounds, [*bounds[1:], dimension]))
    if n_threads == 1:
        differs = _scan_columns(groups, references, reference_total, *ranges[0])
    else:
        with ThreadPoolExecutor(n_threads) as pool:
            differs = np.logical_or.reduce(list(pool.map(
                lambda columns: _scan_columns(groups, references, reference_total, *columns), ranges)))
    return ~differs, reference_total


def _scan_columns(groups: np.ndarray, references: np.ndarray, reference_total: np.ndarray, begin: int,
                  end: int) -> np.ndarray:
    """The scan over columns begin..end-1, by blocks through one preallocated buffer (nothing of size
    n x d is allocated: fresh pages cost more than the arithmetic here); returns which replicas differ."""
    n_groups, size, _ = groups.shape
    differs = np.zeros((n_groups, size), dtype=bool)
    every_group = np.arange(n_groups)
    buffer = np.empty((n_groups, size, min(end - begin, _BLOCK_COLUMNS)), dtype=bool)
    for start in range(begin, end, _BLOCK_COLUMNS):
        stop = min(start + _BLOCK_COLUMNS, end)
        block = groups[:, :, start:stop]
        reference = block[every_group, references]
        np.sum(reference, axis=0, out=reference_total[start:stop])
        work = buffer[:, :, : stop - start]
        np.not_equal(block, reference[:, None, :], out=work)
        differs |= work.any(axis=2)
    return differs
