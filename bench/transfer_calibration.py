"""Calibrates the time model's relay rate and fixed per-message cost on this host, for both runners.

    python bench/transfer_calibration.py                       # MQTT (Mosquitto) and gloo, P = 4, 8, 16
    python bench/transfer_calibration.py --runners mqtt --workers 8,16

A round of pure transfer, with the messages the runners send and no compute: the PS sends the model
(float64, `--sizes` parameters) to each of P worker processes and waits for every worker's answer of
the same size.
- mqtt: one Mosquitto started here, P processes with our MQTT client; the PS encodes and publishes a
  `round_message` to each worker's inbox, each worker decodes it, publishes `received_message` and an
  `update_message` carrying a copy of the model, as `edgecloud train-worker` does (its compute aside).
- torch: P + 1 gloo processes over loopback; rank 0 broadcasts a control vector and the model, then
  receives each worker's message and its small report, as `robust_training.runners.torch_distributed`.
Each (P, size) runs `--rounds` timed rounds after one warm-up; the median is kept. The fit
(`robust_training.time_model.fit_relay`) gives per runner the relay rate (bits per second of the P
exchanges through the one serial point: the broker and the PS's client, or rank 0's loopback) and the
fixed cost per message, which `bench/training_runners.py` charges (`--calibration`). The sizes are the
runners' bench models: 7,850 (logistic regression) and 1,033,510 (the FC net) parameters, plus 1,000
for the fixed cost alone. Every process runs one torch/BLAS thread, as the runners' workers do.

Writes bench/results/transfer_calibration.json: every timing, the fits, and the load average before and
after (the machine is shared: calibrate at the load the runners will see).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import queue
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from robust_training.time_model import ExchangeTiming, TransferModel, fit_relay

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_SIZES = (1_000, 7_850, 1_033_510)
REPORT_LENGTH = 3   # a cyclic r = 3 worker's start losses
JOB = "calibration"
READY_TIMEOUT_S = 120.0


# -- MQTT ------------------------------------------------------------------------------------------

def _mqtt_worker(url: str, index: int, ready: multiprocessing.Event, stop: multiprocessing.Event) -> None:
    """Answer every round message as a training worker does, with a copy of the model as the update."""
    from edgecloud.training.protocol import SERVER, received_message, update_message, worker_name
    from edgecloud.transport.mqtt import MqttTransport
    from edgecloud.transport.topics import DEFAULT_DEPLOYMENT, inbox_filter, sender_topic

    to_server = sender_topic(DEFAULT_DEPLOYMENT, SERVER, worker_name(index))
    with MqttTransport(url, worker_name(index)) as transport:
        def answer(message, _topic: str) -> None:
            round_index = int(message.meta["round"])
            transport.publish_message(to_server, received_message(index, JOB, round_index))
            transport.publish_message(to_server, update_message(
                index, JOB, round_index, np.array(message.tensors["params"]), np.zeros(REPORT_LENGTH), 0.0))

        transport.subscribe_messages(inbox_filter(DEFAULT_DEPLOYMENT, worker_name(index)), answer)
        ready.set()
        stop.wait()


def measure_mqtt(worker_counts: tuple[int, ...], sizes: tuple[int, ...], rounds: int) -> list[ExchangeTiming]:
    from edgecloud.training.protocol import SERVER, round_message, worker_name
    from edgecloud.transport.broker import MosquittoBroker
    from edgecloud.transport.mqtt import MqttTransport
    from edgecloud.transport.topics import DEFAULT_DEPLOYMENT, inbox_filter, sender_topic
    from edgecloud.transport.wire import decode, encode

    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    timings: list[ExchangeTiming] = []
    with MosquittoBroker() as broker:
        readies = [context.Event() for _ in range(max(worker_counts))]
        processes = [context.Process(target=_mqtt_worker, args=(broker.url, i, readies[i], stop), daemon=True)
                     for i in range(max(worker_counts))]
        for process in processes:
            process.start()
        try:
            if not all(ready.wait(READY_TIMEOUT_S) for ready in readies):
                raise RuntimeError("an MQTT calibration worker did not start")
            answers: queue.Queue[bytes] = queue.Queue()
            with MqttTransport(broker.url, SERVER) as ps:
                ps.subscribe(inbox_filter(DEFAULT_DEPLOYMENT, SERVER), lambda payload, _topic: answers.put(payload))
                topics = [sender_topic(DEFAULT_DEPLOYMENT, worker_name(i), SERVER) for i in range(max(worker_counts))]
                round_index = 0
                for n_workers in worker_counts:
                    for size in sizes:
                        model = np.ones(size)
                        samples = []
                        for repeat in range(rounds + 1):
                            round_index += 1
                            started = time.perf_counter()
                            for worker in range(n_workers):  # the PS encodes each worker's copy, as it does
                                ps.publish(topics[worker], encode(round_message(JOB, round_index, 1, False, model),
                                                                  ps.limits))
                            updates = 0
                            while updates < n_workers:
                                message = decode(answers.get(timeout=60), ps.limits)
                                updates += message.meta.get("type") == "update"
                            if repeat:  # the first is a warm-up
                                samples.append(time.perf_counter() - started)
                        timings.append(ExchangeTiming(n_workers, 8 * size, 8 * size, statistics.median(samples)))
                        print(f"mqtt  P={n_workers:2d} d={size:>9,}: {timings[-1].round_s * 1e3:8.2f} ms", flush=True)
        finally:
            stop.set()
            for process in processes:
                process.join(10)
                if process.is_alive():
                    process.kill()
    return timings


# -- gloo ------------------------------------------------------------------------------------------

def _gloo_rank(rank: int, world_size: int, port: int, sizes: tuple[int, ...], rounds: int,
               results: multiprocessing.Queue | None) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    n_workers = world_size - 1
    try:
        for size in sizes:
            model = torch.ones(size, dtype=torch.float64)
            control = torch.zeros(3 + n_workers, dtype=torch.float64)
            buffers = torch.zeros((n_workers, size), dtype=torch.float64) if rank == 0 else None
            reports = torch.zeros((n_workers, REPORT_LENGTH + 1), dtype=torch.float64) if rank == 0 else None
            samples = []
            for repeat in range(rounds + 1):
                if rank == 0:
                    started = time.perf_counter()
                    dist.broadcast(control, src=0)
                    dist.broadcast(model, src=0)
                    pending = [dist.irecv(buffers[w], src=w + 1) for w in range(n_workers)]
                    pending += [dist.irecv(reports[w], src=w + 1) for w in range(n_workers)]
                    for request in pending:
                        request.wait()
                    if repeat:
                        samples.append(time.perf_counter() - started)
                else:
                    dist.broadcast(control, src=0)
                    dist.broadcast(model, src=0)
                    dist.send(model.clone(), dst=0)
                    dist.send(torch.zeros(REPORT_LENGTH + 1, dtype=torch.float64), dst=0)
            if rank == 0:
                results.put((size, statistics.median(samples)))
    finally:
        dist.destroy_process_group()


def measure_torch(worker_counts: tuple[int, ...], sizes: tuple[int, ...], rounds: int) -> list[ExchangeTiming]:
    from edgecloud.transport.broker import free_tcp_port

    context = multiprocessing.get_context("spawn")
    timings: list[ExchangeTiming] = []
    for n_workers in worker_counts:
        port, results = free_tcp_port(), context.Queue()
        processes = [context.Process(target=_gloo_rank, args=(rank, n_workers + 1, port, sizes, rounds,
                                                              results if rank == 0 else None), daemon=True)
                     for rank in range(n_workers + 1)]
        for process in processes:
            process.start()
        try:
            for _ in sizes:
                size, round_s = results.get(timeout=READY_TIMEOUT_S + 60)
                timings.append(ExchangeTiming(n_workers, 8 * size, 8 * size, round_s))
                print(f"torch P={n_workers:2d} d={size:>9,}: {round_s * 1e3:8.2f} ms", flush=True)
        finally:
            for process in processes:
                process.join(30)
                if process.is_alive():
                    process.kill()
    return timings


RUNNERS: dict[str, Callable[[tuple[int, ...], tuple[int, ...], int], list[ExchangeTiming]]] = {
    "mqtt": measure_mqtt, "torch": measure_torch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runners", default="mqtt,torch", help="comma-separated subset of mqtt, torch")
    parser.add_argument("--workers", default="4,8,16", help="comma-separated P values")
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="model sizes (parameters)")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per (P, size), after one warm-up")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "transfer_calibration.json")
    args = parser.parse_args()
    try:
        worker_counts = tuple(int(p) for p in args.workers.split(","))
        sizes = tuple(int(d) for d in args.sizes.split(","))
    except ValueError:
        parser.error("--workers and --sizes take comma-separated integers")
    runners = [name.strip() for name in args.runners.split(",")]
    if not set(runners) <= set(RUNNERS) or args.rounds < 1 or min(worker_counts) < 1 or min(sizes) < 1:
        parser.error(f"--runners takes {', '.join(RUNNERS)}; --rounds, --workers and --sizes must be >= 1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the spawned workers
    load_before = os.getloadavg()[0]
    results: dict[str, dict] = {}
    for runner in runners:
        timings = RUNNERS[runner](worker_counts, sizes, args.rounds)
        relay_bps, message_s = fit_relay(timings)
        fitted = TransferModel(float("inf"), relay_bps, message_s)
        results[runner] = {
            "relay_bps": relay_bps, "message_s": message_s,
            "timings": [{**asdict(t), "modelled_s": fitted.round_s(t.n_workers, t.model_bytes, t.message_bytes)}
                        for t in timings]}
        rate = "none" if relay_bps is None else f"{relay_bps / 1e9:.2f} Gbit/s"
        print(f"{runner}: relay {rate}, {message_s * 1e3:.3f} ms per message; measured/fitted "
              + " ".join(f"{t['round_s'] / t['modelled_s']:.2f}" for t in results[runner]["timings"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": {**vars(args), "out": str(args.out)},
                                    "load_average": (load_before, os.getloadavg()[0]), "runners": results}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
