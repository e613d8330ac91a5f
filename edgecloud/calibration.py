"""Glue between the layer DAG (`partitioner`) and the profiler and predictor (`devices`).

`devices` is a leaf and `partitioner` may not know about measurements, so the code that needs both,
canonical node ids for the profiler and FLOP/byte features for the predictor, lives here, above both,
shared by the CLI (`edgecloud profile`, `edgecloud predictor fit|estimate`) and bench/predictor_error.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from devices.errors import DeviceError
from devices.predictor import LatencyPredictor, NodeSample
from devices.profiler import DEFAULT_REPEATS, DEFAULT_WARMUP, ModelProfile, ThreadTiming, profile_threads
from devices.profiles import DeviceProfile

if TYPE_CHECKING:
    import onnx

    from partitioner.graph.layer_graph import LayerGraph


def canonical_model(path: str | Path) -> "onnx.ModelProto":
    """The checked ONNX model with the canonical node ids every stage uses."""
    from partitioner.graph.onnx_loading import load_onnx_model
    from partitioner.graph.onnx_names import name_nodes_uniquely

    model = load_onnx_model(path)
    name_nodes_uniquely(model.graph)
    return model


def profile_file(path: str | Path, host: DeviceProfile, thread_counts: list[int],
                 warmup: int = DEFAULT_WARMUP, repeats: int = DEFAULT_REPEATS, seed: int = 0,
                 on_done: Callable[[ThreadTiming], None] | None = None) -> ModelProfile:
    """Profile an ONNX file keyed by canonical node ids; the profile names the file by absolute path."""
    model = canonical_model(path)
    return profile_threads(model, str(Path(path).resolve()), host, thread_counts, warmup, repeats, seed, on_done)


def samples_from_times(graph: "LayerGraph", node_times_s: Mapping[str, float]) -> list[NodeSample]:
    """One predictor sample per layer of `graph`: its DAG features and its measured time (a fused
    layer's time is the sum of its members')."""
    samples = []
    for node, attrs in graph.dag.nodes(data=True):
        missing = [member for member in attrs["members"] if member not in node_times_s]
        if missing:
            raise DeviceError(f"the profile has no time for node '{missing[0]}'; was it measured on another model?")
        samples.append(NodeSample(
            op_type=attrs["op_type"],
            flops=int(attrs["flops"]),
            bytes_moved=int(attrs["bytes_moved"]),
            param_bytes=int(attrs["param_bytes"]),
            time_s=sum(node_times_s[member] for member in attrs["members"]),
        ))
    return samples


def profile_samples(profile: ModelProfile, threads: int) -> list[NodeSample]:
    """Predictor samples of a profile at one thread count, features from the profiled model file."""
    from partitioner.graph.layer_graph import load_layer_graph

    if threads not in profile.timings:
        raise DeviceError(f"the profile of {profile.model} has no timing with {threads} thread(s).")
    graph = load_layer_graph(profile.model)
    return samples_from_times(graph, profile.timings[threads].node_times_s)


def fit_predictor(profiles: Mapping[str, ModelProfile], threads: int, reference: DeviceProfile) -> LatencyPredictor:
    """Fit on every profile's timing at `threads`, with `reference` the device that ran them."""
    samples = [s for profile in profiles.values() for s in profile_samples(profile, threads)]
    return LatencyPredictor.fit(samples, reference, fitted_on={
        "models": sorted(profiles), "threads": threads, "nodes": len(samples),
    })


def predicted_node_times_s(graph: "LayerGraph", predictor: LatencyPredictor,
                           device: DeviceProfile) -> dict[str, float]:
    """Each layer's predicted seconds on `device`, from its DAG features."""
    return {node: predictor.predict(attrs["op_type"], int(attrs["flops"]), int(attrs["bytes_moved"]),
                                    int(attrs["param_bytes"]), device)
            for node, attrs in graph.dag.nodes(data=True)}


def profile_bundled_models(names: Iterable[str], host: DeviceProfile, thread_counts: list[int],
                           warmup: int = DEFAULT_WARMUP, repeats: int = DEFAULT_REPEATS, seed: int = 0,
                           on_done: Callable[[str, ThreadTiming], None] | None = None) -> dict[str, ModelProfile]:
    """Profile the named bundled models (exported once into the cache) at each thread count."""
    from partitioner.models.zoo import cached_model_path

    profiles = {}
    for name in names:
        def report(timing: ThreadTiming, name: str = name) -> None:
            if on_done is not None:
                on_done(name, timing)

        profiles[name] = profile_file(cached_model_path(name), host, thread_counts, warmup, repeats, seed, report)
    return profiles
