"""Distributed gradient descent (the lecture's DGD): tau local steps, then a size-weighted average.

Node n holds D_n; from the last global model w it runs tau steps of GD (full local gradient) or
mini-batch SGD, and the new global model is sum_n |D_n|/|D| w_n. With tau = 1 and full gradients this
is centralized GD step for step (Theorem 2; tests/test_dgd.py). Mini-batches are drawn from a
generator seeded by (seed, round, node), so any replica of a node computes exactly the same update:
this is what lets Draco's codes compare and decode replicas (robust_training.simulator).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from robust_training.data import Dataset
from robust_training.errors import TrainingError
from robust_training.losses import Objective

logger = logging.getLogger(__name__)


@dataclass
class LocalUpdate:
    """One node's (or partition's) work over a sync period, plus what adaptive tau needs to see."""

    delta: np.ndarray          # w_local(after tau steps) - w_global
    start_loss: float          # loss of the first step's batch at the global model
    start_grad: np.ndarray     # gradient of the first step's batch at the global model
    end_loss: float | None = None       # full local loss at the final local model (only when probed)
    end_grad: np.ndarray | None = None  # full local gradient at the final local model (only when probed)


def batch_rng(seed: int, round_index: int, partition: int) -> np.random.Generator:
    """The mini-batch generator of one partition in one round: the same on every replica."""
    return np.random.default_rng(np.random.SeedSequence([seed, round_index, partition]))


def check_step_settings(lr: float, tau: int, batch_size: int | None) -> None:
    if not 0 < lr < float("inf"):  # NaN and inf too: they once ran to "diverged" with exit 0
        raise TrainingError(f"the learning rate must be a positive finite number, got {lr}.")
    if tau < 1:
        raise TrainingError(f"tau (local steps between syncs) must be at least 1, got {tau}.")
    if batch_size is not None and batch_size < 1:
        raise TrainingError(f"the batch size must be at least 1, got {batch_size}.")


def _draw_batch(data: Dataset, batch_size: int | None, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One step's batch: the whole local data, or batch_size rows drawn without replacement."""
    if batch_size is None or batch_size >= len(data):
        return data.features, data.labels
    rows = rng.choice(len(data), size=batch_size, replace=False)
    return data.features[rows], data.labels[rows]


def local_update(objective: Objective, global_params: np.ndarray, data: Dataset, lr: float, tau: int,
                 batch_size: int | None, rng: np.random.Generator, probe_end: bool = False) -> LocalUpdate:
    """tau GD steps (batch_size None) or SGD steps on mini-batches drawn without replacement per step."""
    params = global_params.copy()
    start_loss = 0.0
    start_grad = np.zeros_like(params)
    for step in range(tau):
        features, labels = _draw_batch(data, batch_size, rng)
        loss, grad = objective.loss_and_grad(params, features, labels)
        if step == 0:
            start_loss, start_grad = loss, grad
        params -= lr * grad
    update = LocalUpdate(delta=params - global_params, start_loss=start_loss, start_grad=start_grad)
    if probe_end:
        update.end_loss, update.end_grad = objective.loss_and_grad(params, data.features, data.labels)
    return update


@dataclass
class PartitionUpdates:
    """Every partition's work over one sync period, stacked: row p belongs to partition p.

    The gradients are kept only when probed (adaptive tau needs them): at 45 partitions of a 1M-
    parameter net each (P, d) float64 stack is 360 MB, and every extra one costs real time.
    """

    deltas: np.ndarray                      # (P, d)
    start_losses: np.ndarray                # (P,)
    start_grads: np.ndarray | None = None   # (P, d), probed only
    end_losses: np.ndarray | None = None    # (P,), probed only
    end_grads: np.ndarray | None = None     # (P, d), probed only


