"""Rules that select updates by their distances: Krum, multi-Krum, Bulyan, MDA, MoNNA.

All read one matrix of pairwise distances from `distances.pairwise_distances` (cancellation-free,
overflow-free). Ties (scores equal to a relative 1e-9, equal diameters) are broken by the rows' content
(their sum, then their squared norm), never by their position, so that the result depends neither on the
order of the workers nor on the rounding a translation brings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from robust_training.aggregators.base import Aggregator, AggregatorTags, WorkerRequirement
from robust_training.aggregators.coordinate import HONEST_MAJORITY, median_of_sorted
from robust_training.aggregators.distances import pairwise_distances, row_distances
from robust_training.errors import TrainingError

KRUM_REQUIREMENT = WorkerRequirement(2, 2, "Blanchard et al., 2017")
BULYAN_REQUIREMENT = WorkerRequirement(4, 2, "El Mhamdi et al., 2018")


def content_ranks(updates: np.ndarray) -> np.ndarray:
    """Each row's rank by (sum, squared norm): an order of the rows that ignores their positions."""
    with np.errstate(over="ignore"):
        order = np.lexsort((np.einsum("ij,ij->i", updates, updates), updates.sum(axis=1)))
    ranks = np.empty(len(order), dtype=np.int64)
    ranks[order] = np.arange(len(order))
    return ranks


#: Scores this close (relatively) are a tie: rounding alone can order them, and a translation changes
#: the rounding (nearest-neighbour mixing makes such ties common: it outputs many equal rows).
SCORE_TIE_RTOL = 1e-9


