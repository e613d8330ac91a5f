"""Draco's repetition code: groups of r workers compute the same partition; the PS takes the majority.

Worker w belongs to group w // r and computes partition w // r, so there are n / r partitions. Replicas
are compared within a tolerance instead of bit for bit (the reference's `np.array_equal`), because honest
replicas computed on different hardware or BLAS builds differ in the last bits.

What the tolerance lets an adversary slip through: two messages "agree" when
    max_k |a_k - b_k| <= atol + rtol * max(max_k |a_k|, max_k |b_k|).
An adversary whose message agrees with the honest replicas may be picked as its group's answer, so it can
move that group's contribution to the sum by at most atol + rtol * ||honest||_inf per coordinate, and the
total by at most that times the number of groups it sits in. Anything farther is outvoted and flagged.
"""

from __future__ import annotations

import logging

import numpy as np

from robust_training.codes.base import Code, DecodeResult
from robust_training.errors import DecodeError, TrainingError

logger = logging.getLogger(__name__)


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
        total = np.zeros(received.shape[1])
        flagged: list[int] = []
        for group in range(self.n_partitions):
            first = group * self.redundancy
            replicas = received[first : first + self.redundancy]
            winner, agreeing = self._majority(group, replicas)
            total += replicas[winner]
            flagged.extend(first + member for member in range(self.redundancy) if not agreeing[member])
        if flagged:
            logger.debug("repetition decode flagged workers %s", flagged)
        return DecodeResult(total=total, flagged=flagged)

    def _majority(self, group: int, replicas: np.ndarray) -> tuple[int, np.ndarray]:
        """Index of the replica agreeing with the most others, and which replicas agree with it.

        Fast path: every replica agrees with the first one (the adversary-free case costs one pass).
        """
        finite = np.isfinite(replicas).all(axis=1)  # an inf would otherwise stretch the tolerance to inf
        with np.errstate(invalid="ignore"):  # inf - inf in a forged row: that row is non-finite anyway
            return self._vote(group, replicas, finite)

    def _vote(self, group: int, replicas: np.ndarray, finite: np.ndarray) -> tuple[int, np.ndarray]:
        norms = np.max(np.abs(replicas), axis=1, initial=0.0)
        to_first = np.max(np.abs(replicas - replicas[0]), axis=1, initial=0.0)
        agree_first = to_first <= self.atol + self.rtol * np.maximum(norms, norms[0])
        agree_first &= finite & finite[0]
        if agree_first.all():
            return 0, agree_first
        size = len(replicas)
        agreement = np.zeros((size, size), dtype=bool)
        for a in range(size):
            distance = np.max(np.abs(replicas - replicas[a]), axis=1, initial=0.0)
            within = distance <= self.atol + self.rtol * np.maximum(norms, norms[a])
            agreement[a] = within & finite & finite[a]
        counts = agreement.sum(axis=1)
        winner = int(np.argmax(counts))
        if 2 * counts[winner] <= size:
            first = group * size
            raise DecodeError(
                f"repetition group {group} (workers {first}..{first + size - 1}) has no strict majority of "
                f"agreeing replicas: the largest agreeing set has {counts[winner]} of {size}."
            )
        return winner, agreement[winner]
