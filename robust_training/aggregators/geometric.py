"""The geometric median argmin_z sum_i ||x_i - z|| by Weiszfeld's iteration, equivariant to scale.

Where ByzFL differs: its default `GeometricMedian(nu=0.1, T=3)` starts at zero, smooths distances below
an absolute 0.1 and stops after 3 steps, which can leave it far (0.12 on a case in the tests) from the
minimiser. Here the start is the coordinate median, smoothing and stopping are relative to the data's
own scale (the median distance to that start), and the iteration runs until the step is small.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from robust_training.aggregators.base import Aggregator, AggregatorTags
from robust_training.aggregators.coordinate import HONEST_MAJORITY, coordinate_median
from robust_training.aggregators.distances import row_distances, row_magnitudes

logger = logging.getLogger(__name__)


@dataclass
class WeiszfeldResult:
    point: np.ndarray
    iterations: int
    converged: bool


def weiszfeld(points: np.ndarray, max_iter: int = 100, tol: float = 1e-6, eps: float = 1e-8) -> WeiszfeldResult:
    """Geometric median by Weiszfeld's iteration, smoothed so that it never divides by zero.

    Starts at the coordinate median m (robust, so a 1e300 row does not put the start far from the
    others). With s = the median of ||x_i - m|| (the data's own scale; an honest one when n > 2f), each
    step re-weights the points by 1 / max(eps s, distance) and it stops when the step is at most tol s:
    multiplying every update by c > 0 multiplies s, the steps and the result by c, so the rule is
    scale-equivariant (an absolute eps makes it the plain mean for updates of size 1e-12). Weights are
    normalised by the smallest distance, so neither 1e-300 nor 1e300 distances overflow them.
    Not converging within max_iter steps is logged as a warning and reported in the result.
    """
    start = coordinate_median(points)
    magnitudes = row_magnitudes(points)
    distances = row_distances(points, start, magnitudes)
    if np.count_nonzero(distances == 0.0) * 2 > len(distances):
        return WeiszfeldResult(start, 0, True)  # a strict majority of identical rows is the median
    scale = float(np.median(distances))
    floor = eps * scale
    estimate = start
    for iteration in range(1, max_iter + 1):
        smoothed = np.maximum(distances, floor)
        weights = smoothed.min() / smoothed
        updated = (weights @ points) / weights.sum()
        step = float(row_distances(updated[None, :], estimate)[0])
        estimate = updated
        if step <= tol * scale:
            return WeiszfeldResult(estimate, iteration, True)
        distances = row_distances(points, estimate, magnitudes)
    logger.warning("Weiszfeld stopped at max_iter=%d before its step fell below tol=%g of the data scale",
                   max_iter, tol)
    return WeiszfeldResult(estimate, max_iter, False)


@dataclass
class GeometricMedian(Aggregator):
    """argmin_z sum_i ||x_i - z|| (Weiszfeld, 1937; as a Byzantine-robust rule: Chen, Su & Xu, "Distributed
    statistical machine learning in adversarial settings", POMACS 2017; Pillutla, Kakade & Harchaoui,
    "Robust aggregation for federated learning", 2022). Breakdown point 1/2: f only decides feasibility."""

    max_iter: int = 100
    tol: float = 1e-6
    eps: float = 1e-8

    name = "geomedian"
    tags = AggregatorTags(requirement=HONEST_MAJORITY, tolerance=1e-6)

    def aggregate(self, updates: np.ndarray, f: int) -> np.ndarray:
        return weiszfeld(updates, self.max_iter, self.tol, self.eps).point
