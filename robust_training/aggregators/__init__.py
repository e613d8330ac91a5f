"""Robust aggregation baselines: callables over an (n, d) array of updates with f adversaries.

The call convention is ByzFL's and Flower's: `aggregator(updates, f) -> (d,)`. These are what Draco is
compared against: they cost more than a decode as d grows (the geometric median iterates over all n x d
numbers) and they only approximate the honest mean, whereas a code recovers the exact sum.

One registry serves the CLI, the property suite and the benchmark: a rule is tested by being listed here.
Names compose as ByzFL's pre-aggregations do: "nnm+krum" mixes nearest neighbours, then runs Krum.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from robust_training.aggregators.base import (
    AggregationReport,
    Aggregator,
    AggregatorTags,
    Composed,
    InfeasibleAggregationError,
    PreAggregation,
    WorkerRequirement,
)
from robust_training.aggregators.clipping import CenteredClipping, StaticClipping
from robust_training.aggregators.coordinate import CoordinateMedian, Mean, TrimmedMean
from robust_training.aggregators.geometric import GeometricMedian, WeiszfeldResult, weiszfeld
from robust_training.aggregators.mixing import Bucketing, NearestNeighbourMixing
from robust_training.aggregators.selection import Bulyan, Krum, MinimumDiameterAveraging, MoNNA
from robust_training.errors import TrainingError

AGGREGATORS: dict[str, Callable[[], Aggregator]] = {
    "mean": Mean,
    "geomedian": GeometricMedian,
    "median": CoordinateMedian,
    "trimmed": TrimmedMean,
    "krum": Krum,
    "multikrum": partial(Krum, m=None),
    "bulyan": Bulyan,
    "cc": CenteredClipping,
    "mda": MinimumDiameterAveraging,
    "monna": MoNNA,
}
PRE_AGGREGATIONS: dict[str, Callable[[], PreAggregation]] = {
    "nnm": NearestNeighbourMixing,
    "bucketing": Bucketing,
    "clip": StaticClipping,
}


def make_aggregator(name: str) -> Aggregator:
    """The aggregator for a CLI name: a rule, optionally after pre-aggregations ("nnm+krum")."""
    *stages, rule = name.split("+")
    if rule not in AGGREGATORS:
        raise TrainingError(f"unknown aggregator {rule!r}; choose one of {', '.join(AGGREGATORS)}.")
    unknown = [stage for stage in stages if stage not in PRE_AGGREGATIONS]
    if unknown:
        raise TrainingError(f"unknown pre-aggregation {unknown[0]!r} in {name!r}; choose from "
                            f"{', '.join(PRE_AGGREGATIONS)}, then an aggregator (e.g. nnm+krum).")
    if not stages:
        return AGGREGATORS[rule]()
    return Composed([PRE_AGGREGATIONS[stage]() for stage in stages], AGGREGATORS[rule]())


def check_feasible(name: str, n: int, f: int) -> None:
    """Raise InfeasibleAggregationError when aggregator `name` cannot tolerate f adversaries among n."""
    make_aggregator(name).check_feasible(n, f)


def aggregator_help() -> str:
    """The CLI's description of the accepted names, from the registries."""
    return (f"{' | '.join(AGGREGATORS)}; optionally after pre-aggregations {' | '.join(PRE_AGGREGATIONS)} "
            f"joined by + (e.g. nnm+krum).")


__all__ = [
    "AGGREGATORS", "PRE_AGGREGATIONS", "AggregationReport", "Aggregator", "AggregatorTags", "Bucketing", "Bulyan",
    "CenteredClipping", "Composed", "CoordinateMedian", "GeometricMedian", "InfeasibleAggregationError", "Krum",
    "Mean", "MinimumDiameterAveraging", "MoNNA", "NearestNeighbourMixing", "PreAggregation", "StaticClipping",
    "TrimmedMean", "WeiszfeldResult", "WorkerRequirement", "aggregator_help", "check_feasible",
    "make_aggregator", "weiszfeld",
]
