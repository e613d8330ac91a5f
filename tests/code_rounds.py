"""Rounds for the code tests: honest messages, deviations of a given kind and size, and the oracle that
decides whether a decode's answer is explained by the messages it kept (the codes' promise)."""

from __future__ import annotations

import numpy as np

from robust_training.codes import Code
from robust_training.codes.promise import unexplained

#: How adversaries deviate, each scaled by a magnitude: a shared constant (pi times magnitude times the
#: honest scale), their message scaled by 1 +/- magnitude, Gaussian noise, or one coordinate moved.
DEVIATIONS = ("constant", "scaled", "random", "coordinate")


def honest_round(code: Code, d: int, seed: int, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(partition updates, honest messages) for one round."""
    updates = scale * np.random.default_rng(seed).standard_normal((code.n_partitions, d))
    return updates, code.encode_all(updates)


def deviate(messages: np.ndarray, adversaries: list[int], kind: str, magnitude: float,
            rng: np.random.Generator) -> np.ndarray:
    """A copy of `messages` whose adversaries' rows deviate as `kind` says, by `magnitude`."""
    forged = messages.copy()
    scale = float(np.abs(messages).max()) or 1.0
    shared_sign = rng.choice([-1.0, 1.0])
    for row in adversaries:
        sign = rng.choice([-1.0, 1.0])
        if kind == "constant":
            forged[row] = shared_sign * np.pi * magnitude * scale  # pi: never an honest value by chance
        elif kind == "scaled":
            forged[row] = messages[row] * (1.0 + sign * magnitude)
        elif kind == "random":
            forged[row] = messages[row] + magnitude * scale * rng.standard_normal(messages.shape[1])
        else:
            forged[row, rng.integers(messages.shape[1])] += sign * magnitude * scale
    return forged


def relative_error(total: np.ndarray, truth: np.ndarray) -> float:
    return float(np.linalg.norm(total - truth) / np.linalg.norm(truth))


def assert_explained(code: Code, received: np.ndarray, flagged: list[int], total: np.ndarray,
                     honest: np.ndarray) -> None:
    """The promise beyond the correctable sets (`robust_training.codes.promise`)."""
    reason = unexplained(code, received, flagged, total, honest)
    assert reason is None, reason
