"""Which ONNX nodes form one layer when fusing: Conv/ConvTranspose/Gemm(+BatchNormalization)(+activation)
chains, and Constant nodes with a single consumer.

Runtimes execute such a chain as one kernel, so planning them as one unit both matches the measured
cost and keeps the planner from cutting where no runtime would. Contracting the edge u -> v of a DAG
creates a cycle only when another path leads from u to v; every fused step here follows a node whose
only output goes only to the next node (or a Constant, which has no inputs), so the fused graph stays
acyclic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import networkx as nx

FUSION_ANCHORS = frozenset({"Conv", "ConvTranspose", "Gemm"})
FUSABLE_NORMALIZATIONS = frozenset({"BatchNormalization"})
FUSABLE_ACTIVATIONS = frozenset({
    "Relu", "Clip", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu",
    "Softplus", "Mish", "Gelu",
})


class _Tensor(Protocol):
    consumers: list[str]
    is_graph_output: bool


@dataclass
class FusionGroup:
    """One layer: `layer_id` is the member that does the main work (the Conv or Gemm, or the consumer
    of a folded Constant); `members` are ONNX node ids in topological order."""

    layer_id: str
    members: list[str]


def fusion_groups(dag: nx.DiGraph, tensors: Mapping[str, _Tensor]) -> list[FusionGroup]:
    """Partition the nodes of the unfused `dag` (node attrs op_type, outputs) into layers, in
    topological order of their main members."""
    order = list(nx.topological_sort(dag))
    leader_of: dict[str, str] = {}
    for node in order:
        if node in leader_of or dag.nodes[node]["op_type"] not in FUSION_ANCHORS:
            continue
        for member in _conv_chain(dag, tensors, node):
            leader_of[member] = node
    for node in order:
        if dag.nodes[node]["op_type"] == "Constant" and node not in leader_of:
            consumer = _sole_consumer(dag, tensors, node)
            if consumer is not None:
                leader_of[node] = leader_of.get(consumer, consumer)
    members_of: dict[str, list[str]] = {}
    for node in order:
        members_of.setdefault(leader_of.get(node, node), []).append(node)
    return [FusionGroup(leader, members_of[leader]) for leader in order if leader in members_of]


def _conv_chain(dag: nx.DiGraph, tensors: Mapping[str, _Tensor], anchor: str) -> list[str]:
    chain = [anchor]
    follower = _sole_consumer(dag, tensors, anchor)
    if follower is not None and dag.nodes[follower]["op_type"] in FUSABLE_NORMALIZATIONS:
        chain.append(follower)
        follower = _sole_consumer(dag, tensors, follower)
    if follower is not None and dag.nodes[follower]["op_type"] in FUSABLE_ACTIVATIONS:
        chain.append(follower)
    return chain


def _sole_consumer(dag: nx.DiGraph, tensors: Mapping[str, _Tensor], node: str) -> str | None:
    """The one node that reads `node`'s one output, when nothing else (not even the graph's output) does."""
    outputs: Sequence[str] = dag.nodes[node]["outputs"]
    if len(outputs) != 1:
        return None
    tensor = tensors.get(outputs[0])
    if tensor is None or tensor.is_graph_output or len(tensor.consumers) != 1:
        return None
    return tensor.consumers[0]
