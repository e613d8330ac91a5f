"""The whole runs the predictor is fitted on, measured, and the fit itself: one code path for
`edgecloud predictor fit` (the shipped devices/catalogue/predictor.json) and bench/predictor_error.py
(which scores exactly this fit on held-out models and devices).

Why runs: onnxruntime's per-node trace inflates every kernel (`devices.stages`), so the coefficients are
refitted on measured whole runs: prefix stages of every training model and single-kernel models over
sampled shapes (`devices.microbench`), the trace's values as the prior
(`devices.predictor.fit_on_runs`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from devices.latency import LatencyProtocol, measure_latencies
from devices.microbench import kernel_models, shape_arithmetic_models, stem_conv_models
from devices.predictor import LatencyPredictor, NodeSample, fit_on_runs
from devices.profiler import ModelProfile
from devices.profiles import DeviceProfile
from devices.stages import prefix_stages
from edgecloud.calibration import canonical_model, layer_nodes, profile_samples, samples_from_times

STAGES_PER_MODEL = 6
STAGE_BLOCK_S = 0.01  # a stage is short: many rounds of short blocks, not a few long ones
KERNEL_MODELS = 210  # fifteen rounds of the fourteen kernel kinds
RUN_ROUNDS = 8

Run = tuple[list[NodeSample], float]
StageTimes = dict[str, list[list[Any]]]  # per model: [[node ids of the stage, seconds of one run], ...]
_KERNEL = "kernel:"  # prefix of a single-kernel model among the runs of one pass


def run_protocol(rounds: int = RUN_ROUNDS) -> LatencyProtocol:
    """How a stage or a single-kernel model is timed: short blocks, a short warm-up."""
    return LatencyProtocol(rounds=max(rounds, 2), min_block_s=STAGE_BLOCK_S, warmup_s=STAGE_BLOCK_S)


def measure_runs(paths: Mapping[str, Path], threads: int, rounds: int = RUN_ROUNDS,
                 seed: int = 0) -> dict[str, Any]:
    """Every model's prefix stages (`devices.stages`; the last is the whole model) and every
    single-kernel model (`devices.microbench`), measured in ONE interleaved pass: measured in separate
    passes minutes apart, the same whole model differed by up to 1.5x here (1 thread, a busy sibling
    vCPU), and a fit on one pass scored against another measures the machine, not the predictor.
    Returns {"stages": StageTimes, "kernels": {name: seconds}, "halves": {run: [even, odd]}}, the halves
    being the same statistic over the even and over the odd rounds (the noise floor of each run)."""
    stages = {name: prefix_stages(canonical_model(path), STAGES_PER_MODEL) for name, path in paths.items()}
    keyed = {f"{name}#{i}": stage.model for name, group in stages.items() for i, stage in enumerate(group)}
    keyed |= {_KERNEL + name: model for name, model in single_kernel_models(seed).items()}
    runs = measure_latencies(keyed, threads, run_protocol(rounds), seed)
    return {"stages": {name: [[stage.nodes, runs[f"{name}#{i}"].latency_s] for i, stage in enumerate(group)]
                       for name, group in stages.items()},
            "kernels": {key.removeprefix(_KERNEL): m.latency_s for key, m in runs.items() if key.startswith(_KERNEL)},
            "halves": {key: [m.even_s, m.odd_s] for key, m in runs.items()}}


def single_kernel_models(seed: int = 0) -> dict[str, Any]:
    """The small models every run pass measures: the sampled kernels, the stem Convs and the computed reshapes."""
    return kernel_models(KERNEL_MODELS, seed) | stem_conv_models() | shape_arithmetic_models()


def stage_runs(profile: ModelProfile, threads: int, stages: list[list[Any]]) -> list[Run]:
    """Each measured stage as (the samples of the layers inside it, its seconds)."""
    from partitioner.graph.layer_graph import load_layer_graph

    graph = load_layer_graph(profile.model)
    samples = samples_from_times(graph, profile.timings[threads].node_times_s)
    members = [set(attrs["members"]) for _, attrs in graph.dag.nodes(data=True)]
    return [([s for s, inside in zip(samples, members, strict=True) if inside <= set(nodes)], seconds)
            for nodes, seconds in stages]


def kernel_runs(times_s: Mapping[str, float], seed: int = 0) -> list[Run]:
    """The single-kernel models as runs: their layers' features, their measured seconds."""
    from partitioner.graph.layer_graph import load_layer_graph

    models = single_kernel_models(seed)
    return [(list(layer_nodes(load_layer_graph(models[name])).values()), seconds) for name, seconds in times_s.items()]


def fit_predictor(profiles: Mapping[str, ModelProfile], threads: int, reference: DeviceProfile,
                  stage_times: StageTimes, kernel_times_s: Mapping[str, float], seed: int = 0) -> LatencyPredictor:
    """Fit on every profile's nodes at `threads` and on the measured runs (stages of the same models,
    single kernels), with `reference` the device that ran them."""
    samples = {name: profile_samples(profile, threads) for name, profile in profiles.items()}
    stages = {name: stage_runs(profile, threads, stage_times[name]) for name, profile in profiles.items()}
    return fit_on_runs(samples, reference, stages, kernel_runs(kernel_times_s, seed), fitted_on={
        "models": sorted(profiles), "threads": threads, "nodes": sum(len(g) for g in samples.values()),
        "stage_runs": sum(len(g) for g in stages.values()), "kernel_runs": len(kernel_times_s)})
