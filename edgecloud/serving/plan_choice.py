"""The plans a deployment serves under, and which one the source picks for the next request.

A plain plan is a set of one. A plan set (`edgecloud plan --adaptive`) gives one split per bandwidth
interval; every request carries the plan it runs under as `meta.plan = [index, id]` (the id hashes the
split's stages and the plan file's content hash), so every agent runs that plan's stages for it even
while the source has already moved on to another plan, and a message naming a plan this agent does not
hold is refused rather than run under the wrong stages.

Hysteresis: the source leaves interval [low, high] only when the estimate is outside
[low / (1 + h), high x (1 + h)], then takes the interval holding the estimate. Near a breakpoint both
plans cost about the same (the optimum is continuous), so staying a little too long costs little, while
flapping on every noisy estimate would alternate plans whose stages the agents then run cold-ish and
mix in the estimator's window. h = 0.15 is above the estimator's scatter measured on the testbed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecloud.errors import EdgecloudError
from partitioner.split.manifest import SplitManifest

HYSTERESIS = 0.15


def plan_id(manifest: SplitManifest) -> str:
    """A short content hash of a split: its stages (device and nodes) and the plan file's hash."""
    layout = [[stage.device, list(stage.nodes)] for stage in manifest.stages]
    digest = hashlib.sha256(json.dumps([manifest.plan_sha256, layout]).encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class ServedPlans:
    """The splits a deployment may run a request under; `bounds_bps[i]` is split i's bandwidth interval."""

    manifests: tuple[SplitManifest, ...]
    bounds_bps: tuple[tuple[float, float], ...]
    predicted_s: tuple[float, ...]

    ids: tuple[str, ...] = field(init=False)  # each plan's id, hashed once

    def __post_init__(self) -> None:
        object.__setattr__(self, "ids", tuple(plan_id(manifest) for manifest in self.manifests))
        first = self.manifests[0]
        for manifest in self.manifests[1:]:
            if (manifest.source, manifest.sink, list(manifest.devices)) != (first.source, first.sink, list(first.devices)):
                raise EdgecloudError("the plans of a plan set must share their devices, source and sink.")

    @property
    def adaptive(self) -> bool:
        return len(self.manifests) > 1

    def index_of(self, tag: Any) -> int | None:
        """The plan a message's `meta.plan` names ([index, id]), or None if it names none of ours."""
        if (not isinstance(tag, list) or len(tag) != 2 or isinstance(tag[0], bool) or not isinstance(tag[0], int)
                or not 0 <= tag[0] < len(self.manifests) or tag[1] != self.ids[tag[0]]):
            return None
        return tag[0]

    def tag(self, index: int) -> list[Any]:
        return [index, self.ids[index]]


def single_plan(manifest: SplitManifest, predicted_s: float | None = None) -> ServedPlans:
    return ServedPlans((manifest,), ((0.0, float("inf")),), (predicted_s or 0.0,))


def load_served_plans(path: str | Path) -> ServedPlans:
    """A plan file or a plan-set file, split once (cached beside it) into the plans to serve."""
    from devices.json_files import read_json_file
    from partitioner.errors import PartitionerError
    from partitioner.plan.plan_file import load_plan
    from partitioner.plan.plan_set import PLANS_FORMAT, load_plan_set
    from partitioner.split.onnx_split import cached_split, cached_split_set

    content = read_json_file(Path(path), "plan", error=PartitionerError)
    if isinstance(content, dict) and content.get("format") == PLANS_FORMAT:
        intervals = load_plan_set(path)
        return ServedPlans(tuple(cached_split_set(path)), tuple((i.low_bps, i.high_bps) for i in intervals),
                           tuple(i.plan.predicted_s for i in intervals))
    return single_plan(cached_split(path), load_plan(path).predicted_s)


class PlanSelector:
    """The source's current plan: moves to the interval holding the estimate, with hysteresis."""

    def __init__(self, bounds_bps: Sequence[tuple[float, float]], start: int | None = None,
                 hysteresis: float = HYSTERESIS) -> None:
        self.bounds_bps = list(bounds_bps)
        self.hysteresis = hysteresis
        self.current = len(self.bounds_bps) - 1 if start is None else start  # the fastest link until measured
        self.switches = 0

    def interval_of(self, bandwidth_bps: float) -> int:
        for index, (low, _) in reversed(list(enumerate(self.bounds_bps))):
            if low <= bandwidth_bps:
                return index
        return 0

    def update(self, bandwidth_bps: float) -> int:
        """The plan for the next request given the estimate; switches only past the hysteresis band."""
        low, high = self.bounds_bps[self.current]
        if low / (1 + self.hysteresis) <= bandwidth_bps <= high * (1 + self.hysteresis):
            return self.current
        chosen = self.interval_of(bandwidth_bps)
        if chosen != self.current:
            self.current = chosen
            self.switches += 1
        return self.current
