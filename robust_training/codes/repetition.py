"""Draco's repetition code: groups of r workers compute the same partition; the PS takes the majority.

Worker w belongs to group w // r and computes partition w // r, so there are n / r partitions. Replicas
are compared within a tolerance instead of bit for bit (the reference's `np.array_equal`), because honest
replicas computed on different hardware or BLAS builds differ in the last bits.

What the tolerance lets an adversary slip through: two messages "agree" when
    max_k |a_k - b_k| <= atol + rtol * max(max_k |a_k|, max_k |b_k|).
An adversary whose message agrees with the honest replicas may be picked as its group's answer, so it can
move that group's contribution to the sum by at most atol + rtol * ||honest||_inf per coordinate, and the
total by at most that times the number of groups it sits in. Anything farther is outvoted and flagged.

The vote: a group's answer is the replica agreeing with the most replicas (ties: lowest worker id) and
the replicas not agreeing with it are flagged; without a strict majority the decode raises DecodeError
naming the group. More than s colluding replicas that agree among themselves ARE the majority: no vote
can tell them from honest ones, and the group's answer is theirs. Cost: one pass over the messages when
replicas are bit-identical (the usual case); a group in dispute adds a pass over its own replicas.
"""

from __future__ import annotations

import logging

import numpy as np

from robust_training.codes.base import Code, DecodeResult
from robust_training.errors import DecodeError, TrainingError

logger = logging.getLogger(__name__)

#: Columns per block in the one-pass replica comparison (temporaries of n x block doubles stay in cache).
_BLOCK_COLUMNS = 4096


class RepetitionCode(Code):
    """n workers in groups of `redundancy`; tolerates s = (r - 1) // 2 adversaries per group."""

    def __init__(self, n_workers: int, redundancy: int, rtol: float = 1e-9, atol: float = 0.0) -> None:
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

    def decode(self, messages: np.ndarray) -> DecodeResult:
        received = self._check_messages(messages)
        groups = received.reshape(self.n_partitions, self.redundancy, -1)
        with np.errstate(invalid="ignore"):  # inf - inf in a forged row: that row is non-finite anyway
            to_first, first_total = _spread_to_first_replica(groups)
            flagged: list[int] = []
            winners = np.zeros(self.n_partitions, dtype=int)  # replica index of each group's answer
            for group in range(self.n_partitions):
                first = group * self.redundancy
                if not to_first[group].any():
                    continue  # bit-identical finite replicas, the adversary-free case: one pass in all
                winners[group], agreeing = self._majority(group, groups[group], to_first[group])
                flagged.extend(first + member for member in range(self.redundancy) if not agreeing[member])
        total = first_total
        if winners.any():  # a first replica was outvoted: sum the answers afresh (no cancellation against it)
            rows = np.arange(self.n_partitions) * self.redundancy + winners
            total = received[rows[0]].copy()
            for row in rows[1:]:
                total += received[row]
        if flagged:
            logger.debug("repetition decode flagged workers %s", flagged)
        return DecodeResult(total=total, flagged=flagged)

    def _agree(self, distance: np.ndarray, norm_a: np.ndarray, norm_b: np.ndarray) -> np.ndarray:
        """The tolerance test; a non-finite replica agrees with nothing (an inf would stretch it to inf)."""
        within = distance <= self.atol + self.rtol * np.maximum(norm_a, norm_b)
        return within & np.isfinite(norm_a) & np.isfinite(norm_b)

    def _majority(self, group: int, replicas: np.ndarray, to_first: np.ndarray) -> tuple[int, np.ndarray]:
        """Index of the replica agreeing with the most others, and which replicas agree with it.

        `to_first` (distances to replica 0, from the decode's first pass) spares one row of pairs.
        """
        norms, spread = _pairwise_spread(replicas, to_first)
        agreement = self._agree(spread, norms[:, None], norms[None, :])
        counts = agreement.sum(axis=1)
        winner = int(np.argmax(counts))
        size = len(replicas)
        if 2 * counts[winner] <= size:
            first = group * size
            raise DecodeError(
                f"repetition group {group} (workers {first}..{first + size - 1}) has no strict majority of "
                f"agreeing replicas: the largest agreeing set has {counts[winner]} of {size}."
            )
        return winner, agreement[winner]


def _spread_to_first_replica(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One pass over the data: per replica max |replica - first replica of its group| (groups, r), and
    the sum of the first replicas (d,), which is the total when no group is in dispute.

    Works on blocks of columns through one preallocated buffer: nothing of size n x d is allocated
    (fresh pages cost more than the arithmetic here). A non-finite value makes its spread NaN or inf
    (inf - inf is NaN, and NaN propagates through max), so such a group never looks undisputed.
    """
    n_groups, size, dimension = groups.shape
    to_first = np.zeros((n_groups, size))
    first_total = np.empty(dimension)
    buffer = np.empty((n_groups, size - 1, min(dimension, _BLOCK_COLUMNS)))
    for start in range(0, dimension, _BLOCK_COLUMNS):
        block = groups[:, :, start : start + _BLOCK_COLUMNS]
        np.sum(block[:, 0], axis=0, out=first_total[start : start + _BLOCK_COLUMNS])
        others = buffer[:, :, : block.shape[2]]
        np.subtract(block[:, 1:], block[:, :1], out=others)
        np.abs(others, out=others)
        np.maximum(to_first[:, 1:], others.max(axis=2, initial=0.0), out=to_first[:, 1:])
    return to_first, first_total


def _pairwise_spread(replicas: np.ndarray, to_first: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Max |replica| (r,) and the (r, r) matrix of max |replica_a - replica_b|, for a group in dispute.

    Row 0 of the matrix is `to_first`; the pairs among replicas 1..r-1 are measured by blocks of columns.
    """
    size, dimension = replicas.shape
    norms = np.zeros(size)
    spread = np.zeros((size, size))
    spread[0] = to_first
    later, other = np.triu_indices(size - 1, k=1)
    pairs = (later + 1, other + 1)
    buffer = np.empty((len(later), min(dimension, _BLOCK_COLUMNS)))
    for start in range(0, dimension, _BLOCK_COLUMNS):
        block = replicas[:, start : start + _BLOCK_COLUMNS]
        np.maximum(norms, np.abs(block).max(axis=1), out=norms)
        if len(later):
            work = buffer[:, : block.shape[1]]
            np.subtract(block[pairs[0]], block[pairs[1]], out=work)
            np.abs(work, out=work)
            spread[pairs] = np.maximum(spread[pairs], work.max(axis=1))
    spread = np.triu(spread, k=1)
    spread = spread + spread.T
    spread[~np.isfinite(norms), :] = np.nan  # a non-finite replica agrees with nothing, not even itself
    return norms, spread
