"""`edgecloud train-server` and `edgecloud train-worker`: training over MQTT with the workers on other hosts.

`train-server` is `edgecloud train` with the MQTT runner's PS alone: it takes every option of
`edgecloud train` except `--runner` and `--data-dir` (a remote worker takes its own `train-worker
--data-dir`); the signature is `train`'s own, so an option added there is offered here too. It
waits for the P workers to join and prints the same summary and `--save` file.
`train-worker` is one worker: it needs only the broker and its id; the job (dataset, model, config,
seed) comes from the server, and the worker rebuilds its own partitions from it, or reads them from
`--data-dir` (files written by `edgecloud train-data export`, see edgecloud.training.partition_files).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from edgecloud.cli import train as train_command
from edgecloud.cli.broker_options import BrokerPasswordFile
from edgecloud.cli.options import COUNT_MAX, THREADS_MAX
from edgecloud.transport.topics import DEFAULT_DEPLOYMENT


def train_server(**options: Any) -> None:
    """Train as the parameter server of P `edgecloud train-worker` processes on an MQTT broker."""
    train_command.train(runner=train_command.REMOTE_WORKERS, **options)


def take_train_options(command: Callable[..., None], names: Collection[str], own: Sequence[inspect.Parameter] = ()) -> None:
    """Give `command` the `train` parameters in `names` (their flags, bounds, help and defaults), then
    its `own`: typer reads the signature and the evaluated annotations (train.py's are strings under
    `from __future__ import annotations`), so an option changed in `train` changes here too."""
    hints = typing.get_type_hints(train_command.train, include_extras=True)
    parameters = [parameter.replace(annotation=hints[name])
                  for name, parameter in inspect.signature(train_command.train).parameters.items() if name in names]
    parameters += own
    command.__signature__ = inspect.Signature(parameters, return_annotation=None)  # type: ignore[attr-defined]
    command.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters}


take_train_options(train_server, set(inspect.signature(train_command.train).parameters) - {"runner", "data_dir"})


def train_worker(
    broker: Annotated[str, typer.Option("--broker", help="Broker URL: mqtt://host:port, mqtt://user@host:port or mqtts://...")],
    worker_id: Annotated[int, typer.Option("--id", help="This worker's id N (0..P-1); its login is worker-N.",
                                           min=0, max=COUNT_MAX)],
    broker_password_file: BrokerPasswordFile = None,
    data_dir: Annotated[Optional[Path], typer.Option(
        "--data-dir", help="Read this worker's partitions from DIR/partition-<p>.npz (arrays x, y; "
                           "`edgecloud train-data export` writes them) instead of generating them from the seed.")] = None,
    deployment: Annotated[str, typer.Option("--deployment", help="Topic namespace shared with the server.")] = DEFAULT_DEPLOYMENT,
    keep_serving: Annotated[bool, typer.Option("--keep-serving", help="After a run, wait for the next server's job instead of exiting.")] = False,
    ready_file: Annotated[Optional[Path], typer.Option("--ready-file", help="Touch this file once connected and listening (for supervisors).")] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="Python logging level.")] = "INFO",
    threads: Annotated[Optional[int], typer.Option(
        "--threads", min=1, max=THREADS_MAX,
        help="torch intra-op threads for the local steps (default: torch's, all cores); workers sharing one "
             "host want cores / workers.")] = None,
) -> None:
    """Serve one worker's rounds until the server finishes or SIGINT/SIGTERM."""
    from edgecloud.cli.long_running import configure_logging, stop_on_signals
    from edgecloud.training.worker import TrainingWorker

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    configure_logging(log_level)
    stop = stop_on_signals()
    TrainingWorker(broker, worker_id, deployment, keep_serving, data_dir).run(stop, on_ready=lambda: ready_file.touch() if ready_file else None)
