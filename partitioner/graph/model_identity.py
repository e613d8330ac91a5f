"""Which model a file holds: the SHA-256 a plan records and the splitter and agents check.

A module of its own, without onnx, because the plan file (read by `edgecloud plan --cost-graph`, which
starts without onnx) and the cost graph from a model both need it, and the graph stage sits below both.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a model file's bytes, read in blocks (models can be gigabytes): the identity a plan
    records, so that a plan is never applied to a file that now holds another model."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
