"""Parsing of user-facing quantities with units: bandwidths in bit/s, durations, byte sizes.

The CLI accepts `20Mbit`, `10ms`, `512MiB`; every parser raises one PartitionerError sentence naming the
bad text, so a typo ends in `error: ...` and exit code 2 instead of a traceback.
"""

from __future__ import annotations

import re

from partitioner.errors import PartitionerError

_NUMBER_AND_UNIT = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-z/]*)\s*$")

BITS_PER_SECOND = {
    "": 1.0, "bit": 1.0, "bps": 1.0, "bit/s": 1.0,
    "kbit": 1e3, "kbps": 1e3, "kbit/s": 1e3,
    "mbit": 1e6, "mbps": 1e6, "mbit/s": 1e6,
    "gbit": 1e9, "gbps": 1e9, "gbit/s": 1e9,
}
SECONDS = {"": 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
BYTES = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}


def _parse(text: str, units: dict[str, float], what: str, examples: str) -> float:
    match = _NUMBER_AND_UNIT.match(str(text))
    if match is None or match.group(2).lower() not in units:
        raise PartitionerError(f"{what} {text!r} is not a number with a unit (examples: {examples}).")
    return float(match.group(1)) * units[match.group(2).lower()]


def parse_bandwidth_bps(text: str) -> float:
    """`20Mbit` -> 2e7 bits per second; must be positive."""
    value = _parse(text, BITS_PER_SECOND, "bandwidth", "20Mbit, 500kbit, 1Gbit")
    if value <= 0:
        raise PartitionerError(f"bandwidth {text!r} must be positive.")
    return value


def parse_duration_s(text: str) -> float:
    """`10ms` -> 0.01 seconds."""
    return _parse(text, SECONDS, "duration", "10ms, 0.5s, 200us")


def parse_size_bytes(text: str) -> int:
    """`512MiB` -> 536870912 bytes (decimal KB/MB/GB, binary KiB/MiB/GiB)."""
    return int(_parse(text, BYTES, "size", "512MB, 2GiB, 100000B"))


def parse_bandwidth_range_bps(text: str) -> tuple[float, float]:
    """`1Mbit..1Gbit` -> (1e6, 1e9): the span a sweep covers."""
    low, sep, high = str(text).partition("..")
    if not sep:
        raise PartitionerError(f"bandwidth range {text!r} must look like 1Mbit..1Gbit.")
    low_bps, high_bps = parse_bandwidth_bps(low), parse_bandwidth_bps(high)
    if high_bps <= low_bps:
        raise PartitionerError(f"bandwidth range {text!r} must go from low to high.")
    return low_bps, high_bps
