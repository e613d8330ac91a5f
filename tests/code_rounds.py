"""Rounds for the code tests: honest messages, deviations of a given kind and size, and the oracle that
decides whether a decode's answer is explained by the messages it kept (the codes' promise)."""

from __future__ import annotations

import numpy as np

from robust_training.codes import Code

#: How adversaries deviate, each scaled by a magnitude: a shared constant (pi times magnitude times the
#: honest scale), their message scaled by 1 +/- magnitude, Gaussian noise, or one coordinate moved.
DEVIATIONS = ("constant", "scaled", "random", "coordinate")
EPS = float(np.finfo(np.float64).eps)


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
    """The promise beyond the correctable sets: the flagged set is one the code could correct, the
    unflagged messages are, within rtol of the honest scale plus float64 rounding of themselves, the
    encoding of some partition updates, and `total` is those updates' sum."""
    assert code.correctable(flagged), f"flagged {flagged} is more than the code corrects"
    kept = np.setdiff1d(np.arange(code.n_workers), flagged)
    weights = code.encoding_matrix[kept]
    updates, *_ = np.linalg.lstsq(weights, received[kept], rcond=None)
    residual = np.linalg.norm(weights @ updates - received[kept])
    allowance = 100 * code.rtol * np.linalg.norm(honest) + 32 * EPS * np.linalg.norm(received[kept])
    assert residual <= allowance, f"kept rows off the code by {residual:.3g} > {allowance:.3g}"
    explained = updates.sum(axis=0)
    assert np.linalg.norm(total - explained) <= 1e4 * allowance + 1e-9 * np.linalg.norm(explained)
