"""How well the latency predictor predicts models and devices it was not fitted on, on this host.

Models: every bundled model plus the real architectures of `partitioner.models.real_models` (hf-*).
Devices: this host at the reference thread count (per-node profiles), and emulated devices it never
profiled per node: other thread counts and a cgroup v1 CPU quota (a slower core), each measured in its
own process.

1. Profiles every model per node (onnxruntime's trace) at 1 and all threads.
2. Whole-model latency of every model on every device (`devices.profiler.measure_latencies_s`: the
   profiler's session policy, interleaved blocks, median), each device in a subprocess inside its cgroup.
3. Leave-one-model-out per thread count: fit without the model (its nodes and its whole-model time never
   enter the fit), predict its whole run; "before" is the op-type-only predictor's sum of nodes.
4. Held-out devices: reference = all threads; for each (model, device): fit without the model, calibrate
   the device on at most 10 whole-model runs of *other* models there, predict ("both held out"); "model
   profiled" anchors that on the model's measured run on the reference (HELP's few-shot setting, and
   how `edgecloud plan --profile` prices other devices); "figures only" uses no run on the device.
Every table reports the share within ±10 % and ±5 %, median and p90 error, and the load average.

    PYTHONPATH=. /work/main/.venv/bin/python bench/predictor_error.py            # + bench/results/predictor_error.json
    PYTHONPATH=. /work/main/.venv/bin/python bench/predictor_error.py --reuse    # re-use profiles and latencies
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from devices.host import measure_host
from devices.predictor import (
    MAX_DEVICE_MEASUREMENTS,
    LatencyPredictor,
    NodeSample,
    error_summary,
    held_out_device,
    leave_one_model_out,
)
from devices.profiler import DEFAULT_BLOCKS, DEFAULT_MIN_BLOCK_S, ModelProfile, load_profile_file, measure_latencies_s
from devices.profiles import DeviceProfile
from edgecloud.calibration import canonical_model, predictor_model_paths, profile_file, profile_samples

RESULTS = Path(__file__).parent / "results"
PROFILES = RESULTS / "profiles"
LATENCIES = RESULTS / "predictor_latencies.json"
CGROUP_ROOT = Path("/sys/fs/cgroup/cpu")
AGAIN = "-again"
CFS_PERIOD_US = 4_000  # short periods (the kernel allows a quota down to 1 ms): a 0.1 s block spans 25
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmulatedDevice:
    """A device stood in for by this host: a thread count and, optionally, a share of one CPU."""

    name: str
    threads: int
    cpu_share: float | None = None  # cgroup quota as a fraction of one CPU; None: no quota


def emulated_devices(all_cpus: int) -> list[EmulatedDevice]:
    """The reference thread counts, three slower devices, and the reference measured again last (its
    disagreement with the first pass is the noise floor no predictor can beat on this loaded host)."""
    devices = [EmulatedDevice(f"{t}thr", t) for t in sorted({1, all_cpus})]
    return devices + [EmulatedDevice("1thr-50pct", 1, 0.5), EmulatedDevice("1thr-25pct", 1, 0.25),
                      EmulatedDevice(f"{all_cpus}thr-50pct", all_cpus, 0.5 * all_cpus),
                      EmulatedDevice(f"{all_cpus}thr{AGAIN}", all_cpus)]


def _measure_in_cgroup(cgroup: str | None, threads: int, paths: dict[str, str], blocks: int, min_block_s: float,
                       seed: int, results: Any) -> None:
    """Subprocess body: join the cgroup first (threads started later inherit it), then measure."""
    if cgroup is not None:
        (Path(cgroup) / "tasks").write_text(str(os.getpid()))
    host = measure_host(threads, seed)
    models = {name: canonical_model(path) for name, path in paths.items()}
    results.put({"figures": host.to_dict(), "latency_s": measure_latencies_s(models, threads, blocks, min_block_s, seed)})


def measure_device(device: EmulatedDevice, paths: Mapping[str, Path], blocks: int, min_block_s: float,
                   seed: int) -> dict[str, Any]:
    """The device's figures and every model's whole-model latency, measured in a process of its own
    (inside a fresh cgroup with the quota when the device has one; the cgroup is removed afterwards)."""
    cgroup = None if device.cpu_share is None else CGROUP_ROOT / f"edgecloud-predictor-{os.getpid()}-{device.name}"
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_measure_in_cgroup, args=(
        None if cgroup is None else str(cgroup), device.threads, {k: str(v) for k, v in paths.items()},
        blocks, min_block_s, seed, queue))
    try:
        if cgroup is not None and device.cpu_share is not None:
            cgroup.mkdir()
            (cgroup / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
            (cgroup / "cpu.cfs_quota_us").write_text(str(int(device.cpu_share * CFS_PERIOD_US)))
        process.start()
        result = queue.get(timeout=1800)
        process.join(timeout=60)
    finally:
        if process.is_alive():
            process.kill()
            process.join()
        if cgroup is not None and cgroup.exists():
            cgroup.rmdir()
    return result | {"threads": device.threads, "cpu_share": device.cpu_share,
                     "load_average": os.getloadavg()}


def cgroup_writable() -> bool:
    return os.access(CGROUP_ROOT, os.W_OK) and (CGROUP_ROOT / "cpu.cfs_quota_us").exists()


def model_profiles(paths: Mapping[str, Path], thread_counts: list[int], warmup: int, repeats: int, seed: int,
                   reuse: bool) -> dict[str, ModelProfile]:
    files = {name: PROFILES / f"{name}.json" for name in paths}
    if reuse and all(path.is_file() for path in files.values()):
        return {name: load_profile_file(path) for name, path in files.items()}
    PROFILES.mkdir(parents=True, exist_ok=True)
    host = measure_host(max(thread_counts), seed)
    profiles = {}
    for name, path in paths.items():
        profiles[name] = profile_file(path, host, thread_counts, warmup, repeats, seed)
        profiles[name].save(files[name])
    return profiles


def device_latencies(devices: list[EmulatedDevice], paths: Mapping[str, Path], blocks: int, min_block_s: float,
                     seed: int, reuse: bool) -> dict[str, dict[str, Any]]:
    if reuse and LATENCIES.is_file():
        return json.loads(LATENCIES.read_text())
    measured = {}
    for device in devices:
        if device.cpu_share is not None and not cgroup_writable():
            logger.warning("cgroup v1 cpu controller not writable: skipping %s", device.name)
            continue
        measured[device.name] = measure_device(device, paths, blocks, min_block_s, seed)
    RESULTS.mkdir(parents=True, exist_ok=True)
    LATENCIES.write_text(json.dumps(measured, indent=2) + "\n")
    return measured


def _pct(value: float) -> str:
    return f"{value:.1%}"


def summary_cells(errors: list[float]) -> list[str]:
    s = error_summary(errors)
    return [_pct(s["within_10pct"]), _pct(s["within_5pct"]), _pct(s["median"]), _pct(s["p90"])]


SUMMARY_COLUMNS = ("within ±10 %", "within ±5 %", "median", "p90")


def worst_kernel(result_samples: list[NodeSample], predictor: LatencyPredictor, device: DeviceProfile) -> str:
    """The kernel class whose nodes' summed error (predicted − measured) is largest in size: where the
    held-out model's miss comes from."""
    by_kernel: dict[str, float] = {}
    for s in result_samples:
        error = predictor.predict(s.op_type, s.flops, s.bytes_moved, s.param_bytes, device, s.kernel) - s.time_s
        by_kernel[s.kernel_class] = by_kernel.get(s.kernel_class, 0.0) + error
    kernel = max(by_kernel, key=lambda k: abs(by_kernel[k]))
    return f"{kernel} {by_kernel[kernel] * 1e3:+.3f} ms"


