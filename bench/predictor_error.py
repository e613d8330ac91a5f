"""How well the latency predictor predicts models it was not fitted on, on this host.

1. Profiles every bundled model with onnxruntime's per-node profiling, 1 thread and all CPUs.
2. Leave-one-model-out, per thread count: fit on five models, predict the sixth; per-node relative
   error (median, p90) and whole-model relative error (sum of predicted vs measured node times).
3. Device transfer: fit on every model at all CPUs, then predict the 1-thread profile from the host's
   1-thread figures only (another "device": other peak FLOP/s and thread count).
4. The shipped predictor's whole-model estimate for each catalogue device (sum of node predictions).

    /work/venv/bin/python bench/predictor_error.py              # table + bench/results/predictor_error.json
    /work/venv/bin/python bench/predictor_error.py --reuse      # re-use bench/results/profiles/*.json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from devices.host import host_profile, measure_host
from devices.predictor import HeldOutResult, LatencyPredictor, leave_one_model_out, relative_errors, shipped_predictor
from devices.profiler import ModelProfile, load_profile_file
from devices.profiles import DeviceProfile
from devices.lookup import catalogue
from edgecloud.calibration import predicted_node_times_s, profile_bundled_models, profile_samples
from partitioner.graph.layer_graph import load_layer_graph
from partitioner.models.zoo import MODEL_NAMES

RESULTS = Path(__file__).parent / "results"
PROFILES = RESULTS / "profiles"


def bundled_profiles(thread_counts: list[int], warmup: int, repeats: int, seed: int, reuse: bool) -> dict[str, ModelProfile]:
    paths = {name: PROFILES / f"{name}.json" for name in MODEL_NAMES}
    if reuse and all(path.is_file() for path in paths.values()):
        return {name: load_profile_file(path) for name, path in paths.items()}
    PROFILES.mkdir(parents=True, exist_ok=True)
    with Progress(transient=True) as progress:
        task = progress.add_task("profiling the bundled models", total=len(MODEL_NAMES) * len(thread_counts))
        profiles = profile_bundled_models(MODEL_NAMES, host_profile(), thread_counts, warmup, repeats, seed,
                                          on_done=lambda *_: progress.advance(task))
    for name, profile in profiles.items():
        profile.save(paths[name])
    return profiles


def error_summary(errors: list[float]) -> dict[str, float]:
    return {"median": float(np.median(errors)), "p90": float(np.percentile(errors, 90)), "nodes": len(errors)}


def lomo_rows(results: list[HeldOutResult]) -> dict[str, dict[str, float]]:
    rows = {r.model: {**error_summary(r.node_relative_errors), "measured_s": r.measured_total_s,
                      "predicted_s": r.predicted_total_s, "model_error": r.model_relative_error} for r in results}
    pooled = [e for r in results for e in r.node_relative_errors]
    model_errors = [r.model_relative_error for r in results]
    rows["all"] = {**error_summary(pooled), "model_error_median": float(np.median(model_errors)),
                   "model_error_max": float(np.max(model_errors))}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse", action="store_true", help="re-use the profiles of a previous run")
    args = parser.parse_args()
    console = Console()
    all_cpus = os.cpu_count() or 1
    thread_counts = sorted({1, all_cpus})

    profiles = bundled_profiles(thread_counts, args.warmup, args.repeats, args.seed, args.reuse)
    hosts: dict[int, DeviceProfile] = {t: measure_host(t, args.seed) for t in thread_counts}
    samples = {t: {name: profile_samples(profile, t) for name, profile in profiles.items()} for t in thread_counts}
    report: dict[str, object] = {"hosts": {str(t): h.to_dict() for t, h in hosts.items()},
                                 "settings": vars(args)}

    measured = Table(title="profiled on this host: whole-model latency and sum of per-node medians (ms)")
    for column in ("model", "nodes", "MFLOP", *(f"{t} thr: model" for t in thread_counts),
                   *(f"{t} thr: sum of nodes" for t in thread_counts)):
        measured.add_column(column, justify="right")
    report["profiled"] = {}
    for name, profile in profiles.items():
        timings = [profile.timings[t] for t in thread_counts]
        flops = sum(s.flops for s in samples[all_cpus][name])
        measured.add_row(name, str(len(timings[0].node_times_s)), f"{flops / 1e6:.1f}",
                         *(f"{x.latency_s * 1e3:.3f}" for x in timings),
                         *(f"{sum(x.node_times_s.values()) * 1e3:.3f}" for x in timings))
        report["profiled"][name] = {"flops": flops} | {str(x.threads): {"latency_s": x.latency_s, "nodes_sum_s": sum(x.node_times_s.values()),
                                                     "untimed": len(x.untimed)} for x in timings}
    console.print(measured)

    report["lomo"] = {}
    for threads in thread_counts:
        rows = lomo_rows(leave_one_model_out(samples[threads], hosts[threads]))
        report["lomo"][str(threads)] = rows
        table = Table(title=f"leave-one-model-out, {threads} thread(s): relative error of the held-out model")
        for column in ("held out", "nodes", "node median", "node p90", "measured ms", "predicted ms", "model error"):
            table.add_column(column, justify="right")
        for name in MODEL_NAMES:
            row = rows[name]
            table.add_row(name, str(row["nodes"]), f"{row['median']:.1%}", f"{row['p90']:.1%}",
                          f"{row['measured_s'] * 1e3:.3f}", f"{row['predicted_s'] * 1e3:.3f}", f"{row['model_error']:.1%}")
        pooled = rows["all"]
        table.add_row("all", str(pooled["nodes"]), f"{pooled['median']:.1%}", f"{pooled['p90']:.1%}", "", "",
                      f"median {pooled['model_error_median']:.1%}")
        console.print(table)

    if len(thread_counts) > 1:
        fitted = LatencyPredictor.fit([s for group in samples[all_cpus].values() for s in group], hosts[all_cpus])
        transfer = {}
        pooled_errors: list[float] = []
        for name, group in samples[1].items():
            predicted = [fitted.predict(s.op_type, s.flops, s.bytes_moved, s.param_bytes, hosts[1]) for s in group]
            errors = relative_errors(predicted, group)
            pooled_errors += errors
            measured_s = sum(s.time_s for s in group)
            transfer[name] = {**error_summary(errors), "model_error": abs(sum(predicted) - measured_s) / measured_s}
        transfer["all"] = error_summary(pooled_errors)
        report["transfer"] = transfer
        table = Table(title=f"device transfer: fitted at {all_cpus} threads, predicting 1 thread from its figures")
        for column in ("model", "node median", "node p90", "model error"):
            table.add_column(column, justify="right")
        for name in MODEL_NAMES:
            row = transfer[name]
            table.add_row(name, f"{row['median']:.1%}", f"{row['p90']:.1%}", f"{row['model_error']:.1%}")
        table.add_row("all", f"{transfer['all']['median']:.1%}", f"{transfer['all']['p90']:.1%}", "")
        console.print(table)

    predictor = shipped_predictor()
    devices = catalogue()
    table = Table(title="shipped predictor: whole-model estimate per catalogue device (ms, one node after another)")
    table.add_column("model")
    for device in devices:
        table.add_column(device, justify="right")
    report["catalogue_estimates_s"] = {}
    for name, profile in profiles.items():
        graph = load_layer_graph(profile.model)
        estimates = {device_name: sum(predicted_node_times_s(graph, predictor, device).values())
                     for device_name, device in devices.items()}
        report["catalogue_estimates_s"][name] = estimates
        table.add_row(name, *(f"{estimates[d] * 1e3:.3f}" for d in devices))
    console.print(table)

    RESULTS.mkdir(parents=True, exist_ok=True)
    output = RESULTS / "predictor_error.json"
    output.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {output}")


if __name__ == "__main__":
    main()