def order_by_score(scores: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """Row indices by increasing score; scores within SCORE_TIE_RTOL of the previous one form one group,
    ordered by content rank. Infinite scores never join a finite group."""
    order = np.argsort(scores, kind="stable")
    ordered = scores[order]
    with np.errstate(invalid="ignore"):
        close = (np.diff(ordered) <= SCORE_TIE_RTOL * np.abs(ordered[1:])) & np.isfinite(ordered[1:])
    group = np.cumsum(np.concatenate([[True], ~close]))
    return order[np.lexsort((ranks[order], group))]


def mean_of_rows(updates: np.ndarray, rows: np.ndarray | list[int]) -> np.ndarray:
    """The mean of the given rows as one weighted product: `updates[rows].mean(0)` would first copy them
    (320 MB for 40 rows of 1e6), which costs more than the arithmetic on a loaded machine."""
    weights = np.zeros(updates.shape[0])
    weights[rows] = 1.0 / len(rows)
    return weights @ updates


def krum_scores(squared: np.ndarray, n_neighbours: int) -> np.ndarray:
    """Sum of each row's squared distances to its n_neighbours nearest other rows."""
    others = squared.copy()
    np.fill_diagonal(others, np.inf)
    return np.sort(others, axis=1)[:, :n_neighbours].sum(axis=1)


@dataclass
class Krum(Aggregator):
    """Krum (Blanchard, El Mhamdi, Guerraoui & Stainer, "Machine learning with adversaries: Byzantine
    tolerant gradient descent", NeurIPS 2017) and multi-Krum: the m updates with the smallest scores,
    averaged.

    Score of i = sum of squared distances to its n - f - 2 nearest other updates, as in Blanchard et al.
    (ByzFL averages over n - f - 1 instead, which can select a different update; a test shows one).
    Krum returns an honest update when n > 2f + 2. m=1 is Krum; m=None selects n - f updates (multi-Krum
    as ByzFL defines it).
    """

    m: int | None = 1

    tags = AggregatorTags(requirement=KRUM_REQUIREMENT, far_outliers_ignored=True, selects_a_row=True)

    def __post_init__(self) -> None:
        self.name = "krum" if self.m == 1 else "multikrum"
        if self.m != 1:
            self.tags = AggregatorTags(requirement=KRUM_REQUIREMENT, far_outliers_ignored=True)

    def aggregate(self, updates: np.ndarray, f: int) -> np.ndarray:
        n = updates.shape[0]
        n_selected = n - f if self.m is None else self.m
        if not 1 <= n_selected <= n:
            raise TrainingError(f"multi-Krum must select between 1 and n={n} updates, got m={n_selected}.")
        with np.errstate(over="ignore"):
            scores = krum_scores(pairwise_distances(updates) ** 2, n - f - 2)
        selected = order_by_score(scores, content_ranks(updates))[:n_selected]
        return updates[selected[0]].copy() if n_selected == 1 else mean_of_rows(updates, selected)


class Bulyan(Aggregator):
    """Bulyan (El Mhamdi, Guerraoui & Rouault, "The hidden vulnerability of distributed learning in
    Byzantium", ICML 2018), over Krum; needs n >= 4f + 3.

    1. theta = n - 2f times, Krum (with n_remaining - f - 2 neighbours, at least 1) picks one of the
       remaining updates and moves it to the selection S.
    2. Per coordinate, the beta = theta - 2f values of S closest to S's median are averaged. Those form a
       contiguous window of S's sorted values: the window whose farthest value from the median is
       nearest wins (the lowest one on an exact tie, so positions never matter).
    """

    name = "bulyan"
    tags = AggregatorTags(requirement=BULYAN_REQUIREMENT, far_outliers_ignored=True)

    def aggregate(self, updates: np.ndarray, f: int) -> np.ndarray:
        n = updates.shape[0]
        n_selected, n_kept = n - 2 * f, n - 4 * f
        with np.errstate(over="ignore"):
            squared = pairwise_distances(updates) ** 2
        ranks = content_ranks(updates)
        remaining = list(range(n))
        selection: list[int] = []
        while len(selection) < n_selected:
            if len(remaining) > 1:
                scores = krum_scores(squared[np.ix_(remaining, remaining)], max(len(remaining) - f - 2, 1))
                chosen = remaining[int(order_by_score(scores, ranks[remaining])[0])]
            else:
                chosen = remaining[0]
            selection.append(chosen)
            remaining.remove(chosen)
        ordered = updates[sorted(selection)]  # a fresh copy: sort it in place rather than copy it again
        ordered.sort(axis=0)
        median = median_of_sorted(ordered)
        n_windows = n_selected - n_kept + 1
        reach = np.stack([np.maximum(median - ordered[low], ordered[low + n_kept - 1] - median)
                          for low in range(n_windows)])
        lows = np.argmin(reach, axis=0)
        total = np.zeros(ordered.shape[1])
        for rank in range(n_selected):  # masks, not gathers: take_along_axis took 1.5 s at d = 1e6
            total += np.where((lows <= rank) & (rank < lows + n_kept), ordered[rank], 0.0)
        return total / n_kept


class MinimumDiameterAveraging(Aggregator):
    """MDA (El Mhamdi, Guerraoui & Rouault, "Distributed momentum for Byzantine-resilient stochastic
    gradient descent", ICLR 2021): the average of the n - f updates whose diameter (largest pairwise
    distance) is smallest; needs n > 2f.

    ByzFL enumerates all C(n, f) subsets (1.2 million at n = 45, f = 5). Here the smallest diameter t is
    found by bisection over the pairwise distances: a subset of diameter <= t exists iff removing f
    updates covers every pair farther apart than t, a vertex cover of size f, searched by branching with
    the kernel rules of Buss (a row in more than `budget` far pairs must go). Among subsets of equal
    diameter the one with the smallest sum of squared pairwise distances wins.
    """

    name = "mda"
    tags = AggregatorTags(requirement=HONEST_MAJORITY, far_outliers_ignored=True)

    def aggregate(self, updates: np.ndarray, f: int) -> np.ndarray:
        if f == 0:
            return updates.mean(axis=0)
        distances = pairwise_distances(updates)
        thresholds = np.unique(np.concatenate([[0.0], distances[np.triu_indices(len(distances), 1)]]))
        low, high = 0, len(thresholds) - 1  # thresholds[high] (the full diameter) always works
        while low < high:
            middle = (low + high) // 2
            if _vertex_covers(distances > thresholds[middle], f, first_only=True):
                high = middle
            else:
                low = middle + 1
        kept_sets = [_pad_removal(distances, cover, f) for cover in _vertex_covers(distances > thresholds[low], f)]
        ranks = content_ranks(updates)
        with np.errstate(over="ignore"):
            squared = distances ** 2
        best = min(kept_sets, key=lambda kept: (squared[np.ix_(kept, kept)].sum(), sorted(ranks[kept].tolist())))
        return mean_of_rows(updates, best)


def _vertex_covers(far: np.ndarray, budget: int, first_only: bool = False) -> list[frozenset[int]]:
    """Vertex covers of size <= budget of the graph `far` (boolean adjacency); every minimal one is among
    them (branching on an edge (u, v): every cover holds u or v)."""
    found: list[frozenset[int]] = []

    def search(adjacency: np.ndarray, chosen: frozenset[int]) -> None:
        if first_only and found:
            return
        degrees = adjacency.sum(axis=1)
        if not degrees.any():
            found.append(chosen)
            return
        room = budget - len(chosen)
        forced = np.flatnonzero(degrees > room)  # not taking it would take all its > room neighbours
        if forced.size > room or (not forced.size and degrees.sum() // 2 > room * room):
            return  # with no vertex forced, each of `room` vertices covers at most `room` edges
        if forced.size:
            branches = [forced.tolist()]
        else:
            u = int(np.argmax(degrees > 0))
            branches = [[u], [int(np.flatnonzero(adjacency[u])[0])]]
        for taken in branches:
            rest = adjacency.copy()
            rest[taken, :] = False
            rest[:, taken] = False
            search(rest, chosen | frozenset(taken))

    search(far.copy(), frozenset())
    return found


def _pad_removal(distances: np.ndarray, cover: frozenset[int], f: int) -> list[int]:
    """The kept rows once `cover` and, if it is smaller than f, the rows farthest from the others are
    removed (removing more rows never widens the diameter)."""
    kept = [row for row in range(len(distances)) if row not in cover]
    while len(kept) > len(distances) - f:
        kept.pop(int(np.argmax(distances[np.ix_(kept, kept)].max(axis=1))))
    return kept


@dataclass
class MoNNA(Aggregator):
    """MoNNA (Farhadkhani, Guerraoui, Gupta, Hoang, Pinot & Stephan, "Robust collaborative learning with
    linear gradient overhead", ICML 2023): the average of the n - f updates nearest to a trusted pivot
    worker's (`pivot`, 0 as in ByzFL); needs n > 2f. Depends on which row is the pivot, so it is not
    permutation-invariant; the pivot is assumed honest."""

    pivot: int = 0

    name = "monna"
    tags = AggregatorTags(requirement=HONEST_MAJORITY, permutation_invariant=False, far_outliers_ignored=True)

    def aggregate(self, updates: np.ndarray, f: int) -> np.ndarray:
        n = updates.shape[0]
        if not 0 <= self.pivot < n:
            raise TrainingError(f"MoNNA's pivot must be a worker id in 0..{n - 1}, got {self.pivot}.")
        distances = row_distances(updates, updates[self.pivot])
        return mean_of_rows(updates, order_by_score(distances, content_ranks(updates))[: n - f])
