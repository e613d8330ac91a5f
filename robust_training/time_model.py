"""The transfer term of the simulator's round time: per-worker links, a relay every message crosses, and a
fixed cost per message.

Why three terms. The first model charged only (model + message) bytes over each worker's own link, the
links in parallel. Measured over real processes (bench/training_runners.py) that missed two costs that
do not shrink with the links' speed:
- a **relay**: every message of a round passes one serial point. Over MQTT it is the broker: the PS
  publishes the model to each of the P workers' inboxes and each worker's update goes worker -> broker
  -> PS, so the broker copies and forwards P (model + message) bytes a round, one after another, and
  the PS's client (de)serialises the same bytes in one process. Without a broker the PS's own endpoint
  is that point (its network interface; on one host rank 0's loopback sends and receives under gloo).
  Charged as P (model + message) bytes at `relay_bps`, a rate measured on the host it runs on (so the
  relay's share of shared cores is in it: bench/transfer_calibration.py).
- a **fixed cost per message**: a publish and a delivery (MQTT) or a send and a receive (gloo) cost
  a few hundred microseconds to milliseconds whatever their size; the PS handles its 2P messages of a
  round one after another. Charged as 2 P `message_s`. It decides small models' rounds (logistic
  regression, 63 kB messages: 3-6x the link-only model at tau = 1).

    transfer_s = (model_bytes + message_bytes) * 8 / bandwidth_bps         (parallel per-worker links)
               + P * (model_bytes + message_bytes) * 8 / relay_bps          (the serial relay; 0 without)
               + 2 * P * message_s                                          (fixed per-message cost)

`bandwidth_bps = inf` drops the link term (one host: loopback, whose cost is the relay's). The terms are
added, not overlapped: a worker that finishes early uploads while others still compute, so at large tau
the runners hide part of the transfer and the model is an upper bound there.
"""

from __future__ import annotations

import math

import numpy as np
from dataclasses import dataclass


@dataclass(frozen=True)
class TransferModel:
    """How a round's messages are charged; the defaults are the link-only model (no relay, no fixed cost)."""

    bandwidth_bps: float = 1e9       # each worker's own link to the PS (inf: none, e.g. loopback)
    relay_bps: float | None = None   # the serial point every message crosses (a broker); None: none
    message_s: float = 0.0           # fixed cost of one message at the PS

    def problem(self) -> str | None:
        """Why these parameters cannot model a transfer, in one sentence, or None."""
        if not self.bandwidth_bps > 0:
            return f"the bandwidth must be positive, got {self.bandwidth_bps} bit/s."
        if self.relay_bps is not None and not (self.relay_bps > 0 and math.isfinite(self.relay_bps)):
            return f"the relay rate must be positive and finite, got {self.relay_bps} bit/s."
        if not (self.message_s >= 0 and math.isfinite(self.message_s)):
            return f"the cost per message must be a finite number of seconds >= 0, got {self.message_s}."
        return None

    def round_s(self, n_workers: int, model_bytes: int, message_bytes: int) -> float:
        """One round's transfer time: the model to each of `n_workers` and one message back from each."""
        exchange_bits = (model_bytes + message_bytes) * 8
        link_s = exchange_bits / self.bandwidth_bps
        relay_s = 0.0 if self.relay_bps is None else n_workers * exchange_bits / self.relay_bps
        return link_s + relay_s + 2 * n_workers * self.message_s


@dataclass(frozen=True)
class ExchangeTiming:
    """One measured round of pure transfer: P exchanges of a model and a message, no compute."""

    n_workers: int
    model_bytes: int
    message_bytes: int
    round_s: float


def fit_relay(timings: list[ExchangeTiming]) -> tuple[float | None, float]:
    """(relay_bps, message_s) that fit measured exchange rounds best in relative error, both >= 0
    (non-negative least squares on round_s = P (model + message) 8 / relay_bps + 2 P message_s, each
    row divided by its measured time so that the small rounds weigh as much as the large ones).
    relay_bps is None when the bytes explain nothing (a per-byte cost fitted as 0)."""
    from scipy.optimize import nnls

    if len(timings) < 2:
        raise ValueError(f"fitting two parameters needs at least two timings, got {len(timings)}")
    rows = np.array([[t.n_workers * (t.model_bytes + t.message_bytes) * 8, 2 * t.n_workers] for t in timings],
                    dtype=np.float64)
    measured = np.array([t.round_s for t in timings])
    if not (np.all(measured > 0) and np.all(np.isfinite(measured))):
        raise ValueError("every measured round time must be positive and finite")
    scale = rows.max(axis=0)  # seconds per bit and per message differ by ~1e9: fit in unit columns
    (per_bit, message_s), _ = nnls(rows / scale / measured[:, None], np.ones(len(timings)))
    per_bit /= scale[0]
    return (None if per_bit == 0 else 1.0 / per_bit), float(message_s / scale[1])
