"""`edgecloud train-data export` and `edgecloud train-worker --data-dir`: a worker that holds only its own
partition files trains the model of the run that generates the data from the seed, and a bad file is
one `error:` line and exit 2 (at start-up for what the headers show, on the job for the rest).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from test_cli_bad_inputs import NO_BROKER, assert_one_error_line, run_cli

from edgecloud.training import partition_files
from edgecloud.training.local_fleet import WorkerProcesses
from edgecloud.training.protocol import SERVER, TrainingJob, job_message, message_type, sender_of
from edgecloud.training.server import ServerOptions, serve
from edgecloud.training.worker import rebuild_simulator
from edgecloud.transport.broker import EmbeddedBrokerProcess
from edgecloud.transport.mqtt import MqttTransport
from edgecloud.transport.topics import DEFAULT_DEPLOYMENT, inbox_filter, sender_topic
from edgecloud.transport.wire import Message
from robust_training.data import dataset_layout
from robust_training.simulator import SimulationConfig

SPLIT = {"n_workers": 3, "code": "repetition", "redundancy": 3, "seed": 3}
EXPORT = ["train-data", "export", "--dataset", "digits", "--nodes", "3", "--code", "repetition", "--redundancy", "3",
          "--seed", "3"]
CONFIG = SimulationConfig(rounds=3, lr=0.1, batch_size=16, tau=2, n_adversaries=1, attack="labelflip", **SPLIT)


def _export(folder: Path) -> Path:
    code, stdout, stderr = run_cli([*EXPORT, "-o", str(folder)])
    assert code == 0, stderr
    assert "worker 2: partition-0.npz" in stdout  # repetition r = 3 over 3 workers: one group of 3
    return folder


def test_export_writes_the_simulators_partitions_and_a_worker_reads_them_back(tmp_path: Path) -> None:
    folder = _export(tmp_path / "data")
    simulator = rebuild_simulator(TrainingJob("digits", "logistic", CONFIG))
    assert partition_files.check_data_dir(folder) == [folder / "partition-0.npz"]
    for index, expected in enumerate(simulator.partitions):
        loaded = partition_files.load_partition(folder, index, dataset_layout("digits"), len(expected))
        assert np.array_equal(loaded.features, expected.features) and np.array_equal(loaded.labels, expected.labels)
        assert (loaded.n_classes, loaded.image_shape) == (expected.n_classes, expected.image_shape)


def test_workers_reading_their_data_dir_train_the_generated_runs_model(tmp_path: Path) -> None:
    """Three real `train-worker --data-dir` processes, a label-flipping adversary among them (it poisons
    the partition it read), against the simulator on the generated split: the same model."""
    folder = _export(tmp_path / "data")
    job = TrainingJob("digits", "logistic", CONFIG)
    broker = EmbeddedBrokerProcess().start()
    workers = WorkerProcesses(3, broker.url, DEFAULT_DEPLOYMENT, ["--data-dir", str(folder)])
    try:
        run = serve(broker.url, job, ServerOptions(), workers_started=workers.start)
    finally:
        workers.stop()
        broker.stop()
    expected = rebuild_simulator(job).run()
    gap = np.linalg.norm(run.result.params - expected.params) / np.linalg.norm(expected.params)
    assert gap < 1e-6, gap
    assert [r.adversaries for r in run.result.records] == [r.adversaries for r in expected.records]


def _write(folder: Path, **arrays: object) -> Path:
    folder.mkdir(exist_ok=True)
    with (folder / "partition-0.npz").open("wb") as file:
        np.savez(file, **arrays)  # type: ignore[arg-type]
    return folder


ROWS = np.zeros((5, 64))
LABELS = np.arange(5)
AT_START: dict[str, tuple[Callable[[Path], Path], str]] = {
    "empty folder": (lambda folder: folder, "holds no partition-<p>.npz"),
    "not a zip": (lambda folder: (folder / "partition-0.npz").write_bytes(b"\x93NUMPY garbage") and folder,
                  "is not a readable .npz"),
    "truncated": (lambda folder: (folder / "partition-0.npz").write_bytes(
        (_write(folder / "good", x=ROWS, y=LABELS) / "partition-0.npz").read_bytes()[:300]) and folder,
                  "is not a readable .npz"),
    "no y": (lambda folder: _write(folder, x=ROWS), "exactly the arrays x and y, found x.npy"),
    "an extra array": (lambda folder: _write(folder, x=ROWS, y=LABELS, z=LABELS), "exactly the arrays x and y"),
    "1-D x": (lambda folder: _write(folder, x=np.zeros(5), y=LABELS), "x must be a 2-D float array"),
    "integer x": (lambda folder: _write(folder, x=np.zeros((5, 64), np.int64), y=LABELS), "x must be a 2-D float"),
    "float y": (lambda folder: _write(folder, x=ROWS, y=LABELS.astype(float)), "y must be a 1-D integer"),
    "boolean y": (lambda folder: _write(folder, x=ROWS, y=LABELS > 2), "y must be a 1-D integer"),
    "object y": (lambda folder: _write(folder, x=ROWS, y=np.array([1, "a", None, 2, 3], dtype=object)),
                 "holds objects"),
    "records x": (lambda folder: _write(folder, x=np.zeros((5, 64), dtype=[("a", "f8")]), y=LABELS), "records"),
    "lengths differ": (lambda folder: _write(folder, x=ROWS, y=LABELS[:4]), "x has 5 rows and y 4 labels"),
    "no rows": (lambda folder: _write(folder, x=np.zeros((0, 64)), y=LABELS[:0]), "at least 1"),
}


@pytest.mark.parametrize("case", AT_START)
def test_a_bad_data_dir_stops_the_worker_before_it_connects(tmp_path: Path, case: str) -> None:
    make, phrase = AT_START[case]
    folder = tmp_path / "data"
    folder.mkdir()
    make(folder)
    assert_one_error_line(*run_cli(["train-worker", "--broker", NO_BROKER, "--id", "0", "--data-dir", str(folder)]),
                          phrase)


def test_a_partition_bigger_than_the_cap_is_refused_from_its_header(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _write(tmp_path / "data", x=ROWS, y=LABELS)
    monkeypatch.setattr(partition_files, "MAX_PARTITION_BYTES", ROWS.nbytes)  # x fits, x and y do not
    assert_one_error_line(*run_cli(["train-worker", "--broker", NO_BROKER, "--id", "0", "--data-dir", str(folder)]),
                          f"{ROWS.nbytes + LABELS.nbytes:,} bytes of arrays")


@pytest.fixture(scope="module")
def broker() -> Iterator[EmbeddedBrokerProcess]:
    with EmbeddedBrokerProcess() as running:
        yield running


def _serve_the_job(broker_url: str, job: TrainingJob, sizes: list[int], stop: threading.Event) -> None:
    """A stand-in PS: answers every hello with the job, until `stop`."""
    with MqttTransport(broker_url, client_id=SERVER) as server:
        def on_message(message: Message, topic: str) -> None:
            if message_type(message) == "hello":
                server.publish_message(sender_topic(DEFAULT_DEPLOYMENT, sender_of(message, topic), SERVER),
                                       job_message(job, sizes))

        server.subscribe_messages(inbox_filter(DEFAULT_DEPLOYMENT, SERVER), on_message)
        stop.wait(WORKER_TIMEOUT_S)


WORKER_TIMEOUT_S = 60.0


def _worker_given_the_job(broker_url: str, job: TrainingJob, sizes: list[int], folder: Path) -> tuple[int, str, str]:
    """`train-worker --id 0 --data-dir FOLDER` (in this process) against a stand-in PS that sends `job`;
    a worker still running after WORKER_TIMEOUT_S gets SIGTERM (its own graceful stop), so the test
    fails on its exit code instead of hanging."""
    stop = threading.Event()
    server = threading.Thread(target=_serve_the_job, args=(broker_url, job, sizes, stop), daemon=True)
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    watchdog = threading.Timer(WORKER_TIMEOUT_S, os.kill, args=(os.getpid(), signal.SIGTERM))
    server.start()
    watchdog.start()
    try:
        return run_cli(["train-worker", "--broker", broker_url, "--id", "0", "--data-dir", str(folder),
                        "--log-level", "ERROR"])
    finally:
        watchdog.cancel()
        stop.set()
        server.join(10.0)
        for number, handler in handlers.items():  # the worker installed its own
            signal.signal(number, handler)


# Partition 0's arrays, given its size n in the server's split, and what the error says.
ON_THE_JOB: dict[str, tuple[Callable[[int], dict[str, np.ndarray]], str]] = {
    "features of another data set": (lambda n: {"x": np.zeros((n, 784)), "y": np.zeros(n, np.int64)},
                                     "784 features per row; the model expects 64"),
    "another split's size": (lambda n: {"x": np.zeros((n - 1, 64)), "y": np.zeros(n - 1, np.int64)},
                             "the server's split gives partition 0"),
    "NaN features": (lambda n: {"x": np.full((n, 64), np.nan), "y": np.zeros(n, np.int64)}, "NaN or infinite"),
    "a label out of range": (lambda n: {"x": np.zeros((n, 64)), "y": np.full(n, 10)}, "labels must lie in 0..9"),
    "a negative label": (lambda n: {"x": np.zeros((n, 64)), "y": np.full(n, -1)}, "labels must lie in 0..9"),
}


@pytest.mark.parametrize("case", ON_THE_JOB)
def test_files_that_do_not_fit_the_job_stop_the_worker(broker: EmbeddedBrokerProcess, tmp_path: Path,
                                                       case: str) -> None:
    arrays, phrase = ON_THE_JOB[case]
    job = TrainingJob("digits", "logistic", CONFIG)
    sizes = rebuild_simulator(job).partition_sizes
    folder = _write(tmp_path / "data", **arrays(sizes[0]))
    result = _worker_given_the_job(broker.url, job, sizes, folder)
    assert_one_error_line(*result, phrase)


def test_a_held_partition_missing_from_the_folder_stops_the_worker(broker: EmbeddedBrokerProcess,
                                                                   tmp_path: Path) -> None:
    """Cyclic r = 3 over 3 workers: worker 0 holds partitions 0, 1 and 2, the folder has only 0."""
    job = TrainingJob("digits", "logistic", SimulationConfig(rounds=1, lr=0.1, n_workers=3, code="cyclic",
                                                             redundancy=3, seed=3))
    simulator = rebuild_simulator(job)
    folder = tmp_path / "data"
    partition_files.write_partitions(folder, simulator.partitions[:1])
    result = _worker_given_the_job(broker.url, job, simulator.partition_sizes, folder)
    assert_one_error_line(*result, "has no partition-1.npz")


TRAIN = ["train", "--dataset", "digits", "--model", "logistic", "--nodes", "3", "--code", "repetition",
         "--redundancy", "3", "--seed", "3", "--rounds", "3", "--lr", "0.1", "--batch-size", "16", "--tau", "2",
         "--adversaries", "1", "--attack", "labelflip", "--json"]  # CONFIG as a command line


def test_the_local_fleet_trains_on_the_data_dir_it_is_given(tmp_path: Path) -> None:
    """`edgecloud train --runner mqtt --data-dir D`: its workers read D, not the seed's split. D holds the
    exported partition with its rows reversed (a valid file of the right size whose mini-batches differ),
    so the fleet must end with the simulator's model on the reversed rows, not on the generated ones."""
    folder = _export(tmp_path / "data")
    path = partition_files.partition_path(folder, 0)
    with np.load(path, allow_pickle=False) as arrays:
        features, labels = arrays["x"][::-1], arrays["y"][::-1]
    with path.open("wb") as file:
        np.savez(file, x=features, y=labels)
    code, _, stderr = run_cli([*TRAIN, "--runner", "mqtt", "--data-dir", str(folder), "--save", str(tmp_path / "m.npz")])
    assert code == 0, stderr[-3000:]
    simulator = rebuild_simulator(TrainingJob("digits", "logistic", CONFIG))
    generated = simulator.run().params
    simulator.partitions[0] = dataclasses.replace(simulator.partitions[0], features=features, labels=labels)
    expected = simulator.run().params
    named = simulator.objective.named_arrays(expected)
    with np.load(tmp_path / "m.npz", allow_pickle=False) as saved:
        assert sorted(saved.files) == sorted(named)
        trained, wanted = (np.concatenate([arrays[name].ravel() for name in named]) for arrays in (saved, named))
    assert np.linalg.norm(expected - generated) / np.linalg.norm(generated) > 1e-3  # the files do change the model
    assert np.linalg.norm(trained - wanted) / np.linalg.norm(wanted) < 1e-6


def test_train_takes_data_dir_only_for_the_mqtt_fleet_and_checks_it_first(tmp_path: Path) -> None:
    for runner in ("sim", "torch"):
        assert_one_error_line(*run_cli([*TRAIN, "--runner", runner, "--data-dir", str(tmp_path)]), "--runner mqtt")
    assert_one_error_line(*run_cli([*TRAIN, "--runner", "mqtt", "--data-dir", str(tmp_path / "none")]),
                          "does not exist")
    assert_one_error_line(*run_cli(["train-server", *TRAIN[1:], "--broker", NO_BROKER, "--data-dir", str(tmp_path)]),
                          "--data-dir")
