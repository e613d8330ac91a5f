"""Bounds of the commands' numeric options, shared so that every command refuses the same way.

Why: an unbounded `int` option let `--seed -1` or a 24-digit seed reach numpy and torch, which answer
with a traceback, and click's own `FloatRange` lets `nan` through (every comparison with NaN is false),
so `--lr nan`, `--alpha nan` and `--time-limit inf` were accepted. Each numeric option of the CLI is an
`IntRange` with both ends or a `finite_float` (tests/test_cli_bad_inputs.py checks every command).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import typer

SEED_MAX = 2**32 - 1  # numpy's legacy generators and torch both take any seed in [0, 2**32)
COUNT_MAX = 1_000_000  # workers, rounds, requests, repeats: far beyond what one machine runs
THREADS_MAX = 1024

SEED_BOUNDS = {"min": 0, "max": SEED_MAX}


def finite_float(low: float, high: float, *, low_open: bool = False) -> Callable[[str], float]:
    """A typer `parser` for a float in [low, high] (or (low, high] with `low_open`): NaN and inf refused."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"

    def parse(text: str | float) -> float:
        try:
            value = float(text)
        except ValueError:
            raise typer.BadParameter(f"{text!r} is not a number.") from None
        if not math.isfinite(value) or not low <= value <= high or (low_open and value == low):
            raise typer.BadParameter(f"{text} is not a finite number in {interval}.")
        return value

    parse.bounds = (low, high)  # type: ignore[attr-defined]  # marks a bounded parser for the tests
    return parse
