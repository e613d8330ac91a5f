"""`python -m edgecloud.testbed.model_timer MODEL --threads N`: time the whole model on request.

Why a long-lived child: calibrating a CPU quota measures the model several times at different shares,
and a process started in a slowed group would pay a slowed interpreter and onnxruntime start each time.
This one loads the model once, then for every line "SECONDS GAP_S" on stdin runs it with random inputs
(seeded) for at least that long and at least MIN_RUNS times, each run alone after GAP_S idle, and prints
the median run in seconds: a request-sized burst as the agent runs it (a request arrives, one run, the
agent waits for the next). A CPU quota caps time per period (at least 1 ms of quota, enforced at the
scheduler tick), so such a burst is slowed differently from back-to-back runs, whose mean the quota holds
exactly; the agent sees bursts, so the calibration matches those (edgecloud.testbed.cpu_quota).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

MIN_RUNS = 10


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m edgecloud.testbed.model_timer")
    parser.add_argument("model")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import numpy as np

    from devices.sessions import make_session

    session = make_session(args.model, args.threads)
    rng = np.random.default_rng(args.seed)
    feeds = {}
    for spec in session.get_inputs():
        shape = [dim if isinstance(dim, int) and dim > 0 else 1 for dim in spec.shape]
        dtype = np.float32 if spec.type == "tensor(float)" else np.int64
        feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
    session.run(None, feeds)
    print("ready", flush=True)
    for line in sys.stdin:
        budget_s, gap_s = (float(word) for word in line.split())
        runs_s: list[float] = []
        deadline_s = time.perf_counter() + budget_s
        while len(runs_s) < MIN_RUNS or time.perf_counter() < deadline_s:
            time.sleep(gap_s)
            started_s = time.perf_counter()
            session.run(None, feeds)
            runs_s.append(time.perf_counter() - started_s)
        print(statistics.median(runs_s), flush=True)


if __name__ == "__main__":
    main()
