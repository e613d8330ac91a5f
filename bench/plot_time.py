"""Time to draw a plan (`edgecloud plan --plot`) on synthetic DAGs of 500 to 10,000 nodes.

    python -m bench.plot_time                 # table + bench/results/plot_time.json

Each graph (synthetic chains with skips and fan-out, seed 0, 3 devices) is planned once, then drawn
`--repeats` times into a scratch PNG; the fastest drawing counts (matplotlib's import and first-figure
set-up are paid once, untimed, before). `marks` is what is drawn after chains are collapsed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bench.synthetic_dags import synthetic_cost_graph
from partitioner.plan.make_plan import plan_cost_graph
from partitioner.plan.plotting import INPUT, OUTPUT, _layout, plot_plan

RESULTS = Path(__file__).parent / "results"


def measure(n_nodes: int, repeats: int, folder: Path) -> dict:
    graph = synthetic_cost_graph(n_nodes, 3, seed=0)
    plan = plan_cost_graph(graph)
    device_of = {**plan.layers, INPUT: plan.source, OUTPUT: plan.sink}
    marks = len(_layout(graph, device_of).members) - 2
    times_s = []
    for _ in range(repeats):
        started = time.perf_counter()
        plot_plan(plan, graph, folder / f"plan-{n_nodes}.png")
        times_s.append(time.perf_counter() - started)
    return {"nodes": n_nodes, "marks": marks, "plot_s": min(times_s), "runs_s": times_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 2000, 10000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        measure(50, 1, folder)  # warm-up: matplotlib's import and first figure
        rows = [measure(n, args.repeats, folder) for n in args.sizes]
    print(f"{'nodes':>6} {'marks':>6} {'plot (s)':>9}")
    for row in rows:
        print(f"{row['nodes']:>6} {row['marks']:>6} {row['plot_s']:>9.3f}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "plot_time.json").write_text(json.dumps({"rows": rows}, indent=1))
    print(f"wrote {RESULTS / 'plot_time.json'}")


if __name__ == "__main__":
    main()
