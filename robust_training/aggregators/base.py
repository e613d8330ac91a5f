"""What every aggregator is: `agg(updates (n, d), f) -> (d,)`, its declared capabilities, its feasibility.

The call convention is ByzFL's and Flower's. Capabilities are declared on the class (`AggregatorTags`, in
the spirit of scikit-learn's estimator tags) so that the property suite and the CLI read them from the
registry instead of keeping their own lists.

Rows with a NaN or an infinity are Byzantine by definition: `__call__` removes them (and logs which)
before the rule sees the rest, and lowers f by their number; a rule therefore never computes with a
non-finite value, and a declared f stays an upper bound on the adversaries left.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from robust_training.errors import TrainingError

logger = logging.getLogger(__name__)


class InfeasibleAggregationError(TrainingError):
    """An aggregator cannot give its guarantee for this many workers and adversaries."""


@dataclass(frozen=True)
class WorkerRequirement:
    """n > factor * f + offset: the number of workers a rule needs for its guarantee with f adversaries."""

    factor: int
    offset: int
    source: str  # who states the bound, for the error message

    def min_workers(self, f: int) -> int:
        return self.factor * f + self.offset + 1

    def describe(self) -> str:
        terms = [f"{self.factor}f" if self.factor > 1 else "f"] if self.factor else []
        if self.offset or not terms:
            terms.append(str(self.offset))
        return "n > " + " + ".join(terms)


@dataclass(frozen=True)
class AggregatorTags:
    """What a rule guarantees; the property suite checks exactly what is declared here.

    far_outliers_ignored: with f adversaries far outside the honest rows, the output stays in the honest
        rows' coordinate-wise bounding box (Krum, medians, trimmed mean; not the geometric median, which
        only stays within a bounded distance).
    unanimous: when every update is the same x, the output is x.
    selects_a_row: the output is one of the input rows (Krum).
    tolerance: relative tolerance of the equivariance checks (iterative rules need a looser one).
    """

    requirement: WorkerRequirement
    permutation_invariant: bool = True
    translation_equivariant: bool = True
    scale_equivariant: bool = True
    far_outliers_ignored: bool = False
    unanimous: bool = True
    selects_a_row: bool = False
    tolerance: float = 1e-9


@dataclass
class AggregationReport:
    """An aggregate and the rows removed before aggregating (non-finite: Byzantine by definition)."""

    point: np.ndarray
    excluded: list[int]


def validated_updates(updates: np.ndarray, f: int) -> np.ndarray:
    """`updates` as a float64 (n, d) array with 0 <= f < n, or a TrainingError saying what is wrong."""
    points = np.asarray(updates, dtype=np.float64)
    if points.ndim != 2 or points.shape[0] == 0:
        raise TrainingError(f"an aggregator needs a non-empty (n, d) array of updates, got shape {points.shape}.")
    if not 0 <= f < points.shape[0]:
        raise TrainingError(f"f must be between 0 and n - 1 = {points.shape[0] - 1}, got {f}.")
    return points


def finite_rows(points: np.ndarray) -> np.ndarray:
    """Mask of the rows without NaN or infinity, without an (n, d) temporary: a row with one has a
    non-finite sum; a finite row whose sum overflows (two entries of 1e308) is then checked entry-wise."""
    with np.errstate(over="ignore"):
        sums = points.sum(axis=1)
    finite = np.isfinite(sums)
    for row in np.flatnonzero(~finite):  # overflowing sums of finite rows, e.g. two 1e308 entries
        finite[row] = bool(np.isfinite(points[row]).all())
    return finite


class Aggregator(ABC):
    """One verb: reduce n updates, up to f of them adversarial, to one."""

    #: Set by every concrete rule: its name in the registry and its capabilities.
    name: str = ""
    tags: AggregatorTags

    def __call__(self, updates: np.ndarray, f: int) -> np.ndarray:
        return self.explain(updates, f).point

    def explain(self, updates: np.ndarray, f: int) -> AggregationReport:
        """The aggregate and which rows were excluded as non-finite."""
        points = validated_updates(updates, f)
        self.check_feasible(points.shape[0], f)
        finite = finite_rows(points)
        excluded = np.flatnonzero(~finite).tolist()
        if not excluded:
            return AggregationReport(self.aggregate(points, f), [])
        if len(excluded) == len(finite):
            raise TrainingError(f"every one of the {len(finite)} updates contains NaN or infinity.")
        logger.warning("%s: excluded %d non-finite update(s) %s before aggregating", self.name, len(excluded),
                       excluded)
        if len(excluded) > f:
            logger.warning("%s: %d non-finite updates exceed the declared f=%d", self.name, len(excluded), f)
        return AggregationReport(self.aggregate(points[finite], max(f - len(excluded), 0)), excluded)

    def feasibility_problem(self, n: int, f: int) -> str | None:
        """Why this rule cannot guarantee anything for n workers and f adversaries, or None."""
        requirement = self.tags.requirement
        if n >= requirement.min_workers(f):
            return None
        return (f"{self.name} needs {requirement.describe()} workers ({requirement.source}), "
                f"got n={n} and f={f}.")

    def check_feasible(self, n: int, f: int) -> None:
        """Raise InfeasibleAggregationError before training when n workers cannot outvote f adversaries.

        Removing k non-finite rows keeps a feasible (n, f) feasible: n - k > a(f - k) + b when n > af + b
        and a >= 1.
        """
        if not 0 <= f < n:
            raise InfeasibleAggregationError(f"f must be between 0 and n - 1 = {n - 1}, got {f}.")
        problem = self.feasibility_problem(n, f)
        if problem is not None:
            raise InfeasibleAggregationError(problem)

    def min_workers(self, f: int) -> int:
        """The smallest n this rule accepts with f adversaries."""
        n = f + 1
        while self.feasibility_problem(n, f) is not None:
            n += 1
        return n

    @abstractmethod
    def aggregate(self, updates: np.ndarray, f: int) -> np.ndarray:
        """The aggregate of validated, finite float64 updates."""


class PreAggregation(ABC):
    """Maps (n, d) updates with f adversaries to (m, d) rows with at most f' adversarial ones, for any
    aggregator to reduce (ByzFL's pre-aggregators; composed as "nnm+krum")."""

    name: str = ""
    permutation_invariant: bool = True
    translation_equivariant: bool = True
    scale_equivariant: bool = True
    #: With f far outliers, the honest outputs stay in the honest box and at most f' outputs are far.
    keeps_far_outliers_apart: bool = False
    #: Identical inputs give identical outputs equal to them.
    unanimous: bool = True

    @abstractmethod
    def output_shape(self, n: int, f: int) -> tuple[int, int]:
        """(m, f'): rows produced and the adversarial rows among them at worst."""

    @abstractmethod
    def transform(self, updates: np.ndarray, f: int) -> np.ndarray:
        """The (m, d) rows for the next stage."""


class Composed(Aggregator):
    """Pre-aggregations applied in order, then an aggregator; its tags follow from the parts."""

    def __init__(self, stages: list[PreAggregation], aggregator: Aggregator) -> None:
        self.stages = stages
        self.aggregator = aggregator
        self.name = "+".join([stage.name for stage in stages] + [aggregator.name])
        inner = aggregator.tags
        self.tags = AggregatorTags(
            requirement=inner.requirement,
            permutation_invariant=inner.permutation_invariant and all(s.permutation_invariant for s in stages),
            translation_equivariant=inner.translation_equivariant and all(s.translation_equivariant for s in stages),
            scale_equivariant=inner.scale_equivariant and all(s.scale_equivariant for s in stages),
            far_outliers_ignored=inner.far_outliers_ignored and all(s.keeps_far_outliers_apart for s in stages),
            unanimous=inner.unanimous and all(s.unanimous for s in stages),
            tolerance=inner.tolerance,
        )

    def feasibility_problem(self, n: int, f: int) -> str | None:
        for stage in self.stages:
            n_out, f_out = stage.output_shape(n, f)
            if not 0 <= f_out < n_out:
                return f"{stage.name} leaves {n_out} rows, too few for f={f_out} adversaries, from n={n}."
            n, f = n_out, f_out
        problem = self.aggregator.feasibility_problem(n, f)
        return None if problem is None else f"after {'+'.join(s.name for s in self.stages)}: {problem}"

    def aggregate(self, updates: np.ndarray, f: int) -> np.ndarray:
        for stage in self.stages:
            n_out, f_out = stage.output_shape(updates.shape[0], f)
            updates, f = stage.transform(updates, f), f_out
        return self.aggregator.aggregate(updates, f)
