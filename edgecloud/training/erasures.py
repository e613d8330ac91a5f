"""Whether a round whose `erased` workers did not answer can still give an update the PS may apply.

A worker that misses the round's deadline is an erasure: its position is known, its content missing.
The PS does not know who the adversaries are, so it must assume the worst placement of the s it was
configured for among the workers that did answer:
- cyclic code: s adversaries and e erasures decode exactly when 2s + e <= r - 1 (capped by what float64
  allows, `CyclicCode.correctable`), whoever they are;
- repetition code: in every group the honest replicas must be a strict majority of those that arrived,
  and the worst case puts all s adversaries in one group (groups are runs of consecutive worker ids);
- no code: the aggregator needs its own n > a f + b over the n workers that arrived.
Beyond that the round is skipped: never a wrong update.
"""

from __future__ import annotations

from collections.abc import Sequence

from robust_training.aggregators import Aggregator
from robust_training.codes import Code


def worst_case_placements(arrived: Sequence[int], n_adversaries: int) -> list[list[int]]:
    """Every run of `n_adversaries` consecutive workers among those that arrived (cyclically): the
    placements that defeat a per-group majority first; a count-only bound (cyclic) sees them all alike."""
    if n_adversaries == 0 or not arrived:
        return [[]]
    count = min(n_adversaries, len(arrived))
    return [[arrived[(start + k) % len(arrived)] for k in range(count)] for start in range(len(arrived))]


def why_not_decodable(code: Code | None, aggregator: Aggregator | None, n_workers: int, n_adversaries: int,
                      erased: Sequence[int]) -> str | None:
    """None when the round's update is exact (a code) or guaranteed (an aggregator) with `erased`
    missing and up to `n_adversaries` wrong answers among the rest; else the reason, one sentence."""
    missing = set(erased)
    arrived = [worker for worker in range(n_workers) if worker not in missing]
    if not arrived:
        return "no worker answered"
    if code is not None:
        for placement in worst_case_placements(arrived, n_adversaries):
            if not code.correctable(placement, missing):
                return (f"the {code.name} code with redundancy {code.redundancy} cannot correct {n_adversaries} "
                        f"adversaries beside {len(missing)} missing answers (workers {sorted(missing)})")
        return None
    assert aggregator is not None
    if n_adversaries >= len(arrived):
        return f"{len(arrived)} answers cannot outvote {n_adversaries} adversaries"
    problem = aggregator.feasibility_problem(len(arrived), n_adversaries)
    return None if problem is None else f"with {len(missing)} answers missing, {problem}"
