"""Synthetic DNN-like cost graphs: a chain with skip connections and fan-out, for benchmarks and tests.

Activations shrink along the network (large early, small late, with noise) and the cloud is ~10x faster
than the edge with per-op variation, so the best split is somewhere in the middle and not obvious.
"""

from __future__ import annotations

import numpy as np

from devices.profiles import LinkProfile, link_key
from partitioner.costs.cost_graph import CostGraph, CostNode, CostTensor
from partitioner.costs.scenario import Scenario

# name, speed factor relative to the edge device
TIERS = [("edge", 1.0), ("cloud", 0.1), ("edge-server", 0.35), ("edge2", 1.2), ("edge3", 0.8)]
LINKS_BPS_S = {("cloud", "edge"): (2e7, 0.01), ("edge", "edge-server"): (1e8, 0.002), ("cloud", "edge-server"): (5e7, 0.008)}


def synthetic_cost_graph(n_nodes: int, n_devices: int = 2, seed: int = 0, skip_probability: float = 0.15,
                         fanout_probability: float = 0.1, memory_limit_fraction: float | None = None,
                         pin_first: bool = False) -> CostGraph:
    """A DAG of `n_nodes` layers over the first `n_devices` tiers (edge, cloud, edge-server, ...)."""
    rng = np.random.default_rng(seed)
    tiers = TIERS[:n_devices]
    names = [name for name, _ in tiers]
    links = {(a, b): LinkProfile(*LINKS_BPS_S.get(link_key(a, b), (5e7, 0.005)))
             for i, a in enumerate(names) for b in names[i + 1:]}
    nodes: dict[str, CostNode] = {}
    consumers: dict[str, list[str]] = {"input": []}
    producers: dict[str, str | None] = {"input": None}
    node_names = [f"n{i}" for i in range(n_nodes)]
    pending_join: set[str] = set()
    for i, name in enumerate(node_names):
        edge_s = float(rng.uniform(0.5e-3, 8e-3))
        time_s = {tier: edge_s * factor * float(rng.uniform(0.6, 1.6)) for tier, factor in tiers}
        time_s["edge"] = edge_s
        nodes[name] = CostNode(time_s=time_s, memory_bytes=int(rng.integers(1_000, 2_000_000)))
        inputs = set(pending_join)
        pending_join.clear()
        if i == 0:
            inputs.add("input")
        elif i >= 2 and i < n_nodes - 1 and rng.random() < fanout_probability:
            # a parallel branch: this node reads what the previous node read; the next node joins both
            inputs.add(f"t{i - 2}")
            pending_join.add(f"t{i - 1}")
        else:
            inputs.add(f"t{i - 1}")
        if i >= 3 and rng.random() < skip_probability:
            inputs.add(f"t{int(rng.integers(max(0, i - 8), i - 1))}")
        for tensor in sorted(inputs):
            consumers[tensor].append(name)
        consumers[f"t{i}"] = []
        producers[f"t{i}"] = name
    tensors: dict[str, CostTensor] = {}
    for index, (tensor, users) in enumerate(consumers.items()):
        position = max(index - 1, 0) / max(n_nodes, 1)
        size = np.exp(np.log(6e5) - position * np.log(150.0) + rng.normal(0.0, 0.7))
        is_last = tensor == f"t{n_nodes - 1}"
        tensors[tensor] = CostTensor(bytes=int(size), producer=producers[tensor], consumers=users,
                                     output=is_last or (not users and producers[tensor] is not None))
    memory_limits_bytes = {}
    if memory_limit_fraction is not None:
        memory_limits_bytes["edge"] = int(sum(node.memory_bytes for node in nodes.values()) * memory_limit_fraction)
    pins = {node_names[0]: "edge"} if pin_first and node_names else {}
    scenario = Scenario({name: {} for name in names}, links, "edge", "edge", pins, memory_limits_bytes)
    return scenario.cost_graph(nodes, tensors)