def lomo_report(console: Console, threads: int, samples: dict[str, list[NodeSample]], host: DeviceProfile,
                latencies_s: dict[str, float], load_average: Any) -> dict[str, Any]:
    from devices.predictor.evaluation import fit_without

    results = leave_one_model_out(samples, host, latencies_s)
    plain = {name: [replace(s, kernel="") for s in group] for name, group in samples.items()}
    before = {r.model: abs(r.predicted_total_s - latencies_s[r.model]) / latencies_s[r.model]
              for r in leave_one_model_out(plain, host)}
    table = Table(title=f"leave-one-model-out, {threads} thread(s): whole-model latency of the held-out model "
                        f"(load average {load_average[0]:.2f})")
    for column in ("held out", "nodes", "node median", "measured ms", "predicted ms", "error", "before",
                   "largest miss (kernel class, summed)"):
        table.add_column(column, justify="right")
    rows: dict[str, Any] = {}
    for r in results:
        miss = "" if r.model_relative_error <= 0.10 else worst_kernel(
            samples[r.model], fit_without(samples, host, r.model, latencies_s), host)
        rows[r.model] = {"nodes": len(r.node_relative_errors), "node_error": error_summary(r.node_relative_errors),
                         "measured_s": r.measured_total_s, "predicted_s": r.predicted_total_s,
                         "error": r.model_relative_error, "before_error": before[r.model], "largest_miss": miss}
        table.add_row(r.model, str(len(r.node_relative_errors)), _pct(error_summary(r.node_relative_errors)["median"]),
                      f"{r.measured_total_s * 1e3:.3f}", f"{r.predicted_total_s * 1e3:.3f}",
                      _pct(r.model_relative_error), _pct(before[r.model]), miss)
    console.print(table)
    summary = Table(title=f"leave-one-model-out, {threads} thread(s): summary over {len(results)} models")
    for column in ("predictor", *SUMMARY_COLUMNS):
        summary.add_column(column, justify="right")
    errors = [r.model_relative_error for r in results]
    summary.add_row("kernel classes + stage calibration", *summary_cells(errors))
    summary.add_row("before: op types, sum of nodes", *summary_cells(list(before.values())))
    summary.add_row("per node (pooled)", *summary_cells([e for r in results for e in r.node_relative_errors]))
    console.print(summary)
    return {"models": rows, "summary": error_summary(errors), "before": error_summary(list(before.values())),
            "nodes": error_summary([e for r in results for e in r.node_relative_errors])}


