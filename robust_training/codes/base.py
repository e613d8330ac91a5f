"""What every gradient code offers: an assignment of partitions to workers, encode, decode.

A code is the contract between workers and the parameter server (PS): each worker computes the updates of
the partitions `partitions_of(worker)` and sends one d-vector `encode(...)`; the PS turns the n messages,
some of them adversarial, into the exact SUM of all partitions' updates. The coded unit is one
partition's update over a sync period, so nothing here depends on what produced it (one gradient or tau
local steps) nor on d.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from robust_training.errors import TrainingError


@dataclass
class DecodeResult:
    """The PS's view after decoding one round.

    total: exact sum over all partitions of their updates, shape (d,).
    flagged: ids of the workers whose messages the decoder found inconsistent (sorted).
    """

    total: np.ndarray
    flagged: list[int] = field(default_factory=list)


class Code(ABC):
    """One verb each: assignment and encode run on workers, decode on the PS.

    What a code declares about itself (the registry in `robust_training.codes` and the property tests
    rely on it, so a new code is tested by being registered):
    - `name`: its CLI name; the constructor takes (n_workers, redundancy, seed=...).
    - `correctable(workers, erased=())`: whether the decode promises the exact sum and exactly these
      workers flagged when they (and no others) deviate by more than the tolerance while the `erased`
      workers' messages are missing (an erasure: no answer by the round's deadline, position known).
    - `rtol`: deviations below rtol times the honest messages' scale are indistinguishable from rounding.
    - `encoding_matrix`: W with messages = W @ partition updates (every code here is linear).
    The promise beyond `correctable`: DecodeError, unless the unflagged messages that arrived are (within
    the tolerance) the encoding of some partition updates, in which case the result is their sum.
    Erased rows are never read for their content (callers may pass NaN or zeros) and never flagged.
    """

    name: ClassVar[str]
    n_workers: int
    n_partitions: int
    redundancy: int
    max_adversaries: int  # s: adversarial workers the decode tolerates exactly (per group for repetition)
    rtol: float

    @abstractmethod
    def partitions_of(self, worker: int) -> list[int]:
        """Partition ids this worker computes, in the row order `encode` expects."""

    @abstractmethod
    def encode(self, worker: int, partition_updates: np.ndarray) -> np.ndarray:
        """(len(partitions_of(worker)), d) updates -> the worker's (d,) message."""

    @abstractmethod
    def decode(self, messages: np.ndarray, erased: Iterable[int] = ()) -> DecodeResult:
        """(n_workers, d) messages, `erased` rows missing -> exact sum; DecodeError when that is impossible."""

    @abstractmethod
    def correctable(self, workers: Iterable[int], erased: Iterable[int] = ()) -> bool:
        """Whether the decode corrects these workers' messages whatever they send, with the `erased` ones
        missing (see class doc); a worker both erased and listed counts as erased."""

    @property
    def encoding_matrix(self) -> np.ndarray:
        """W (n_workers, n_partitions): the honest messages are W @ partition updates."""
        return self.encode_all(np.eye(self.n_partitions))

    def encode_all(self, partition_updates: np.ndarray) -> np.ndarray:
        """(n_partitions, d) updates -> (n_workers, d) honest messages, as a simulator needs them.

        Subclasses override it when one matrix product does the same faster.
        """
        updates = self._check_partition_updates(partition_updates)
        return np.stack([self.encode(w, updates[self.partitions_of(w)]) for w in range(self.n_workers)])

    # -- shared argument checks -------------------------------------------------------------------------

    def _check_worker(self, worker: int) -> None:
        if not 0 <= worker < self.n_workers:
            raise TrainingError(f"worker id {worker} is outside 0..{self.n_workers - 1}.")

    def _check_worker_updates(self, worker: int, partition_updates: np.ndarray) -> np.ndarray:
        self._check_worker(worker)
        return _float64_rows(partition_updates, len(self.partitions_of(worker)), f"worker {worker}'s partition updates")

    def _check_partition_updates(self, partition_updates: np.ndarray) -> np.ndarray:
        return _float64_rows(partition_updates, self.n_partitions, "the partition updates")

    def _check_messages(self, messages: np.ndarray) -> np.ndarray:
        return _float64_rows(messages, self.n_workers, "the messages")

    def _check_erased(self, erased: Iterable[int]) -> np.ndarray:
        """The erased worker ids, sorted and unique; refused when one is not a worker."""
        ids = np.unique(np.asarray(list(erased), dtype=int))
        if ids.size and (ids[0] < 0 or ids[-1] >= self.n_workers):
            raise TrainingError(f"erased worker ids must lie in 0..{self.n_workers - 1}, got {ids.tolist()}.")
        return ids


def _float64_rows(array: np.ndarray, n_rows: int, what: str) -> np.ndarray:
    """`array` as float64 (no copy when it already is), refused unless it is (n_rows, d)."""
    rows = np.asarray(array, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[0] != n_rows:
        raise TrainingError(f"{what} must have shape ({n_rows}, d), got {rows.shape}.")
    return rows
