"""How exact the cyclic decode is, and how it fails, over many rounds of every attack.

    python bench/cyclic_exactness.py              # n in {9, 15, 25, 45}, several r, 20 rounds per cell
    python bench/cyclic_exactness.py --rounds 5   # quicker

For each (n, r) and attack: `--rounds` rounds with s = (r-1)//2 adversaries (half random sets, half
contiguous blocks, the hardest pattern for a DFT code), partition updates of random scale 1e-4..1e4,
d = --dim; reports the maximum relative error of the decoded sum vs the adversary-free sum and whether
the flagged set was exactly the adversaries. Then the same with s + 1 and s + 2 adversaries: how many
rounds raised DecodeError, returned the exact sum anyway, or returned a wrong sum (should be 0).
Writes bench/results/cyclic_exactness.json and prints the table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from robust_training.attacks import ATTACKS
from robust_training.codes import CyclicCode
from robust_training.errors import DecodeError

CONFIGS = [(9, 3), (9, 5), (15, 5), (15, 7), (25, 7), (25, 11), (45, 3), (45, 11), (45, 21)]
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def adversary_set(n: int, count: int, contiguous: bool, rng: np.random.Generator) -> list[int]:
    if contiguous:
        return sorted(int(w) for w in (int(rng.integers(n)) + np.arange(count)) % n)
    return sorted(int(w) for w in rng.choice(n, size=count, replace=False))


def run_cell(code: CyclicCode, attack_name: str, count: int, args, rng: np.random.Generator) -> dict:
    worst, flags_exact, raised, exact, wrong = 0.0, 0, 0, 0, 0
    for round_index in range(args.rounds):
        adversaries = adversary_set(code.n_workers, count, round_index % 2 == 1, rng)
        updates = rng.standard_normal((code.n_partitions, args.dim)) * 10.0 ** rng.uniform(-4, 4)
        truth = updates.sum(axis=0)
        attacked = ATTACKS[attack_name]().apply(code.encode_all(updates), adversaries, rng)
        try:
            result = code.decode(attacked)
        except DecodeError:
            raised += 1
            continue
        error = float(np.linalg.norm(result.total - truth) / np.linalg.norm(truth))
        worst = max(worst, error)
        flags_exact += result.flagged == adversaries
        exact += error <= 1e-6
        wrong += error > 1e-6
    return {"max_relative_error": worst, "flagged_exactly": flags_exact, "raised": raised, "exact": exact,
            "wrong": wrong, "rounds": args.rounds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--dim", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    cells = []
    print(f"{'n':>3s} {'r':>3s} {'s':>3s} {'attack':9s} {'max rel. err (s adv.)':>22s} {'flags ok':>9s} "
          f"{'s+1,s+2: raised':>16s} {'exact':>6s} {'WRONG':>6s}")
    for n_workers, redundancy in CONFIGS:
        code = CyclicCode(n_workers, redundancy, seed=args.seed)
        s = code.max_adversaries
        for attack_name in sorted(ATTACKS):
            within = run_cell(code, attack_name, s, args, rng)
            beyond = [run_cell(code, attack_name, count, args, rng) for count in (s + 1, s + 2)]
            raised = sum(cell["raised"] for cell in beyond)
            exact = sum(cell["exact"] for cell in beyond)
            wrong = sum(cell["wrong"] for cell in beyond)
            cells.append({"n": n_workers, "r": redundancy, "s": s, "attack": attack_name, "within_s": within,
                          "s_plus_1": beyond[0], "s_plus_2": beyond[1]})
            print(f"{n_workers:3d} {redundancy:3d} {s:3d} {attack_name:9s} {within['max_relative_error']:22.1e} "
                  f"{within['flagged_exactly']:4d}/{args.rounds:<4d} {raised:11d}/{2 * args.rounds:<4d} "
                  f"{exact:6d} {wrong:6d}")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    output = RESULTS_DIR / "cyclic_exactness.json"
    output.write_text(json.dumps({"rounds": args.rounds, "dim": args.dim, "seed": args.seed, "cells": cells},
                                 indent=2))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
