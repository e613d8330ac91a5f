"""Adaptive sync period (Wang et al., "When Edge Meets Learning", INFOCOM 2018).

After each round the nodes report how their loss and gradient changed between the last global model
w and their previous final local model w_n; from that the server estimates
  beta  (smoothness)  = sum_n |D_n|/|D| ||grad F_n(w_n) - grad F_n(w)|| / ||w_n - w||
  rho   (Lipschitz)   = sum_n |D_n|/|D| |F_n(w_n) - F_n(w)| / ||w_n - w||
  delta (divergence)  = sum_n |D_n|/|D| ||grad F_n(w) - grad F(w)||
and picks the tau minimising the paper's convergence bound under a time budget R, with c the time of
a local step and b the time of a sync: T(tau) = R tau / (c tau + b) local steps fit in the budget and
  h(tau)   = delta/beta ((eta beta + 1)^tau - 1) - eta delta tau
  G(tau)   = (1 + sqrt(1 + 4 T^2 phi rho eta h / tau)) / (2 T eta phi) + rho h.
Large divergence (non-IID data) pushes tau down; expensive syncs push it up. Estimates are smoothed
by a moving average because a single round's ratios are noisy.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from robust_training.dgd import PartitionUpdates, size_weights
from robust_training.errors import TrainingError

logger = logging.getLogger(__name__)

_PREVIOUS = ("models", "grads", "losses")  # what `observe` keeps of the last round


@dataclass(frozen=True)
class TauEstimates:
    """What the controller believed after one round, and the tau it chose."""

    beta: float
    rho: float
    delta: float
    tau: int


def bound_gap(tau: int, beta: float, rho: float, delta: float, lr: float, phi: float,
              budget_s: float, step_s: float, sync_s: float) -> float:
    """G(tau): the bound on F(w_final) - F(w*) for the local-step count the budget allows at this tau."""
    h = max(0.0, delta / beta * ((lr * beta + 1.0) ** tau - 1.0) - lr * delta * tau)
    steps = budget_s * tau / (step_s * tau + sync_s)
    root = math.sqrt(max(0.0, 1.0 + 4.0 * steps**2 * phi * rho * lr * h / tau))
    return (1.0 + root) / (2.0 * steps * lr * phi) + rho * h


class AdaptiveTau:
    """Chooses the next sync period from the nodes' reports (Wang et al.'s control algorithm)."""

    def __init__(self, initial_tau: int, tau_max: int = 100, phi: float = 0.025, holding: float = 0.5) -> None:
        if initial_tau < 1 or tau_max < initial_tau:
            raise TrainingError(f"adaptive tau needs 1 <= initial tau <= tau_max, got {initial_tau} and {tau_max}.")
        self.tau = initial_tau
        self.tau_max = tau_max
        self.phi = phi
        self.holding = holding
        self._smoothed: dict[str, float] = {}
        self._previous: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # local models, grads, losses
        self.log: list[TauEstimates] = []

    def _smooth(self, name: str, value: float) -> float:
        previous = self._smoothed.get(name)
        self._smoothed[name] = value if previous is None else self.holding * previous + (1 - self.holding) * value
        return self._smoothed[name]

    def observe(self, global_params: np.ndarray, updates: PartitionUpdates, sizes: Sequence[int],
                lr: float, budget_s: float, step_s: float, sync_s: float) -> int:
        """Take one round's probed updates (started from `global_params`) and return the next tau.

        The first round only records: beta and rho need the previous round's final local models.
        """
        if updates.start_grads is None or updates.end_grads is None or updates.end_losses is None:
            raise TrainingError("adaptive tau needs probed updates (local_updates(..., probe=True)).")
        weights = size_weights(sizes)
        if self._previous is not None:
            last_models, last_grads, last_losses = self._previous
            distances = np.linalg.norm(last_models - global_params, axis=1)
            moved = distances > 1e-12
            safe = np.where(moved, distances, 1.0)
            betas = np.where(moved, np.linalg.norm(last_grads - updates.start_grads, axis=1) / safe, 0.0)
            rhos = np.where(moved, np.abs(last_losses - updates.start_losses) / safe, 0.0)
            global_grad = weights @ updates.start_grads
            divergence = np.linalg.norm(updates.start_grads - global_grad, axis=1)
            beta = self._smooth("beta", max(float(weights @ betas), 1e-5))
            rho = self._smooth("rho", float(weights @ rhos))
            delta = self._smooth("delta", float(weights @ divergence))
            self.tau = min(range(1, self.tau_max + 1),
                           key=lambda t: bound_gap(t, beta, rho, delta, lr, self.phi, budget_s, step_s, sync_s))
            self.log.append(TauEstimates(beta, rho, delta, self.tau))
            logger.info("adaptive tau: beta %.4g rho %.4g delta %.4g -> tau %d", beta, rho, delta, self.tau)
        self._previous = (global_params + updates.deltas, updates.end_grads, updates.end_losses)
        return self.tau

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """What a checkpoint keeps so that a resumed run chooses the taus an uninterrupted one would:
        the previous round's local models, gradients and losses as arrays, the rest as JSON."""
        arrays = {} if self._previous is None else dict(zip(_PREVIOUS, self._previous))
        return arrays, {"tau": self.tau, "smoothed": dict(self._smoothed), "log": [asdict(e) for e in self.log]}

    def restore(self, arrays: dict[str, np.ndarray], state: dict[str, Any]) -> None:
        """Undo `state()`: `arrays` holds all of `_PREVIOUS` or none (before the first round)."""
        try:
            self.tau = int(state["tau"])
            self._smoothed = {str(name): float(value) for name, value in state["smoothed"].items()}
            self.log = [TauEstimates(**entry) for entry in state["log"]]
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise TrainingError(f"the checkpoint's adaptive-tau state is malformed ({error}).") from None
        self._previous = tuple(arrays[name] for name in _PREVIOUS) if arrays else None  # type: ignore[assignment]
