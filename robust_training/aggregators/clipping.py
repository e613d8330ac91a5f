"""Rules that bound each update's influence by clipping its norm: centered clipping, static clipping."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from robust_training.aggregators.base import Aggregator, AggregatorTags, PreAggregation
from robust_training.aggregators.coordinate import HONEST_MAJORITY
from robust_training.aggregators.distances import row_distances
from robust_training.errors import TrainingError


def clip_factors(norms: np.ndarray, radius: float) -> np.ndarray:
    """min(1, radius / norm) per row (1 for a zero row)."""
    with np.errstate(divide="ignore"):
        return np.minimum(1.0, radius / norms)


@dataclass
class CenteredClipping(Aggregator):
    """Centered clipping (Karimireddy, He & Jaggi, "Learning from history for Byzantine robust
    optimization", ICML 2021): `iterations` times, v <- v + mean_i clip_radius(x_i - v), where
    clip_r(y) = y min(1, r / ||y||).

    As in the paper (and ByzFL's `CenteredClipping(m=None, L=1, tau=100.0)`), v starts at the previous
    round's output (zero in the first round): the rule has memory, so an instance serves one training
    run. The radius is absolute, so the rule is neither translation- nor scale-equivariant, and the
    Byzantine rows move v by at most f * radius / n per iteration. Feasible for n > 2f.
    """

    radius: float = 100.0
    iterations: int = 1
    _center: np.ndarray | None = field(default=None, init=False, repr=False)

    name = "cc"
    tags = AggregatorTags(requirement=HONEST_MAJORITY, translation_equivariant=False, scale_equivariant=False,
                          unanimous=False)

    def __post_init__(self) -> None:
        if self.radius <= 0 or self.iterations < 1:
            raise TrainingError(f"centered clipping needs a positive radius and >= 1 iteration, got radius="
                                f"{self.radius} and iterations={self.iterations}.")

    def aggregate(self, updates: np.ndarray, f: int) -> np.ndarray:
        center = self._center
        if center is None or center.shape != updates.shape[1:]:
            center = np.zeros(updates.shape[1])
        for _ in range(self.iterations):
            factors = clip_factors(row_distances(updates, center), self.radius)
            center = center + (factors @ updates - factors.sum() * center) / updates.shape[0]
        self._center = center
        return center.copy()


@dataclass
class StaticClipping(PreAggregation):
    """Static clipping: every update scaled to norm at most `threshold` (ByzFL's `Clipping(c=2.0)`; the
    fixed-threshold baseline that Allouah et al., "Boosting robustness by clipping gradients in distributed
    learning", AISTATS 2025, make adaptive). Bounds any one worker's influence by threshold / n, at the
    price of shrinking honest updates above the threshold."""

    threshold: float = 2.0

    name = "clip"
    translation_equivariant = False
    scale_equivariant = False
    unanimous = False

    def __post_init__(self) -> None:
        if self.threshold <= 0:
            raise TrainingError(f"the clipping threshold must be positive, got {self.threshold}.")

    def output_shape(self, n: int, f: int) -> tuple[int, int]:
        return n, f

    def transform(self, updates: np.ndarray, f: int) -> np.ndarray:
        norms = row_distances(updates, np.zeros(updates.shape[1]))
        return updates * clip_factors(norms, self.threshold)[:, None]
