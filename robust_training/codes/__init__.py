"""Draco's gradient codes: the PS recovers the exact sum of all partitions despite s adversarial workers.

`CODES` is the one registry: name -> class, each class declaring its capabilities (see `Code`). The CLI,
the simulator and the property tests all read it, so a new code is offered and tested by registering it.
"""

from __future__ import annotations

from robust_training.codes.base import Code, DecodeResult
from robust_training.codes.cyclic import CyclicCode
from robust_training.codes.repetition import RepetitionCode
from robust_training.errors import TrainingError

CODES: dict[str, type[Code]] = {code.name: code for code in (RepetitionCode, CyclicCode)}
#: What `make_code` accepts: "none" (plain aggregation) and every registered code.
CODE_NAMES: tuple[str, ...] = ("none", *CODES)


def make_code(name: str, n_workers: int, redundancy: int, seed: int = 0) -> Code | None:
    """The code for a CLI name; "none" means plain (uncoded) aggregation and returns None."""
    if name == "none":
        return None
    if name not in CODES:
        raise TrainingError(f"unknown code {name!r}; choose one of {', '.join(CODE_NAMES)}.")
    return CODES[name](n_workers, redundancy, seed=seed)


__all__ = ["CODES", "CODE_NAMES", "Code", "CyclicCode", "DecodeResult", "RepetitionCode", "make_code"]
