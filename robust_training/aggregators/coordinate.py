"""Rules that work coordinate by coordinate: mean, median, trimmed mean.

Order statistics come from one `np.sort(axis=0)`: at n = 45, d = 1e6 it takes 0.2 s where
`np.partition(axis=0)` (what `np.median` and the previous trimmed mean used) takes 1.7 s, because
numpy's sort along axis 0 vectorises across the contiguous columns and partition does not.
"""

from __future__ import annotations

import numpy as np

from robust_training.aggregators.base import Aggregator, AggregatorTags, WorkerRequirement

#: Breakdown point 1/2: an honest majority bounds every coordinate.
HONEST_MAJORITY = WorkerRequirement(2, 0, "an honest majority")


def median_of_sorted(ordered: np.ndarray) -> np.ndarray:
    """The per-column median of rows already sorted along axis 0 (a fresh array, not a view of them)."""
    n = ordered.shape[0]
    if n % 2:
        return ordered[n // 2].copy()
    return 0.5 * (ordered[n // 2 - 1] + ordered[n // 2])


def coordinate_median(updates: np.ndarray) -> np.ndarray:
    """The median of each coordinate (mean of the two middle values when n is even)."""
    return median_of_sorted(np.sort(updates, axis=0))


class Mean(Aggregator):
    """The plain average: what DGD does without a defence; one adversary can move it anywhere."""

    name = "mean"
    tags = AggregatorTags(requirement=WorkerRequirement(0, 0, "none"))

    def aggregate(self, updates: np.ndarray, f: int) -> np.ndarray:
        return updates.mean(axis=0)


class CoordinateMedian(Aggregator):
    """The median of each coordinate (Yin, Chen, Ramchandran & Bartlett, "Byzantine-robust distributed
    learning: towards optimal statistical rates", ICML 2018): inside the honest range when n > 2f."""

    name = "median"
    tags = AggregatorTags(requirement=HONEST_MAJORITY, far_outliers_ignored=True)

    def aggregate(self, updates: np.ndarray, f: int) -> np.ndarray:
        return coordinate_median(updates)


class TrimmedMean(Aggregator):
    """Per coordinate, drop the f largest and f smallest values and average the rest (Yin et al., ICML
    2018); needs n > 2f."""

    name = "trimmed"
    tags = AggregatorTags(requirement=HONEST_MAJORITY, far_outliers_ignored=True)

    def aggregate(self, updates: np.ndarray, f: int) -> np.ndarray:
        n = updates.shape[0]
        if f == 0:
            return updates.mean(axis=0)
        return np.sort(updates, axis=0)[f : n - f].mean(axis=0)
