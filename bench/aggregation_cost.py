"""Aggregation cost alone at the parameter server: Draco's decodes vs every robust aggregator, same run.

    python bench/aggregation_cost.py                  # n = P = 45 workers, d = 1e6 float64 (a few minutes)
    python bench/aggregation_cost.py --quick          # d = 1e5, one repeat
    python bench/aggregation_cost.py --dim 200000     # any size

Every method faces 5 adversaries (constant attack, -100) among 45 messages of d float64 numbers:
- repetition decode, r = 3 (15 groups; the 5 adversaries are the first replicas of 5 groups: the slow
  path, where those groups take a vote and the winners are summed afresh), once without adversaries
  (bit-identical replicas: one pass), and r = 15 (s = 5; 3 groups of 15, every group in dispute with its
  first replica adversarial: the vote's worst case, which Table 2 meets at s = 5),
- cyclic decode, r = 11 (s = 5) and r = 21 (s = 10, with 10 adversaries), r = 21 without adversaries
  (the most check rows in its one pass) and r = 21 with 10 adversaries who know the seed and deviate
  only in the columns the first locate does not sample (the decode's slow path: the full projections),
- every aggregator of `robust_training.aggregators.AGGREGATORS` (f = 5; the geometric median runs
  Weiszfeld to a relative step of 1e-6, iterations reported), and every pre-aggregation in front of the
  rule it is usually paired with (nnm+krum, bucketing+krum, clip+mean). The last column is each
  aggregate's distance to the honest rows' mean, relative to that mean's norm.
Each is timed `--repeats` times and the best time is kept. The machine is shared with other jobs, so
every row records the 1-minute load average when it started and the threads it ran on (decodes: numba
kernel and BLAS on one thread; aggregators: the BLAS pool as threadpoolctl reports it), its best
wall-clock time and its best CPU time (all of the process's threads), and the table gives each cyclic
decode's speed-up over the geometric median of the same run in both: ratios within one run are what to
compare, and the CPU-time ratio is the one other jobs on the cores disturb least. Decodes are checked to return the adversary-free sum and flag exactly the
adversaries. Writes bench/results/aggregation_cost.json (or --output) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_info

from robust_training.aggregators import AGGREGATORS, make_aggregator, weiszfeld
from robust_training.attacks import Constant
from robust_training.codes import Code, CyclicCode, RepetitionCode
from robust_training.codes.repetition import SCAN_THREADS

N_WORKERS = 45
N_ADVERSARIES = 5
#: Pre-aggregations, each in front of the rule it is usually paired with.
COMPOSED = ("nnm+krum", "bucketing+krum", "clip+mean")
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def best_time_s(work: Callable[[], object], repeats: int) -> tuple[float, float, object]:
    """Fastest of `repeats` runs in wall-clock seconds and in CPU seconds of this process (all its
    threads: less sensitive to other jobs taking the cores), and the last result."""
    best, best_cpu, result = float("inf"), float("inf"), None
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = work()
        best = min(best, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.process_time() - start_cpu)
    return best, best_cpu, result


#: What the decodes run on: the cyclic decode's pass is one numba thread and it limits BLAS to one; the
#: repetition decode scans column ranges on its own threads (`repetition.SCAN_THREADS`).
DECODE_THREADS = {CyclicCode: "1 (numba pass; BLAS limited to 1)",
                  RepetitionCode: f"{SCAN_THREADS} scan threads (numpy, no BLAS)"}


def decode_row(label: str, code: Code, adversaries: list[int], updates: np.ndarray, repeats: int,
               hidden_from_sample: bool = False) -> dict:
    """Time one decode; `hidden_from_sample`: the adversaries deviate only outside the cyclic code's
    sampled columns (an adversary who knows the seed), instead of the constant attack."""
    partition_updates = updates[: code.n_partitions]
    honest = code.encode_all(partition_updates)
    if hidden_from_sample:
        attacked = honest.copy()
        hidden = np.setdiff1d(np.arange(honest.shape[1]), code.sampled_columns(honest.shape[1]))
        attacked[np.ix_(adversaries, hidden)] = -100.0
    else:
        attacked = Constant().apply(honest, adversaries, np.random.default_rng(0))
    del honest
    load = os.getloadavg()[0]
    seconds, cpu_seconds, result = best_time_s(lambda: code.decode(attacked), repeats)
    truth = partition_updates.sum(axis=0)
    error = float(np.linalg.norm(result.total - truth) / np.linalg.norm(truth))
    if result.flagged != adversaries:
        raise RuntimeError(f"{label} flagged {result.flagged}, expected {adversaries}")
    return {"method": label, "seconds": seconds, "cpu_seconds": cpu_seconds, "relative_error": error, "iterations": None,
            "load_1min": load, "threads": DECODE_THREADS[type(code)]}


def blas_threads() -> str:
    """The BLAS pools loaded now and their threads, as threadpoolctl reports them."""
    return ", ".join(f"{pool['internal_api']} {pool['num_threads']}" for pool in threadpool_info()
                     if pool["user_api"] == "blas")


def compile_decode_pass_s() -> float:
    """Seconds the first cyclic decode of a process spends before decoding (numba compiles its pass, or
    loads it from the on-disk cache): paid once, so kept out of the timed decodes."""
    code = CyclicCode(9, 3)
    start = time.perf_counter()
    code.decode(code.encode_all(np.ones((9, 4))))
    return time.perf_counter() - start


def environment() -> dict:
    """What decides the timings besides the code: load, cores, thread pools."""
    return {
        "load_average_1_5_15": list(os.getloadavg()),
        "cpu_count": os.cpu_count(),
        "thread_env": {name: os.environ.get(name) for name in
                       ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
        "threadpools": [{key: pool.get(key) for key in ("user_api", "internal_api", "num_threads", "version")}
                        for pool in threadpool_info()],
        "machine": platform.processor() or platform.machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dim", type=int, default=None, help="d, numbers per message (default 1e6; 1e5 with --quick)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per method (default 3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="d = 1e5 and one repeat unless given")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "aggregation_cost.json", help="JSON to write")
    args = parser.parse_args()
    dim = args.dim or (100_000 if args.quick else 1_000_000)
    repeats = args.repeats or (1 if args.quick else 3)
    before = environment()
    first_decode_s = compile_decode_pass_s()

    updates = np.random.default_rng(args.seed).standard_normal((N_WORKERS, dim))
    spread = list(range(0, 3 * N_ADVERSARIES, 3))  # one adversary in each of the first 5 repetition groups
    rows = [
        decode_row("draco repetition decode (r=3)", RepetitionCode(N_WORKERS, 3), spread, updates, repeats),
        decode_row("draco repetition decode (r=3), no adversary", RepetitionCode(N_WORKERS, 3), [], updates,
                   repeats),
        decode_row("draco repetition decode (r=15, s=5)", RepetitionCode(N_WORKERS, 15), [0, 1, 15, 16, 30],
                   updates, repeats),
        decode_row("draco cyclic decode (r=11, s=5)", CyclicCode(N_WORKERS, 11, seed=args.seed),
                   [1, 9, 17, 30, 41], updates, repeats),
        decode_row("draco cyclic decode (r=21, s=10)", CyclicCode(N_WORKERS, 21, seed=args.seed),
                   list(range(12, 22)), updates, repeats),
        decode_row("draco cyclic decode (r=21), no adversary", CyclicCode(N_WORKERS, 21, seed=args.seed), [],
                   updates, repeats),
        decode_row("draco cyclic decode (r=21, s=10), hidden from sample", CyclicCode(N_WORKERS, 21, seed=args.seed),
                   list(range(12, 22)), updates, repeats, hidden_from_sample=True),
    ]

    # the last rows are the adversaries: MoNNA's pivot, worker 0, must be honest
    attacked = Constant().apply(updates, list(range(N_WORKERS - N_ADVERSARIES, N_WORKERS)), np.random.default_rng(0))
    del updates
    honest_mean = attacked[: N_WORKERS - N_ADVERSARIES].mean(axis=0)
    for name in (*AGGREGATORS, *COMPOSED):
        load, threads = os.getloadavg()[0], blas_threads()
        if name == "geomedian":
            seconds, cpu_seconds, median = best_time_s(lambda: weiszfeld(attacked, max_iter=100, tol=1e-6), repeats)
            point, iterations, label = median.point, median.iterations, "geomedian (Weiszfeld, tol 1e-6)"
        else:
            seconds, cpu_seconds, point = best_time_s(lambda: make_aggregator(name)(attacked, N_ADVERSARIES), repeats)
            iterations, label = None, name
        distance = float(np.linalg.norm(point - honest_mean) / np.linalg.norm(honest_mean))
        rows.append({"method": label, "seconds": seconds, "cpu_seconds": cpu_seconds, "relative_error": None,
                     "iterations": iterations,
                     "distance_to_honest_mean": distance, "load_1min": load, "threads": threads})

    geomedian = next(row for row in rows if row["method"].startswith("geomedian"))
    for row in rows:
        row["speedup_vs_geomedian"] = geomedian["seconds"] / row["seconds"]
        row["cpu_speedup_vs_geomedian"] = geomedian["cpu_seconds"] / row["cpu_seconds"]
    after = environment()

    print(f"aggregation cost at n = {N_WORKERS}, d = {dim:,} float64, {N_ADVERSARIES} adversaries (best of {repeats})")
    print(f"load average before {before['load_average_1_5_15']}, after {after['load_average_1_5_15']}; "
          f"{before['cpu_count']} CPUs; thread pools: "
          + ", ".join(f"{p['internal_api']} {p['num_threads']}" for p in before["threadpools"]))
    print(f"{'method':54s} {'seconds':>9s} {'x vs GM':>8s} {'cpu s':>7s} {'x (cpu)':>8s} {'iters':>6s} "
          f"{'rel. error':>11s} {'|agg-mean_H|':>13s} {'load':>5s}  threads")
    for row in rows:
        iterations = "" if row["iterations"] is None else str(row["iterations"])
        error = "" if row["relative_error"] is None else f"{row['relative_error']:.1e}"
        distance = "" if "distance_to_honest_mean" not in row else f"{row['distance_to_honest_mean']:.2e}"
        print(f"{row['method']:54s} {row['seconds']:9.3f} {row['speedup_vs_geomedian']:8.1f} "
              f"{row['cpu_seconds']:7.3f} {row['cpu_speedup_vs_geomedian']:8.1f} {iterations:>6s} "
              f"{error:>11s} {distance:>13s} {row['load_1min']:5.2f}  {row['threads']}")
    cyclic_vs_geomedian = {row["method"]: {"wall": row["speedup_vs_geomedian"], "cpu": row["cpu_speedup_vs_geomedian"]}
                           for row in rows if row["method"].startswith("draco cyclic")}
    for label, ratio in cyclic_vs_geomedian.items():
        print(f"geometric median / {label}: {ratio['wall']:.1f}x wall-clock, {ratio['cpu']:.1f}x CPU time")
    print(f"(the first cyclic decode of a process took {first_decode_s:.2f} s more: numba compiling or loading its pass)")

    output = args.output
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({
        "n_workers": N_WORKERS, "dim": dim, "n_adversaries": N_ADVERSARIES, "repeats": repeats, "seed": args.seed,
        "environment_before": before, "environment_after": after, "rows": rows,
        "cyclic_vs_geomedian": cyclic_vs_geomedian, "first_cyclic_decode_of_the_process_s": first_decode_s,
    }, indent=2))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
