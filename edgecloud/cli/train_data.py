"""`edgecloud train-data export`: a run's partitions as the files `edgecloud train-worker --data-dir` reads.

The split options are `edgecloud train`'s own (same flags, bounds and defaults), and the split is the
simulator's (`robust_training.simulator.split_partitions`), so a run whose workers read the exported
folder trains the model of the run that generates the data from the seed. Each device needs only the
files of the partitions it holds; the command lists them per worker.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any

import typer

from edgecloud.cli.train_fleet import take_train_options
from edgecloud.cli.user_errors import reports_user_errors
from edgecloud.errors import EdgecloudError

app = typer.Typer(help="A training run's data partitions as files, for workers that hold only their own.",
                  no_args_is_help=True)

SPLIT_OPTIONS = ("dataset", "nodes", "code", "redundancy", "seed", "iid", "alpha", "unequal")


def export(output: Path, **options: Any) -> None:
    """Write partition-<p>.npz (x, y) for every partition of the run these options describe."""
    from edgecloud.training.partition_files import write_partitions
    from robust_training.data import load_dataset
    from robust_training.simulator import SimulationConfig, held_partitions, split_partitions

    if output.exists() and not output.is_dir():
        raise EdgecloudError(f"-o {output} is a file; give the folder to write the partitions into.")
    config = SimulationConfig(  # rounds and lr do not touch the split
        n_workers=options["nodes"], rounds=1, lr=1.0, code=options["code"], redundancy=options["redundancy"],
        split="iid" if options["iid"] else "dirichlet", unequal_sizes=options["unequal"],
        dirichlet_alpha=options["alpha"], seed=options["seed"])
    config.validate()
    code, _, _ = config.build()
    train, _ = load_dataset(options["dataset"], seed=options["seed"])
    paths = write_partitions(output, split_partitions(train, config, code))
    typer.echo(f"wrote {len(paths)} partitions of {options['dataset']} to {output}; each worker needs:")
    for worker in range(config.n_workers):
        names = " ".join(f"partition-{p}.npz" for p in held_partitions(code, worker))
        typer.echo(f"  worker {worker}: {names}")


take_train_options(export, SPLIT_OPTIONS, [inspect.Parameter(
    "output", inspect.Parameter.KEYWORD_ONLY,
    annotation=Annotated[Path, typer.Option("--output", "-o", help="Folder to write the partition files into.")])])
app.command("export")(reports_user_errors(export))
