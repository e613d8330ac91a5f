"""Glue between the layer DAG (`partitioner`) and the profiler and predictor (`devices`).

`devices` is a leaf and `partitioner` may not know about measurements, so the code that needs both,
canonical node ids for the profiler and FLOP/byte features for the predictor, lives here, above both,
shared by the CLI (`edgecloud profile`, `edgecloud predictor fit|estimate`) and bench/predictor_error.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from devices.errors import DeviceError
from devices.predictor import LatencyPredictor, NodeSample, cold_share
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


def layer_nodes(graph: "LayerGraph") -> dict[str, NodeSample]:
    """Each layer of `graph` as a predictor input (features and kernel class; time 0)."""
    from partitioner.graph.kernel_classes import layer_im2col, layer_kernel_classes, layer_kernel_groups

    kernels, groups, im2col = layer_kernel_classes(graph), layer_kernel_groups(graph), layer_im2col(graph)
    return {node: NodeSample(op_type=attrs["op_type"], flops=int(attrs["flops"]), bytes_moved=int(attrs["bytes_moved"]),
                             param_bytes=int(attrs["param_bytes"]), time_s=0.0, kernel=kernels[node], groups=groups[node],
                             im2col_rows=im2col[node][0], im2col_elements=im2col[node][1])
            for node, attrs in graph.dag.nodes(data=True)}


def samples_from_times(graph: "LayerGraph", node_times_s: Mapping[str, float]) -> list[NodeSample]:
    """One predictor sample per layer of `graph`: its DAG features, kernel class and measured time (a
    fused layer's time is the sum of its members')."""
    samples = []
    nodes = layer_nodes(graph)
    for node, attrs in graph.dag.nodes(data=True):
        missing = [member for member in attrs["members"] if member not in node_times_s]
        if missing:
            raise DeviceError(f"the profile has no time for node '{missing[0]}'; was it measured on another model?")
        samples.append(replace(nodes[node], time_s=sum(node_times_s[member] for member in attrs["members"])))
    return samples


def profile_samples(profile: ModelProfile, threads: int) -> list[NodeSample]:
    """Predictor samples of a profile at one thread count, features from the profiled model file."""
    from partitioner.graph.layer_graph import load_layer_graph

    if threads not in profile.timings:
        raise DeviceError(f"the profile of {profile.model} has no timing with {threads} thread(s).")
    graph = load_layer_graph(profile.model)
    return samples_from_times(graph, profile.timings[threads].node_times_s)


def predicted_node_times_s(graph: "LayerGraph", predictor: LatencyPredictor,
                           device: DeviceProfile) -> dict[str, float]:
    """Each layer's predicted seconds on `device`, from its DAG features."""
    nodes = layer_nodes(graph)
    share = cold_share(nodes.values())  # the layers run in one model: its weights compete for the cache
    return {node: predictor.predict(s.op_type, s.flops, s.bytes_moved, s.param_bytes, device, s.kernel, s.groups,
                                    s.im2col, share)
            for node, s in nodes.items()}


def predicted_run_s(graph: "LayerGraph", predictor: LatencyPredictor, device: DeviceProfile) -> float:
    """Seconds of one session run of the whole model on `device`: its layers plus the per-run cost."""
    return predictor.predict_stage_s(layer_nodes(graph).values(), device)


REAL_MODEL_PREFIX = "hf-"


def real_model_path(name: str, seed: int = 0) -> Path:
    """A real architecture (`partitioner.models.real_models`) exported once into the cache; written under a
    temporary name and renamed, so that concurrent callers see no file or a complete one."""
    import os
    import tempfile

    from devices.cache import cache_dir
    from partitioner.models.real_models import export_real_model

    target = cache_dir() / "models" / f"{REAL_MODEL_PREFIX}{name}-seed{seed}.onnx"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{name}-", suffix=".onnx", dir=target.parent)
        os.close(handle)
        try:
            export_real_model(name, temporary, seed)
            os.replace(temporary, target)
        finally:
            Path(temporary).unlink(missing_ok=True)
    return target


def predictor_model_paths(seed: int = 0) -> dict[str, Path]:
    """The models the shipped predictor is fitted and evaluated on: every bundled model and every real
    architecture (named "hf-<architecture>")."""
    from partitioner.models.real_models import REAL_MODELS
    from partitioner.models.zoo import MODEL_NAMES, cached_model_path

    paths = {name: cached_model_path(name, seed) for name in MODEL_NAMES}
    return paths | {f"{REAL_MODEL_PREFIX}{name}": real_model_path(name, seed) for name in REAL_MODELS}


def profile_models(paths: Mapping[str, Path], host: DeviceProfile, thread_counts: list[int],
                   warmup: int = DEFAULT_WARMUP, repeats: int = DEFAULT_REPEATS, seed: int = 0,
                   on_done: Callable[[str, ThreadTiming], None] | None = None) -> dict[str, ModelProfile]:
    """Profile each named model file at each thread count."""
    profiles = {}
    for name, path in paths.items():
        def report(timing: ThreadTiming, name: str = name) -> None:
            if on_done is not None:
                on_done(name, timing)

        profiles[name] = profile_file(path, host, thread_counts, warmup, repeats, seed, report)
    return profiles
