"""Aggregation cost alone at the parameter server: Draco's decodes vs robust aggregators, same run.

    python bench/aggregation_cost.py                  # n = P = 45 workers, d = 1e6 float64 (~2 minutes)
    python bench/aggregation_cost.py --dim 100000     # quicker

Every method faces 5 adversaries (constant attack, -100) among 45 messages of d float64 numbers:
- repetition decode, r = 3 (15 groups; the 5 adversaries are the first replicas of 5 groups: the slow
  path, where those groups take a vote and the winners are summed afresh), once without adversaries
  (bit-identical replicas: one pass), and r = 15 (s = 5; 3 groups of 15, every group in dispute with its
  first replica adversarial: the vote's worst case, which Table 2 meets at s = 5),
- cyclic decode, r = 11 (s = 5) and r = 21 (s = 10, with 10 adversaries: its worst case),
- mean, coordinate median, trimmed mean (f = 5), Krum and multi-Krum (f = 5), and the geometric median
  (Weiszfeld to a relative step of 1e-6, iterations reported).
Each is timed `--repeats` times and the best time is kept (the machine is shared). Decodes are checked to
return the adversary-free sum. Writes bench/results/aggregation_cost.json and prints the table with each
method's speed-up over the geometric median.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from robust_training.aggregators import AGGREGATORS, weiszfeld
from robust_training.attacks import Constant
from robust_training.codes import Code, CyclicCode, RepetitionCode

N_WORKERS = 45
N_ADVERSARIES = 5
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def best_time_s(work: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Fastest of `repeats` runs, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = work()
        best = min(best, time.perf_counter() - start)
    return best, result


def decode_row(label: str, code: Code, adversaries: list[int], updates: np.ndarray, repeats: int) -> dict:
    partition_updates = updates[: code.n_partitions]
    attacked = Constant().apply(code.encode_all(partition_updates), adversaries, np.random.default_rng(0))
    seconds, result = best_time_s(lambda: code.decode(attacked), repeats)
    truth = partition_updates.sum(axis=0)
    error = float(np.linalg.norm(result.total - truth) / np.linalg.norm(truth))
    if result.flagged != adversaries:
        raise RuntimeError(f"{label} flagged {result.flagged}, expected {adversaries}")
    return {"method": label, "seconds": seconds, "relative_error": error, "iterations": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dim", type=int, default=1_000_000, help="d, numbers per message (default 1e6)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    updates = np.random.default_rng(args.seed).standard_normal((N_WORKERS, args.dim))
    spread = list(range(0, 3 * N_ADVERSARIES, 3))  # one adversary in each of the first 5 repetition groups
    rows = [
        decode_row("draco repetition decode (r=3)", RepetitionCode(N_WORKERS, 3), spread, updates, args.repeats),
        decode_row("draco repetition decode (r=3), no adversary", RepetitionCode(N_WORKERS, 3), [], updates,
                   args.repeats),
        decode_row("draco repetition decode (r=15, s=5)", RepetitionCode(N_WORKERS, 15), [0, 1, 15, 16, 30],
                   updates, args.repeats),
        decode_row("draco cyclic decode (r=11, s=5)", CyclicCode(N_WORKERS, 11, seed=args.seed),
                   [1, 9, 17, 30, 41], updates, args.repeats),
        decode_row("draco cyclic decode (r=21, s=10)", CyclicCode(N_WORKERS, 21, seed=args.seed),
                   list(range(12, 22)), updates, args.repeats),
    ]

    attacked = Constant().apply(updates, list(range(N_ADVERSARIES)), np.random.default_rng(0))
    del updates
    seconds, median = best_time_s(lambda: weiszfeld(attacked, max_iter=100, tol=1e-6), args.repeats)
    rows.append({"method": "geometric median (Weiszfeld, tol 1e-6)", "seconds": seconds, "relative_error": None,
                 "iterations": median.iterations})
    for name in ("median", "trimmed", "krum", "multikrum", "mean"):
        aggregator = AGGREGATORS[name]()
        seconds, _ = best_time_s(lambda: aggregator(attacked, N_ADVERSARIES), args.repeats)
        rows.append({"method": name, "seconds": seconds, "relative_error": None, "iterations": None})

    geomedian_s = next(row["seconds"] for row in rows if row["method"].startswith("geometric median"))
    for row in rows:
        row["speedup_vs_geomedian"] = geomedian_s / row["seconds"]

    print(f"aggregation cost at n = {N_WORKERS}, d = {args.dim:,} float64, {N_ADVERSARIES} adversaries "
          f"(best of {args.repeats})")
    print(f"{'method':46s} {'seconds':>9s} {'x vs GM':>8s} {'iters':>6s} {'rel. error':>11s}")
    for row in rows:
        iterations = "" if row["iterations"] is None else str(row["iterations"])
        error = "" if row["relative_error"] is None else f"{row['relative_error']:.1e}"
        print(f"{row['method']:46s} {row['seconds']:9.3f} {row['speedup_vs_geomedian']:8.1f} {iterations:>6s} "
              f"{error:>11s}")

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    output = RESULTS_DIR / "aggregation_cost.json"
    output.write_text(json.dumps({
        "n_workers": N_WORKERS, "dim": args.dim, "n_adversaries": N_ADVERSARIES, "repeats": args.repeats,
        "seed": args.seed, "machine": platform.processor() or platform.machine(), "rows": rows,
    }, indent=2))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
