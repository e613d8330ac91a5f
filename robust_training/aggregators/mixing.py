"""Pre-aggregations that average updates before a rule sees them: nearest-neighbour mixing, bucketing.

Both are one (m, n) averaging matrix applied to the (n, d) updates: one BLAS product, no per-row copies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from robust_training.aggregators.base import PreAggregation
from robust_training.aggregators.distances import pairwise_distances
from robust_training.aggregators.selection import content_ranks
from robust_training.errors import TrainingError


class NearestNeighbourMixing(PreAggregation):
    """NNM (Allouah, Farhadkhani, Guerraoui, Gupta, Pinot & Stephan, "Fixing by mixing: a recipe for
    optimal Byzantine ML under heterogeneity", AISTATS 2023): each update is replaced by the average of its
    n - f nearest updates (itself included). Ties in distance go to the row earlier in content order.
    With f far outliers every honest row becomes the honest mean and every outlier's row stays far."""

    name = "nnm"
    keeps_far_outliers_apart = True

    def output_shape(self, n: int, f: int) -> tuple[int, int]:
        return n, f

    def transform(self, updates: np.ndarray, f: int) -> np.ndarray:
        n = updates.shape[0]
        distances = pairwise_distances(updates)
        ranks = np.broadcast_to(content_ranks(updates), (n, n))
        nearest = np.lexsort((ranks, distances), axis=-1)[:, : n - f]
        mixing = np.zeros((n, n))
        np.put_along_axis(mixing, nearest, 1.0 / (n - f), axis=1)
        return mixing @ updates


@dataclass
class Bucketing(PreAggregation):
    """Bucketing (Karimireddy, He & Jaggi, "Byzantine-robust learning on heterogeneous datasets via
    bucketing", ICLR 2022): shuffle the updates, average them in buckets of `size` (the last bucket takes
    the remainder, as ByzFL does). Each adversary spoils at most one bucket, so f stays f over
    ceil(n / size) rows.

    The shuffle is seeded and applied to the rows in content order, so the result does not depend on the
    workers' order; each call draws a fresh shuffle from the instance's generator.
    """

    size: int = 2
    seed: int = 0
    _rng: np.random.Generator = field(init=False, repr=False)

    name = "bucketing"
    keeps_far_outliers_apart = True

    def __post_init__(self) -> None:
        if self.size < 1:
            raise TrainingError(f"a bucket holds at least one update, got size {self.size}.")
        self._rng = np.random.default_rng(self.seed)

    def output_shape(self, n: int, f: int) -> tuple[int, int]:
        return math.ceil(n / self.size), f

    def transform(self, updates: np.ndarray, f: int) -> np.ndarray:
        n = updates.shape[0]
        order = np.argsort(content_ranks(updates))[self._rng.permutation(n)]
        n_buckets = math.ceil(n / self.size)
        mixing = np.zeros((n_buckets, n))
        for bucket in range(n_buckets):
            members = order[bucket * self.size : (bucket + 1) * self.size]
            mixing[bucket, members] = 1.0 / len(members)
        return mixing @ updates