def local_updates(objective: Objective, global_params: np.ndarray, partitions: Sequence[Dataset], lr: float,
                  tau: int, batch_size: int | None, rngs: Sequence[np.random.Generator],
                  probe: bool = False) -> PartitionUpdates:
    """`local_update` of every partition, in one vectorised pass per step when the objective offers
    `loss_and_grad_batched` and every step's batches have the same size; else one partition at a time.

    Both paths draw the same batches from the same generators, so they train the same model (up to
    the rounding of batched vs single matrix products). The vectorised path updates in place: fresh
    (P, d) arrays cost more than the arithmetic at this size.
    """
    batched = getattr(objective, "loss_and_grad_batched", None)
    batch_sizes = {len(p) if batch_size is None else min(batch_size, len(p)) for p in partitions}
    if batched is None or probe or len(batch_sizes) > 1:
        singles = [local_update(objective, global_params, p, lr, tau, batch_size, rng, probe)
                   for p, rng in zip(partitions, rngs)]
        updates = PartitionUpdates(np.stack([u.delta for u in singles]), np.array([u.start_loss for u in singles]))
        if probe:
            updates.start_grads = np.stack([u.start_grad for u in singles])
            updates.end_losses = np.array([u.end_loss for u in singles])
            updates.end_grads = np.stack([u.end_grad for u in singles])
        return updates
    deltas: np.ndarray | None = None
    for step in range(tau):
        batches = [_draw_batch(p, batch_size, rng) for p, rng in zip(partitions, rngs)]
        at = global_params if deltas is None else global_params + deltas
        losses, grads = batched(at, np.stack([f for f, _ in batches]), np.stack([y for _, y in batches]))
        grads *= -lr
        if deltas is None:
            start_losses, deltas = losses, grads
        else:
            deltas += grads
    return PartitionUpdates(deltas, start_losses)


def size_weights(sizes: Sequence[int]) -> np.ndarray:
    """|D_n| / |D|: the weight of each node's model in the synchronisation."""
    sizes_array = np.asarray(sizes, dtype=np.float64)
    return sizes_array / sizes_array.sum()


def synchronize(global_params: np.ndarray, deltas: np.ndarray, sizes: Sequence[int]) -> np.ndarray:
    """sum_n |D_n|/|D| w_n, written as w + sum_n |D_n|/|D| (w_n - w)."""
    return global_params + size_weights(sizes) @ deltas


@dataclass
class DGDHistory:
    """The global model after every round (index 0 is the start) and the global training loss."""

    params: list[np.ndarray]
    train_loss: list[float]


def train_centralized(objective: Objective, params0: np.ndarray, data: Dataset, lr: float, steps: int,
                      batch_size: int | None = None, seed: int = 0) -> DGDHistory:
    """GD (or seeded mini-batch SGD) on all the data in one place: the reference DGD is measured against."""
    check_step_settings(lr, 1, batch_size)
    params = params0.astype(np.float64).copy()
    history = DGDHistory([params.copy()], [objective.loss(params, data.features, data.labels)])
    for step in range(steps):
        params = params + local_update(objective, params, data, lr, 1, batch_size, batch_rng(seed, step, 0)).delta
        history.params.append(params.copy())
        history.train_loss.append(objective.loss(params, data.features, data.labels))
    return history


def train_distributed(objective: Objective, params0: np.ndarray, nodes: Sequence[Dataset], lr: float, tau: int,
                      rounds: int, batch_size: int | None = None, seed: int = 0) -> DGDHistory:
    """Plain DGD with no adversaries: every node tau local steps, then the size-weighted average."""
    check_step_settings(lr, tau, batch_size)
    params = params0.astype(np.float64).copy()
    sizes = [len(node) for node in nodes]
    everything = _concatenate(nodes)
    history = DGDHistory([params.copy()], [objective.loss(params, everything.features, everything.labels)])
    for round_index in range(rounds):
        deltas = np.stack([
            local_update(objective, params, node, lr, tau, batch_size, batch_rng(seed, round_index, n)).delta
            for n, node in enumerate(nodes)
        ])
        params = synchronize(params, deltas, sizes)
        history.params.append(params.copy())
        history.train_loss.append(objective.loss(params, everything.features, everything.labels))
        logger.debug("DGD round %d: train loss %.6g", round_index, history.train_loss[-1])
    return history


def _concatenate(nodes: Sequence[Dataset]) -> Dataset:
    if not nodes:
        raise TrainingError("DGD needs at least one node.")
    return Dataset(np.concatenate([n.features for n in nodes]), np.concatenate([n.labels for n in nodes]),
                   nodes[0].n_classes, nodes[0].image_shape)
