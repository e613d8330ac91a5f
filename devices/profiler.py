"""Per-node latency of an ONNX model on this host, from onnxruntime's own per-node profiling.

Why onnxruntime's trace and not timers around sub-models: the trace times each kernel inside one
ordinary run, so the numbers include the real cache state between layers and none of the Python
overhead. Graph optimisations are disabled (ORT_DISABLE_ALL) so that no node is fused away or renamed:
every kernel event ("<node name>_kernel_time") maps back to exactly one ONNX node. Nodes the trace
does not time (onnxruntime turns Constant nodes into initializers at load time) are recorded as 0.0 s
and listed under "untimed" in the profile file.

Whole-model latency is measured with profiling off, under the protocol of `devices.latency` (many
short interleaved blocks, a low quantile of single runs). The sum of a model's profiled kernels is not
its run: the trace inflates every small kernel (sum 0.71 ms, run 0.10 ms for the bundled transformer
here), which is why the predictor calibrates whole runs against their nodes' sum.

Node ids: the profiler keys nodes by their ONNX names, so it needs names that are unique and
non-empty. `devices` imports no other package of the project, so callers that may hold arbitrary
models canonicalise first (`partitioner.graph.onnx_names.name_nodes_uniquely`) and pass the ModelProto.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devices.errors import DeviceError
from devices.json_files import read_json_file, write_json_file
from devices.latency import LatencyProtocol, measure_latencies
from devices.model_inputs import load_model, random_inputs
from devices.profiles import DeviceProfile
from devices.sessions import make_session

logger = logging.getLogger(__name__)

PROFILE_FORMAT = "edgecloud.profile/1"
DEFAULT_WARMUP = 3
DEFAULT_REPEATS = 20
_KERNEL_SUFFIX = "_kernel_time"
NODE_TRIM = 0.2  # share of runs dropped at each end of a node's kernel times


@dataclass
class ThreadTiming:
    """One thread count's measurements: every node's median kernel time and the whole model's."""

    threads: int
    node_times_s: dict[str, float]  # every top-level node; 0.0 for untimed ones
    untimed: list[str]  # nodes onnxruntime did not run as a kernel
    latency_s: float  # whole-run seconds, profiling off (`devices.latency` protocol)


@dataclass
class ModelProfile:
    """A profile file: the model, the host it was measured on, and one timing per thread count."""

    model: str
    host: DeviceProfile
    timings: dict[int, ThreadTiming]
    warmup: int
    repeats: int
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        ordered = sorted(self.timings)
        return {
            "format": PROFILE_FORMAT,
            "model": self.model,
            "host": self.host.to_dict(),
            "threads": {str(t): self.timings[t].node_times_s for t in ordered},
            "latency_s": {str(t): self.timings[t].latency_s for t in ordered},
            "untimed": {str(t): self.timings[t].untimed for t in ordered},
            "untimed_note": "nodes onnxruntime ran without a kernel (e.g. Constant folded into an initializer): 0.0 s",
            "settings": {"warmup": self.warmup, "repeats": self.repeats, "seed": self.seed,
                         "statistic": "node: 20 % trimmed mean; model: devices.latency protocol", "graph_optimization": "ORT_DISABLE_ALL"},
        }

    def save(self, path: str | Path) -> None:
        write_json_file(path, self.to_dict(), "profile")


def _node_ids(model: Any) -> list[str]:
    names = [node.name for node in model.graph.node]
    if any(not name for name in names) or len(set(names)) != len(names):
        raise DeviceError(
            "the model's node names are empty or repeated; canonicalise them first "
            "(partitioner.graph.onnx_names.name_nodes_uniquely)."
        )
    return names


def _kernel_times_per_run(trace: list[dict[str, Any]], skip_runs: int) -> list[dict[str, float]]:
    """Per model run (after the first `skip_runs`), each node's summed kernel time in seconds."""
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in trace
                  if e.get("cat") == "Session" and e.get("name") == "model_run")
    starts = [start for start, _ in runs]
    per_run: list[dict[str, float]] = [{} for _ in runs]
    for event in trace:
        if event.get("cat") != "Node" or not event.get("name", "").endswith(_KERNEL_SUFFIX):
            continue
        index = bisect.bisect_right(starts, event["ts"]) - 1
        if index < 0 or event["ts"] > runs[index][1]:
            continue
        node = event["name"][: -len(_KERNEL_SUFFIX)]
        per_run[index][node] = per_run[index].get(node, 0.0) + event["dur"] * 1e-6
    return per_run[skip_runs:]


def node_time_s(samples_s: list[float]) -> float:
    """A node's figure from its per-run kernel times: the mean of the middle 60 %. onnxruntime's trace
    has whole-microsecond durations, so a median of a sub-microsecond kernel is 0 or 1 µs while a mean
    resolves it; trimming both tails drops preempted runs without biasing the rounding."""
    values = sorted(samples_s)
    cut = int(len(values) * NODE_TRIM)
    kept = values[cut:len(values) - cut] or values
    return sum(kept) / len(kept)


