"""Parsing of user-facing quantities with units: bandwidths in bit/s, durations, byte sizes.

The CLI accepts `20Mbit`, `10ms`, `512MiB`; every parser raises one PartitionerError sentence naming the
bad text, so a typo ends in `error: ...` and exit code 2 instead of a traceback. The unit is required:
a bare `--bandwidth 10` once meant 10 bit/s without a word. Values must be finite and within a range
no real link, deadline or memory exceeds: `1e400bit` (infinity) once became `Infinity` in a plan file,
`1e300s` overflowed the min-cut's integer capacities and `1e400B` was a traceback.
"""

from __future__ import annotations

import math
import re

from partitioner.errors import PartitionerError

_NUMBER_AND_UNIT = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-zµ/]*)\s*$")

BITS_PER_SECOND = {
    "bit": 1.0, "bps": 1.0, "bit/s": 1.0,
    "kbit": 1e3, "kbps": 1e3, "kbit/s": 1e3,
    "mbit": 1e6, "mbps": 1e6, "mbit/s": 1e6,
    "gbit": 1e9, "gbps": 1e9, "gbit/s": 1e9,
}
SECONDS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
BYTES = {
    "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}

# Upper bounds: 1 Pbit/s is 1,000 times the fastest Ethernet; a day is longer than any deadline or
# latency worth planning for (and far below threading's timeout limit); 1 EiB is more memory than any device.
MAX_BANDWIDTH_BPS = 1e15
MAX_DURATION_S = 86_400.0
MAX_SIZE_BYTES = 2**60

BANDWIDTH_EXAMPLES = "20Mbit, 500kbit, 1Gbit"
DURATION_EXAMPLES = "10ms, 0.5s, 200us"
SIZE_EXAMPLES = "512MB, 2GiB, 100000B"


def _parse(text: str, units: dict[str, float], what: str, examples: str, maximum: float, limit: str) -> float:
    match = _NUMBER_AND_UNIT.match(str(text))
    if match is None:
        raise PartitionerError(f"{what} {text!r} is not a number with a unit (examples: {examples}).")
    if match.group(2).lower() not in units:
        if not match.group(2):
            raise PartitionerError(f"{what} {text!r} has no unit; write it with one (examples: {examples}).")
        raise PartitionerError(f"{what} {text!r} has an unknown unit {match.group(2)!r} (examples: {examples}).")
    value = float(match.group(1)) * units[match.group(2).lower()]
    if not math.isfinite(value) or value > maximum:
        raise PartitionerError(f"{what} {text!r} is out of range: at most {limit}.")
    return value


def parse_bandwidth_bps(text: str) -> float:
    """`20Mbit` -> 2e7 bits per second; must be positive and at most 1 Pbit/s."""
    value = _parse(text, BITS_PER_SECOND, "bandwidth", BANDWIDTH_EXAMPLES, MAX_BANDWIDTH_BPS, "1000000Gbit")
    if value <= 0:
        raise PartitionerError(f"bandwidth {text!r} must be positive.")
    return value


def parse_duration_s(text: str) -> float:
    """`10ms` -> 0.01 seconds; at most one day."""
    return _parse(text, SECONDS, "duration", DURATION_EXAMPLES, MAX_DURATION_S, "86400s (one day)")


def parse_size_bytes(text: str) -> int:
    """`512MiB` -> 536870912 bytes (decimal KB/MB/GB, binary KiB/MiB/GiB); at most 1 EiB."""
    return int(_parse(text, BYTES, "size", SIZE_EXAMPLES, MAX_SIZE_BYTES, "1048576TiB (1 EiB)"))


def parse_bandwidth_range_bps(text: str) -> tuple[float, float]:
    """`1Mbit..1Gbit` -> (1e6, 1e9): the span a sweep covers."""
    low, sep, high = str(text).partition("..")
    if not sep:
        raise PartitionerError(f"bandwidth range {text!r} must look like 1Mbit..1Gbit.")
    low_bps, high_bps = parse_bandwidth_bps(low), parse_bandwidth_bps(high)
    if high_bps <= low_bps:
        raise PartitionerError(f"bandwidth range {text!r} must go from low to high.")
    return low_bps, high_bps