SETTINGS = {"few_shot_s": "model and device held out", "profiled_s": "device held out, model profiled on the reference",
            "figures_only_s": "model held out, device figures only (no run on it)"}


def device_report(console: Console, reference_threads: int, samples: dict[str, list[NodeSample]],
                  reference: DeviceProfile, measured: dict[str, dict[str, Any]]) -> dict[str, Any]:
    reference_name = f"{reference_threads}thr"
    report: dict[str, Any] = {}
    pooled: dict[str, list[float]] = {setting: [] for setting in SETTINGS}
    per_device = Table(title=f"held-out devices: reference {reference_name}; few-shot = at most {MAX_DEVICE_MEASUREMENTS} "
                             "calibration runs of other models on the device")
    for column in ("device", "setting", "load avg", "pairs", *SUMMARY_COLUMNS):
        per_device.add_column(column, justify="right")
    for name, data in measured.items():
        if name == reference_name or name.endswith(AGAIN):
            continue
        device = replace(DeviceProfile.from_dict(data["figures"]), name=f"emulated-{name}")
        results = held_out_device(samples, reference, measured[reference_name]["latency_s"], device,
                                  data["latency_s"])
        errors = {setting: {m: abs(getattr(r, setting) - r.measured_s) / r.measured_s for m, r in results.items()}
                  for setting in SETTINGS}
        quota = "no quota" if data["cpu_share"] is None else f"{data['cpu_share']:.0%} of one CPU"
        table = Table(title=f"held-out device {name} ({data['threads']} thread(s), {quota}; "
                            f"load average {data['load_average'][0]:.2f}): ms and error")
        for column in ("model", "measured", "both held out", "error", "model profiled", "error", "figures only", "error"):
            table.add_column(column, justify="right")
        for model, r in results.items():
            table.add_row(model, f"{r.measured_s * 1e3:.3f}",
                          *(cell for setting in SETTINGS for cell in (f"{getattr(r, setting) * 1e3:.3f}",
                                                                      _pct(errors[setting][model]))))
        console.print(table)
        report[name] = {"pairs": {m: vars(r) | {f"{k}_error": errors[k][m] for k in SETTINGS} for m, r in results.items()}}
        for setting, label in SETTINGS.items():
            values = list(errors[setting].values())
            pooled[setting] += values
            per_device.add_row(name, label, f"{data['load_average'][0]:.2f}", str(len(values)), *summary_cells(values))
            report[name][setting] = error_summary(values)
    if pooled["few_shot_s"]:
        report["all"] = {}
        for setting, label in SETTINGS.items():
            per_device.add_row("all", label, "", str(len(pooled[setting])), *summary_cells(pooled[setting]))
            report["all"][setting] = error_summary(pooled[setting])
    console.print(per_device)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--blocks", type=int, default=DEFAULT_BLOCKS, help="interleaved timing blocks per model and device")
    parser.add_argument("--min-block-s", type=float, default=DEFAULT_MIN_BLOCK_S, help="shortest timing block")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse", action="store_true", help="re-use the profiles and latencies of a previous run")
    args = parser.parse_args()
    console = Console(width=200)
    all_cpus = os.cpu_count() or 1
    thread_counts = sorted({1, all_cpus})
    start_load = os.getloadavg()

    paths = predictor_model_paths(args.seed)
    profiles = model_profiles(paths, thread_counts, args.warmup, args.repeats, args.seed, args.reuse)
    devices = emulated_devices(all_cpus)
    measured = device_latencies(devices, paths, args.blocks, args.min_block_s, args.seed, args.reuse)
    hosts = {t: DeviceProfile.from_dict(measured[f"{t}thr"]["figures"]) for t in thread_counts}
    samples = {t: {name: profile_samples(profile, t) for name, profile in profiles.items()} for t in thread_counts}
    report: dict[str, Any] = {"settings": vars(args), "load_average_at_start": start_load,
                              "devices": {name: {k: v for k, v in d.items() if k != "latency_s"}
                                          for name, d in measured.items()}}

    overview = Table(title="measured whole-model latency per device (ms); kernel classes of the nodes")
    for column in ("model", "nodes", "MFLOP", *measured, "kernel classes"):
        overview.add_column(column, justify="right")
    for name in profiles:
        group = samples[all_cpus][name]
        kernels = sorted({s.kernel_class for s in group if "/" in s.kernel_class})
        overview.add_row(name, str(len(group)), f"{sum(s.flops for s in group) / 1e6:.1f}",
                         *(f"{d['latency_s'][name] * 1e3:.3f}" for d in measured.values()), ", ".join(kernels))
    console.print(overview)

    again = f"{all_cpus}thr{AGAIN}"
    if again in measured:
        first, second = measured[f"{all_cpus}thr"]["latency_s"], measured[again]["latency_s"]
        noise = [abs(second[m] - first[m]) / first[m] for m in first]
        floor = Table(title=f"noise floor: the {all_cpus}-thread reference measured twice, minutes apart "
                            "(|second - first| / first over the models)")
        for column in SUMMARY_COLUMNS:
            floor.add_column(column, justify="right")
        floor.add_row(*summary_cells(noise))
        console.print(floor)
        report["noise_floor"] = error_summary(noise)
    report["lomo"] = {str(t): lomo_report(console, t, samples[t], hosts[t], measured[f"{t}thr"]["latency_s"],
                                          measured[f"{t}thr"]["load_average"]) for t in thread_counts}
    report["held_out_devices"] = device_report(console, all_cpus, samples[all_cpus], hosts[all_cpus], measured)
    report["load_average_at_end"] = os.getloadavg()
    console.print(f"load average: start {start_load[0]:.2f}, end {report['load_average_at_end'][0]:.2f} "
                  f"(2 cores shared with other agents)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    output = RESULTS / "predictor_error.json"
    output.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {output}")


if __name__ == "__main__":
    main()
