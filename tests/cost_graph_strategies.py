"""Hypothesis strategy for small random cost graphs: DAGs with multi-consumer tensors, graph inputs and
outputs, random links, pins and memory limits (shared by the planner's property tests)."""

from __future__ import annotations

from hypothesis import strategies as st

from devices.profiles import LinkProfile
from partitioner.costs.cost_graph import CostGraph, CostNode, CostTensor
from partitioner.costs.scenario import Scenario

DEVICE_NAMES = ("edge", "cloud", "server")


@st.composite
def cost_graphs(draw: st.DrawFn, max_nodes: int = 12, devices: tuple[int, ...] = (2, 3), pins: bool = True,
                memory: bool = True, min_nodes: int = 1) -> CostGraph:
    d = draw(st.sampled_from(devices))
    names = list(DEVICE_NAMES[:d])
    n = draw(st.integers(min_nodes, max_nodes))
    seconds = st.floats(0.0, 0.05, allow_nan=False)
    nodes = {}
    for i in range(n):
        pin = draw(st.sampled_from([None] * 4 + names)) if pins else None
        nodes[f"v{i}"] = CostNode(time_s={k: draw(seconds) for k in names},
                                  memory_bytes=draw(st.integers(0, 1000)), pin=pin)
    tensors: dict[str, CostTensor] = {}
    n_inputs = draw(st.integers(1, 2))
    consumers: dict[str, list[str]] = {f"in{j}": [] for j in range(n_inputs)}
    producer: dict[str, str | None] = {f"in{j}": None for j in range(n_inputs)}
    for i in range(n):
        available = [f"in{j}" for j in range(n_inputs)] + [f"t{j}" for j in range(i)]
        chosen = draw(st.lists(st.sampled_from(available), min_size=1, max_size=3, unique=True))
        for tensor in chosen:
            consumers[tensor].append(f"v{i}")
        consumers[f"t{i}"] = []
        producer[f"t{i}"] = f"v{i}"
    for name, users in consumers.items():
        output = name == f"t{n - 1}" or draw(st.booleans()) if name.startswith("t") else draw(st.sampled_from([False] * 5 + [True]))
        if not users and producer[name] is not None:
            output = True  # a tensor nobody reads is a result
        tensors[name] = CostTensor(bytes=draw(st.integers(0, 200_000)), producer=producer[name], consumers=users,
                                   output=output)
    links = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            links[(a, b)] = LinkProfile(draw(st.sampled_from([1e6, 5e6, 2e7, 1e8, 1e9])), draw(st.floats(0.0, 0.02)))
    memory_limits_bytes: dict[str, int] = {}
    if memory:
        total = sum(node.memory_bytes for node in nodes.values())
        for k in names:
            if draw(st.booleans()) and draw(st.booleans()):
                memory_limits_bytes[k] = int(total * draw(st.floats(0.0, 1.0)))
    source = draw(st.sampled_from(names))
    sink = draw(st.sampled_from([source, source, *names]))
    return Scenario({k: {} for k in names}, links, source, sink, memory_limits_bytes=memory_limits_bytes).cost_graph(
        nodes, tensors)
