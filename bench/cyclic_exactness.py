"""How exact the cyclic decode is, how it fails, and what it costs under CPU contention.

    python bench/cyclic_exactness.py                  # exactness: n in {9, 15, 25, 45}, several r, 20 rounds
    python bench/cyclic_exactness.py --rounds 5       # quicker
    python bench/cyclic_exactness.py --timing         # decode time at n = 45, d = 1e6, idle and contended

Exactness. For each (n, r) and attack (the five of `robust_training.attacks`, plus tiny scalings
1 + 1e-8 .. 1 + 1e-6 and constants of 1e9 .. 1e15 times the honest scale): `--rounds` rounds with
s = (r-1)//2 adversaries (half random sets, half contiguous blocks, the hardest pattern for a DFT code),
partition updates of random scale 1e-4..1e4, d = --dim; reports the maximum relative error of the decoded
sum and in how many rounds the flagged set was exactly the adversaries. Then s + 1 and s + 2 adversaries:
rounds that raised DecodeError, that returned an answer explained by the kept messages
(`robust_training.codes.promise`), and WRONG ones (returned, not explained: should be 0).
Writes bench/results/cyclic_exactness.json.

Timing. The decode of n = 45 messages of d = --timing-dim at r = 21 (10 adversaries) and r = 11 (5), and
without adversaries, best of --repeats; then the same while --contention busy processes compete for the
CPUs (the machine is shared with other agents as well: compare ratios within one run). The baseline is
one single-threaded pass over the messages (messages @ 4 vectors) in the same conditions.
Writes bench/results/cyclic_decode_timing.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from robust_training.attacks import ATTACKS
from robust_training.codes import CyclicCode
from robust_training.codes.promise import unexplained
from robust_training.errors import DecodeError

CONFIGS = [(9, 3), (9, 5), (15, 5), (15, 7), (25, 7), (25, 11), (45, 3), (45, 11), (45, 21)]
RESULTS_DIR = Path(__file__).resolve().parent / "results"
Forge = Callable[[np.ndarray, list[int], np.random.Generator], np.ndarray]


def scaled_by(factor: float) -> Forge:
    def forge(messages: np.ndarray, adversaries: list[int], rng: np.random.Generator) -> np.ndarray:
        forged = messages.copy()
        forged[adversaries] *= factor
        return forged
    return forge


def constant_times_scale(value: float) -> Forge:
    def forge(messages: np.ndarray, adversaries: list[int], rng: np.random.Generator) -> np.ndarray:
        forged = messages.copy()
        forged[adversaries] = value * np.abs(messages).max()
        return forged
    return forge


def forgeries() -> dict[str, Forge]:
    attacks: dict[str, Forge] = {name: (lambda m, a, rng, name=name: ATTACKS[name]().apply(m, a, rng))
                                 for name in sorted(ATTACKS)}
    attacks |= {f"x(1+1e{e})": scaled_by(1 + 10.0 ** e) for e in (-8, -7, -6)}
    attacks |= {f"const 1e{e}": constant_times_scale(-(10.0 ** e)) for e in (9, 12, 15)}
    return attacks


def adversary_set(n: int, count: int, contiguous: bool, rng: np.random.Generator) -> list[int]:
    if contiguous:
        return sorted(int(w) for w in (int(rng.integers(n)) + np.arange(count)) % n)
    return sorted(int(w) for w in rng.choice(n, size=count, replace=False))


def run_cell(code: CyclicCode, forge: Forge, count: int, args, rng: np.random.Generator) -> dict:
    worst, flags_exact, raised, explained, wrong = 0.0, 0, 0, 0, 0
    for round_index in range(args.rounds):
        adversaries = adversary_set(code.n_workers, count, round_index % 2 == 1, rng)
        updates = rng.standard_normal((code.n_partitions, args.dim)) * 10.0 ** rng.uniform(-4, 4)
        honest = code.encode_all(updates)
        attacked = forge(honest, adversaries, rng)
        try:
            result = code.decode(attacked)
        except DecodeError:
            raised += 1
            continue
        error = float(np.linalg.norm(result.total - updates.sum(axis=0)) / np.linalg.norm(updates.sum(axis=0)))
        worst = max(worst, error)
        flags_exact += result.flagged == adversaries
        if unexplained(code, attacked, result.flagged, result.total, honest) is None:
            explained += 1
        else:
            wrong += 1
    return {"max_relative_error": worst, "flagged_exactly": flags_exact, "raised": raised,
            "explained": explained, "wrong": wrong, "rounds": args.rounds}


def exactness(args) -> None:
    rng = np.random.default_rng(args.seed)
    cells = []
    print(f"{'n':>3s} {'r':>3s} {'s':>3s} {'attack':12s} {'max rel. err (s adv.)':>22s} {'flags ok':>9s} "
          f"{'s+1,s+2: raised':>16s} {'explained':>9s} {'WRONG':>6s}")
    for n_workers, redundancy in CONFIGS:
        code = CyclicCode(n_workers, redundancy, seed=args.seed)
        s = code.max_adversaries
        for name, forge in forgeries().items():
            within = run_cell(code, forge, s, args, rng)
            beyond = [run_cell(code, forge, count, args, rng) for count in (s + 1, s + 2)]
            raised = sum(cell["raised"] for cell in beyond)
            explained = sum(cell["explained"] for cell in beyond)
            wrong = sum(cell["wrong"] for cell in beyond)
            cells.append({"n": n_workers, "r": redundancy, "s": s, "attack": name, "within_s": within,
                          "s_plus_1": beyond[0], "s_plus_2": beyond[1]})
            rounds_ok = within["rounds"] - within["raised"]
            print(f"{n_workers:3d} {redundancy:3d} {s:3d} {name:12s} {within['max_relative_error']:22.1e} "
                  f"{within['flagged_exactly']:4d}/{rounds_ok:<4d} {raised:11d}/{2 * args.rounds:<4d} "
                  f"{explained:9d} {wrong:6d}")
    worst = max(cell["within_s"]["max_relative_error"] for cell in cells)
    flags = sum(cell["within_s"]["flagged_exactly"] for cell in cells)
    total_rounds = sum(cell["within_s"]["rounds"] for cell in cells)
    spurious = sum(cell["within_s"]["raised"] for cell in cells)
    wrong = sum(cell["s_plus_1"]["wrong"] + cell["s_plus_2"]["wrong"] for cell in cells)
    print(f"within s: worst relative error {worst:.1e}, flags exact in {flags}/{total_rounds} rounds, "
          f"{spurious} spurious DecodeErrors; beyond s: {wrong} wrong sums")
    write("cyclic_exactness.json", {"rounds": args.rounds, "dim": args.dim, "seed": args.seed, "cells": cells})


def _burn(stop_at: float) -> None:
    while time.monotonic() < stop_at:
        pass


def best_time_s(function: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def timing(args) -> None:
    n_workers, dimension = 45, args.timing_dim
    rng = np.random.default_rng(args.seed)
    updates = rng.standard_normal((n_workers, dimension))
    vectors = rng.random((dimension, 4)) - 0.5
    cases = []
    for redundancy, adversaries in ((21, list(range(10))), (11, [0, 9, 18, 27, 36]), (21, [])):
        code = CyclicCode(n_workers, redundancy, seed=args.seed)
        attacked = ATTACKS["constant"]().apply(code.encode_all(updates), adversaries, rng)
        code.decode(attacked)  # warm: projections drawn, BLAS controller built
        cases.append((f"r={redundancy}, {len(adversaries)} adversaries", code, attacked))

    def measure(label: str) -> dict:
        def one_pass() -> np.ndarray:
            with threadpool_limits(limits=1, user_api="blas"):
                return cases[0][2] @ vectors
        row = {"conditions": label, "one_pass_s": best_time_s(one_pass, args.repeats)}
        for name, code, attacked in cases:
            row[name] = best_time_s(lambda: code.decode(attacked), args.repeats)
        return row

    rows = [measure("idle (other agents only)")]
    stop_at = time.monotonic() + 600
    burners = [multiprocessing.Process(target=_burn, args=(stop_at,), daemon=True) for _ in range(args.contention)]
    for burner in burners:
        burner.start()
    try:
        rows.append(measure(f"{args.contention} busy processes"))
    finally:
        for burner in burners:
            burner.terminate()
            burner.join()
    names = [name for name, _, _ in cases]
    print(f"cyclic decode, n = {n_workers}, d = {dimension}; best of {args.repeats} (s)")
    print(f"{'conditions':26s} {'one pass':>9s} " + " ".join(f"{name:>26s}" for name in names))
    for row in rows:
        print(f"{row['conditions']:26s} {row['one_pass_s']:9.3f} " + " ".join(
            f"{row[name]:9.3f} ({row[name] / row['one_pass_s']:4.1f} passes)   " for name in names))
    write("cyclic_decode_timing.json", {"n": n_workers, "dim": dimension, "repeats": args.repeats, "rows": rows})


def write(name: str, payload: dict) -> None:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    output = RESULTS_DIR / name
    output.write_text(json.dumps(payload, indent=2))
    print(f"wrote {output}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--dim", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timing", action="store_true", help="time the decode instead (see module doc)")
    parser.add_argument("--timing-dim", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--contention", type=int, default=2, help="busy processes during the contended run")
    args = parser.parse_args()
    timing(args) if args.timing else exactness(args)


if __name__ == "__main__":
    main()
