"""Robust aggregation baselines: callables over an (n, d) array of updates with f adversaries.

The call convention is ByzFL's and Flower's: `aggregator(updates, f) -> (d,)`. These are what Draco is
compared against: they cost more than a decode as d grows (the geometric median iterates over all n x d
numbers) and they only approximate the honest mean, whereas a code recovers the exact sum.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

from robust_training.errors import TrainingError

logger = logging.getLogger(__name__)

#: Columns per block when the geometric median measures distances: keeps temporaries cache-sized
#: instead of a second n x d array.
_DISTANCE_BLOCK_COLUMNS = 1 << 13


class Aggregator(ABC):
    """One verb: reduce n updates, up to f of them adversarial, to one."""

    def __call__(self, updates: np.ndarray, f: int) -> np.ndarray:
        points = np.asarray(updates, dtype=np.float64)
        if points.ndim != 2 or points.shape[0] == 0:
            raise TrainingError(f"an aggregator needs a non-empty (n, d) array of updates, got shape {points.shape}.")
        if not 0 <= f < points.shape[0]:
            raise TrainingError(f"f must be between 0 and n - 1 = {points.shape[0] - 1}, got {f}.")
        return self.aggregate(points, f)

    @abstractmethod
    def aggregate(self, updates: np.ndarray, f: int) -> np.ndarray:
        """The aggregate of validated float64 updates."""


class Mean(Aggregator):
    """The plain average: what DGD does without a defence; one adversary can move it anywhere."""

    def aggregate(self, updates: np.ndarray, f: int) -> np.ndarray:
        return updates.mean(axis=0)


@dataclass
class WeiszfeldResult:
    point: np.ndarray
    iterations: int
    converged: bool


def weiszfeld(points: np.ndarray, max_iter: int = 100, tol: float = 1e-6, eps: float = 1e-8) -> WeiszfeldResult:
    """Geometric median by Weiszfeld's iteration, smoothed so that it never divides by zero.

    Starts at the mean; each step re-weights the points by 1 / max(eps, distance). Stops when the step is
    at most tol * (1 + ||z||) (relative for large z, absolute near zero) or after max_iter steps.
    """
    estimate = points.mean(axis=0)
    for iteration in range(1, max_iter + 1):
        distances = _row_distances(points, estimate)
        weights = 1.0 / np.maximum(distances, eps)
        updated = (weights @ points) / weights.sum()
        step = float(np.linalg.norm(updated - estimate))
        estimate = updated
        if step <= tol * (1.0 + float(np.linalg.norm(estimate))):
            return WeiszfeldResult(estimate, iteration, True)
    logger.debug("Weiszfeld stopped at max_iter=%d before reaching tol=%g", max_iter, tol)
    return WeiszfeldResult(estimate, max_iter, False)


def _row_distances(points: np.ndarray, center: np.ndarray) -> np.ndarray:
    """||points[i] - center|| for every row (direct differences: no cancellation), by blocks of columns
    through one preallocated buffer: nothing of size n x d is allocated per iteration."""
    n, dimension = points.shape
    squared = np.zeros(n)
    buffer = np.empty((n, min(dimension, _DISTANCE_BLOCK_COLUMNS)))
    for start in range(0, dimension, _DISTANCE_BLOCK_COLUMNS):
        block = points[:, start : start + _DISTANCE_BLOCK_COLUMNS]
        work = buffer[:, : block.shape[1]]
        np.subtract(block, center[start : start + _DISTANCE_BLOCK_COLUMNS], out=work)
        squared += np.einsum("ij,ij->i", work, work)
    return np.sqrt(squared)


@dataclass
class GeometricMedian(Aggregator):
    """argmin_z sum_i ||x_i - z|| (breakdown point 1/2); f is not needed but accepted."""

    max_iter: int = 100
    tol: float = 1e-6
    eps: float = 1e-8

    def aggregate(self, updates: np.ndarray, f: int) -> np.ndarray:
        return weiszfeld(updates, self.max_iter, self.tol, self.eps).point


class CoordinateMedian(Aggregator):
    """The median of each coordinate (stays within the honest range when n > 2f)."""

    def aggregate(self, updates: np.ndarray, f: int) -> np.ndarray:
        return np.median(updates, axis=0)


class TrimmedMean(Aggregator):
    """Per coordinate, drop the f largest and f smallest values and average the rest (needs n > 2f)."""

    def aggregate(self, updates: np.ndarray, f: int) -> np.ndarray:
        n = updates.shape[0]
        if n <= 2 * f:
            raise TrainingError(f"the trimmed mean needs n > 2f, got n={n} and f={f}.")
        if f == 0:
            return updates.mean(axis=0)
        kept = np.partition(updates, (f, n - f - 1), axis=0)[f : n - f]
        return kept.mean(axis=0)


@dataclass
class Krum(Aggregator):
    """Krum (Blanchard et al., 2017) and multi-Krum: the m updates with the smallest Krum scores, averaged.

    Score of i = sum of squared distances to its n - f - 2 nearest other updates. Krum returns an honest
    update when n > 2f + 2; it needs n - f - 2 >= 1 to compute at all. m=1 is Krum; m=None selects n - f
    updates (multi-Krum as ByzFL defines it). Equal scores are common (two mutual nearest neighbours
    score the same); they are broken by the update's sum, then its norm, so that the result does not
    depend on the order of the workers.
    """

    m: int | None = 1

    def aggregate(self, updates: np.ndarray, f: int) -> np.ndarray:
        n = updates.shape[0]
        n_neighbours = n - f - 2
        if n_neighbours < 1:
            raise TrainingError(f"Krum needs n - f - 2 >= 1 (n > 2f + 2 for its guarantee), got n={n} and f={f}.")
        n_selected = n - f if self.m is None else self.m
        if not 1 <= n_selected <= n:
            raise TrainingError(f"multi-Krum must select between 1 and n={n} updates, got m={n_selected}.")
        squared_norms = np.einsum("ij,ij->i", updates, updates)
        squared = squared_norms[:, None] + squared_norms[None, :] - 2.0 * (updates @ updates.T)
        squared = np.maximum(0.5 * (squared + squared.T), 0.0)  # exactly symmetric: ties stay ties
        np.fill_diagonal(squared, np.inf)
        nearest = np.sort(squared, axis=1)[:, :n_neighbours]
        scores = nearest.sum(axis=1)
        selected = np.lexsort((squared_norms, updates.sum(axis=1), scores))[:n_selected]
        return updates[selected].mean(axis=0)


AGGREGATORS: dict[str, Callable[[], Aggregator]] = {
    "mean": Mean,
    "geomedian": GeometricMedian,
    "median": CoordinateMedian,
    "krum": Krum,
    "multikrum": partial(Krum, m=None),
    "trimmed": TrimmedMean,
}


def make_aggregator(name: str) -> Aggregator:
    """The aggregator for a CLI name."""
    if name not in AGGREGATORS:
        raise TrainingError(f"unknown aggregator {name!r}; choose one of {', '.join(AGGREGATORS)}.")
    return AGGREGATORS[name]()
