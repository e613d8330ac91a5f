"""Cost graph of an ONNX model: the layer DAG priced on each device.

Node seconds come from the latency predictor (`devices.predictor`), or, given a profile measured on a
host, from the measured seconds scaled by the predicted ratio device/host (the measurement captures
what the predictor misses about this node; the predictor only carries it across devices). A node's
memory is its parameters plus its output activations.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from partitioner.costs.cost_graph import CostGraph, CostNode, CostTensor
from partitioner.costs.scenario import Scenario
from partitioner.errors import PartitionerError

if TYPE_CHECKING:
    from devices.profiler import ModelProfile
    from devices.profiles import DeviceProfile
    from partitioner.graph.layer_graph import LayerGraph


def measured_layer_times_s(layer_graph: LayerGraph, profile: ModelProfile) -> dict[str, float]:
    """Measured seconds per layer (a fused layer: the sum of its members'), at the profile's highest
    thread count; raises PartitionerError when the profile misses a node of the model."""
    timing = profile.timings[max(profile.timings)]
    times: dict[str, float] = {}
    for layer, attrs in layer_graph.dag.nodes(data=True):
        missing = [m for m in attrs["members"] if m not in timing.node_times_s]
        if missing:
            raise PartitionerError(f"the profile has no time for node {missing[0]!r}; was it measured on this model?")
        times[layer] = sum(timing.node_times_s[m] for m in attrs["members"])
    return times


def cost_graph_from_model(layer_graph: LayerGraph, scenario: Scenario, model_path: str | Path | None = None,
                          profile: ModelProfile | None = None) -> CostGraph:
    """Price every layer on every device of `scenario`; its links, pins and memory limits as given."""
    from devices.predictor import predict_node_time_s
    from partitioner.graph.kernel_classes import layer_im2col, layer_kernel_classes, layer_kernel_groups

    devices = scenario.device_profiles()
    kernels, groups = layer_kernel_classes(layer_graph), layer_kernel_groups(layer_graph)
    im2col = layer_im2col(layer_graph)
    measured = measured_layer_times_s(layer_graph, profile) if profile is not None else None
    nodes: dict[str, CostNode] = {}
    for layer, attrs in layer_graph.dag.nodes(data=True):
        def predicted(device: DeviceProfile) -> float:
            return predict_node_time_s(attrs["op_type"], attrs["flops"], attrs["bytes_moved"], attrs["param_bytes"],
                                       device, kernels[layer], groups[layer], im2col[layer])

        if measured is None:
            time_s = {name: predicted(device) for name, device in devices.items()}
        else:
            on_host = predicted(profile.host)
            time_s = {name: measured[layer] * (predicted(device) / on_host if on_host > 0 else 1.0)
                      for name, device in devices.items()}
        output_bytes = sum(layer_graph.tensors[t].bytes for t in attrs["outputs"] if t in layer_graph.tensors)
        nodes[layer] = CostNode(time_s=time_s, memory_bytes=int(attrs["param_bytes"] + output_bytes),
                                members=list(attrs["members"]))
    tensors = {
        name: CostTensor(bytes=info.bytes, producer=info.producer, consumers=list(info.consumers),
                         output=info.is_graph_output)
        for name, info in layer_graph.tensors.items()
        if info.consumers or info.is_graph_output
    }
    from partitioner.graph.model_identity import file_sha256

    return scenario.cost_graph(
        nodes, tensors, model=str(model_path) if model_path is not None else None,
        model_sha256=file_sha256(model_path) if model_path is not None and Path(model_path).is_file() else None)
