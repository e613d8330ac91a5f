"""Prefix stages of a model: its first k nodes as a model of their own, run as an agent runs a stage.

Why: onnxruntime's per-node trace is not what a run costs. The trace inflates every kernel (here about
2 µs per node at 1 thread, 4-7 µs at 2, and a third more on the largest convolutions), so the sum of a
model's profiled nodes misses its run by 25-50 % even when the nodes are the model's own. Whole runs of
stages are the truth the predictor is fitted against (`LatencyPredictor.with_run_fit`): each model
yields several runs of different node mixtures, and a stage outputs every tensor that crosses its cut,
as a split stage does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from devices.errors import DeviceError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrefixStage:
    """The first `len(nodes)` nodes of a model (topological order) and the model that runs just them."""

    nodes: list[str]
    model: Any  # onnx.ModelProto


def prefix_stages(model: Any, count: int) -> list[PrefixStage]:
    """`count` prefixes with node counts evenly spaced up to the whole model (the last one); a cut whose
    crossing tensors have no known type is skipped."""
    import onnx

    if count < 1:
        raise DeviceError("a model needs at least one prefix stage.")
    nodes = list(model.graph.node)
    if not nodes:
        raise DeviceError("a model without nodes has no stages.")
    inferred = onnx.shape_inference.infer_shapes(model)
    typed = {v.name: v for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    outputs = {o.name for o in model.graph.output}
    cuts = sorted({int(round(k)) for k in np.linspace(len(nodes) / count, len(nodes), count)} - {0})
    stages = []
    for cut in cuts:
        later = {name for node in nodes[cut:] for name in node.input} | outputs
        crossing = list(dict.fromkeys(t for node in nodes[:cut] for t in node.output if t and t in later))
        if not crossing or any(t not in typed or not typed[t].type.HasField("tensor_type") for t in crossing):
            logger.info("skipping the prefix of %d nodes: a crossing tensor has no known type", cut)
            continue
        stage = onnx.ModelProto()
        stage.CopyFrom(model)
        del stage.graph.node[cut:]
        del stage.graph.output[:]
        stage.graph.output.extend(typed[t] for t in crossing)
        stages.append(PrefixStage([node.name for node in nodes[:cut]], stage))
    return stages
