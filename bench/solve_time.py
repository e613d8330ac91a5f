"""Solve time of the placement ILP on synthetic DNN-like DAGs: ours vs the textbook form vs min-cut.

    python -m bench.solve_time                       # 100, 500, 2000, 10000 nodes x 2, 3 devices
    python -m bench.solve_time --sizes 500 2000 --textbook-time-limit 120

For each size and device count, one run each (same graph, seed 0):
- ours: `partitioner.solve.optimal.solve` (marginal formulation, LP certificate, highspy directly), build included;
- textbook: docs/architecture.md §3's formulation built with PuLP and solved by HiGHS through PuLP, build included,
  with a time limit (reported as a lower bound when hit);
- min-cut: DADS' send-once min-cut (scipy's compiled max-flow, scaled to stay exact) between the first
  two devices (the exact latency optimum when there are two devices; a restricted placement with three).
Ours must equal the textbook's optimum whenever the textbook proves one (checked, and printed).
Then the whole `edgecloud plan --cost-graph g.json --json` command at 2000 x 3 is timed in a fresh
process (median of 3), baselines and process start included, and compared with the textbook solve of
the same graph in the same run (the goal: at least 10x faster). Writes bench/results/solve_time.json.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.synthetic_dags import synthetic_cost_graph
from partitioner.costs.cost_graph import to_arrays
from partitioner.costs.objective import latency_s
from partitioner.solve.ilp_textbook import solve_textbook_latency
from partitioner.solve.mincut import min_cut_placement
from partitioner.solve.optimal import solve

RESULTS = Path(__file__).parent / "results"


def measure(n_nodes: int, n_devices: int, textbook_time_limit_s: float, textbook_max_nodes: int) -> dict:
    arrays = to_arrays(synthetic_cost_graph(n_nodes, n_devices, seed=0))
    started = time.perf_counter()
    ours = solve(arrays, "latency")
    ours_s = time.perf_counter() - started
    row = {"nodes": n_nodes, "devices": n_devices, "ours_s": ours_s, "ours_method": ours.method,
           "ours_latency_s": ours.objective_s}
    started = time.perf_counter()
    cut = min_cut_placement(arrays, 0, 1)
    row["mincut_s"] = time.perf_counter() - started
    row["mincut_latency_s"] = latency_s(arrays, cut)
    if n_nodes <= textbook_max_nodes:
        textbook = solve_textbook_latency(arrays, "highs", textbook_time_limit_s)
        row.update(textbook_s=textbook.time_s, textbook_status=textbook.status,
                   textbook_latency_s=latency_s(arrays, textbook.placement))
        finished = textbook.time_s < textbook_time_limit_s
        row["textbook_proven"] = finished
        if finished:
            row["equal_optimum"] = math.isclose(ours.objective_s, row["textbook_latency_s"], rel_tol=1e-6)
            if not row["equal_optimum"]:
                raise SystemExit(f"MISMATCH at {n_nodes}x{n_devices}: ours {ours.objective_s} vs textbook {row['textbook_latency_s']}")
        else:  # stopped by the limit: its incumbent can only be worse than our optimum
            row["equal_optimum"] = None
            assert ours.objective_s <= row["textbook_latency_s"] * (1 + 1e-6)
    return row


def time_cli(n_nodes: int, n_devices: int, repeats: int = 3) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "g.json"
        synthetic_cost_graph(n_nodes, n_devices, seed=0).save(path)
        script = Path(sys.executable).parent / "edgecloud"  # the installed console script
        command = [str(script), "plan", "--cost-graph", str(path), "--json"]
        runs = []
        for _ in range(repeats):
            started = time.perf_counter()
            out = subprocess.run(command, capture_output=True, text=True, check=True)
            runs.append(time.perf_counter() - started)
        plan = json.loads(out.stdout)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        bare_python_s = time.perf_counter() - started
    return {"nodes": n_nodes, "devices": n_devices, "command": " ".join(["edgecloud", *command[1:]]),
            "median_s": statistics.median(runs), "runs_s": runs, "bare_python_s": bare_python_s,
            "status": plan["solver"]["status"], "method": plan["solver"]["method"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 500, 2000, 10000])
    parser.add_argument("--devices", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--textbook-time-limit", type=float, default=300.0)
    parser.add_argument("--textbook-max-nodes", type=int, default=2000,
                        help="skip the textbook above this size (PuLP alone needs minutes to build 10000 x 3)")
    args = parser.parse_args()
    rows = []
    header = f"{'nodes':>6} {'dev':>3} {'ours s':>8} {'method':>15} {'textbook s':>12} {'status':>11} {'min-cut s':>9} {'speedup':>8} {'same opt':>8}"
    print(header)
    for n_nodes in args.sizes:
        for n_devices in args.devices:
            row = measure(n_nodes, n_devices, args.textbook_time_limit, args.textbook_max_nodes)
            rows.append(row)
            textbook = row.get("textbook_s")
            bound = "" if row.get("textbook_proven", True) else ">"
            textbook_text = f"{bound}{textbook:.3f}" if textbook else "—"
            speedup_text = f"{bound}{textbook / row['ours_s']:.1f}x" if textbook else "—"
            print(f"{n_nodes:>6} {n_devices:>3} {row['ours_s']:>8.3f} {row['ours_method']:>15} {textbook_text:>12} "
                  f"{row.get('textbook_status', '—'):>11} {row['mincut_s']:>9.3f} {speedup_text:>8} "
                  f"{str(row.get('equal_optimum', '—')):>8}", flush=True)
    cli = time_cli(2000, 3)
    textbook_s = next((row["textbook_s"] for row in rows
                       if (row["nodes"], row["devices"]) == (2000, 3) and row.get("textbook_proven")), None)
    if textbook_s is None:
        textbook_s = solve_textbook_latency(to_arrays(synthetic_cost_graph(2000, 3, seed=0)), "highs",
                                            args.textbook_time_limit).time_s
    cli["textbook_s"] = textbook_s
    cli["textbook_over_cli"] = textbook_s / cli["median_s"]
    print(f"\nwhole CLI, fresh process, {cli['nodes']} x {cli['devices']}: median {cli['median_s']:.3f} s "
          f"(runs {', '.join(f'{r:.3f}' for r in cli['runs_s'])}; bare python start {cli['bare_python_s']:.3f} s) "
          f"-> {cli['status']} via {cli['method']}\n  {cli['command']}\n"
          f"textbook PuLP+HiGHS solve of the same graph: {textbook_s:.3f} s = {cli['textbook_over_cli']:.1f}x the whole command")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "solve_time.json").write_text(json.dumps({"rows": rows, "cli": cli}, indent=1))
    print(f"wrote {RESULTS / 'solve_time.json'}")


if __name__ == "__main__":
    main()