def measure_model(model: Any, threads: int = 1, warmup: int = DEFAULT_WARMUP,
                  repeats: int = DEFAULT_REPEATS, seed: int = 0,
                  protocol: LatencyProtocol = LatencyProtocol()) -> ThreadTiming:
    """Profile `model` (path or ModelProto with unique node names) with `threads` intra-op threads; its
    whole-model latency with profiling off under `protocol` (`devices.latency`)."""
    if threads < 1 or warmup < 0 or repeats < 1:
        raise DeviceError("threads and repeats must be at least 1 and warmup at least 0.")
    model = load_model(model)
    node_ids = _node_ids(model)
    model_bytes = model.SerializeToString()
    feeds = random_inputs(model, seed)

    with tempfile.TemporaryDirectory(prefix="edgecloud-profile-") as folder:
        profiled = make_session(model_bytes, threads, optimize=False, profile_prefix=os.path.join(folder, "ort"))
        for _ in range(warmup + repeats):
            profiled.run(None, feeds)
        trace = json.loads(Path(profiled.end_profiling()).read_text())
    runs = _kernel_times_per_run(trace, skip_runs=warmup)

    node_times_s: dict[str, float] = {}
    untimed: list[str] = []
    for node in node_ids:
        samples = [run[node] for run in runs if node in run]
        if samples:
            node_times_s[node] = node_time_s(samples)
        else:
            node_times_s[node] = 0.0
            untimed.append(node)
    if untimed:
        logger.info("%d node(s) without a kernel in onnxruntime's trace: %s", len(untimed), ", ".join(untimed[:5]))

    latency = measure_latencies({"model": model}, threads, protocol, seed)["model"]
    return ThreadTiming(threads, node_times_s, untimed, latency.latency_s)


def profile_model(path: Any, threads: int = 1, warmup: int = DEFAULT_WARMUP,
                  repeats: int = DEFAULT_REPEATS) -> dict[str, float]:
    """Median seconds per node id (every node; untimed ones 0.0) with `threads` threads."""
    return measure_model(path, threads, warmup, repeats).node_times_s


def profile_threads(model: Any, model_label: str, host: DeviceProfile, thread_counts: list[int],
                    warmup: int = DEFAULT_WARMUP, repeats: int = DEFAULT_REPEATS, seed: int = 0,
                    on_done: Callable[[ThreadTiming], None] | None = None) -> ModelProfile:
    """Profile `model` once per thread count; `on_done` is told after each (for progress bars)."""
    model = load_model(model)
    timings: dict[int, ThreadTiming] = {}
    for threads in thread_counts:
        timings[threads] = measure_model(model, threads, warmup, repeats, seed)
        if on_done is not None:
            on_done(timings[threads])
    return ModelProfile(model_label, host, timings, warmup, repeats, seed)


def default_thread_counts() -> list[int]:
    """Single-threaded and all logical CPUs (one entry on a one-CPU machine)."""
    return sorted({1, os.cpu_count() or 1})


def _float_map(value: Any, origin: str, what: str) -> dict[str, float]:
    if not isinstance(value, dict):
        raise DeviceError(f"{origin}: '{what}' must be an object of node -> seconds.")
    out: dict[str, float] = {}
    for node, seconds in value.items():
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0:
            raise DeviceError(f"{origin}: time of node '{node}' must be a non-negative number, got {seconds!r}.")
        out[node] = float(seconds)
    return out


def load_profile_file(path: str | Path) -> ModelProfile:
    """Read a profile file written by `ModelProfile.save` (`edgecloud profile`), validating it."""
    origin = str(path)
    data = read_json_file(path, "profile", expected_format=PROFILE_FORMAT)
    missing = [key for key in ("model", "host", "threads") if key not in data]
    if missing:
        raise DeviceError(f"{origin}: missing key(s) {', '.join(missing)}.")
    threads = data["threads"]
    if not isinstance(threads, dict) or not threads:
        raise DeviceError(f"{origin}: 'threads' must map thread counts to node times.")
    latency = data.get("latency_s", {})
    untimed = data.get("untimed", {})
    if not isinstance(latency, dict) or not isinstance(untimed, dict):
        raise DeviceError(f"{origin}: 'latency_s' and 'untimed' must be objects keyed by thread count.")
    timings: dict[int, ThreadTiming] = {}
    for key, node_times in threads.items():
        if not key.isdigit() or int(key) < 1:
            raise DeviceError(f"{origin}: thread count '{key}' is not a positive whole number.")
        times = _float_map(node_times, origin, f"threads.{key}")
        model_latency = latency.get(key, sum(times.values()))
        if isinstance(model_latency, bool) or not isinstance(model_latency, (int, float)) or model_latency < 0:
            raise DeviceError(f"{origin}: latency_s.{key} must be a non-negative number.")
        untimed_nodes = untimed.get(key, [])
        if not isinstance(untimed_nodes, list) or not all(node in times for node in untimed_nodes):
            raise DeviceError(f"{origin}: untimed.{key} must list nodes of threads.{key}.")
        timings[int(key)] = ThreadTiming(int(key), times, list(untimed_nodes), float(model_latency))
    settings = data.get("settings", {})
    try:
        warmup, repeats, seed = (int(settings.get(name, 0)) for name in ("warmup", "repeats", "seed"))
    except (AttributeError, TypeError, ValueError):
        raise DeviceError(f"{origin}: 'settings' must hold whole numbers warmup, repeats and seed.") from None
    model = Path(str(data["model"]))
    if not model.is_absolute():  # relative to the profile's folder, as plan files do
        model = Path(path).parent / model
    return ModelProfile(str(model), DeviceProfile.from_dict(data["host"], origin=f"{origin} host"), timings,
                        warmup, repeats, seed)
