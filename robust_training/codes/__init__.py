"""Draco's gradient codes: the PS recovers the exact sum of all partitions despite s adversarial workers."""

from __future__ import annotations

from robust_training.codes.base import Code, DecodeResult
from robust_training.codes.cyclic import CyclicCode
from robust_training.codes.repetition import RepetitionCode
from robust_training.errors import TrainingError

CODE_NAMES: tuple[str, ...] = ("none", "repetition", "cyclic")


def make_code(name: str, n_workers: int, redundancy: int, seed: int = 0) -> Code | None:
    """The code for a CLI name; "none" means plain (uncoded) aggregation and returns None."""
    if name == "none":
        return None
    if name == "repetition":
        return RepetitionCode(n_workers, redundancy, seed=seed)
    if name == "cyclic":
        return CyclicCode(n_workers, redundancy, seed=seed)
    raise TrainingError(f"unknown code {name!r}; choose one of {', '.join(CODE_NAMES)}.")


__all__ = ["CODE_NAMES", "Code", "CyclicCode", "DecodeResult", "RepetitionCode", "make_code"]
