"""Checkpoints of a training run: numbered arrays (.npz) and a JSON document, no pickle, written atomically.

A checkpoint directory holds `checkpoint.json` and the one `round-NNNNNN-<sha>.npz` it names. The JSON
is the commit point: the arrays are written first (temporary file, fsync, `os.replace` to a name of
their own content), then the JSON the same way, so a process killed at any instant leaves either the
previous checkpoint or the new one, never a mix. The JSON carries a format tag and version, the round, the run's identity (what
must match to resume: the config, the data, the initial model) and the SHA-256 of the arrays file;
loading checks all of them and reads the arrays with `allow_pickle=False`.

This module knows nothing about training: a runner hands it a `Snapshot` (named float arrays and a
JSON-able state) and gets the same back (robust_training.simulator maps its loop state onto it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from robust_training.errors import TrainingError

logger = logging.getLogger(__name__)

FORMAT = "edgecloud-training-checkpoint"
VERSION = 1
MANIFEST = "checkpoint.json"
MAX_MANIFEST_BYTES = 256 * 2**20  # a round's record is ~300 bytes: this is ~10^6 rounds


@dataclass
class Snapshot:
    """One moment of a run: after `round` rounds, its arrays and its JSON-able state."""

    round: int
    arrays: dict[str, np.ndarray]
    state: dict[str, Any]

    def array(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """The float64 array `name` of exactly `shape`, or a TrainingError naming what is wrong."""
        if name not in self.arrays:
            raise TrainingError(f"the checkpoint lacks the array {name!r}.")
        value = self.arrays[name]
        if value.dtype != np.float64 or value.shape != shape:
            raise TrainingError(f"the checkpoint's array {name!r} is {value.dtype} {value.shape}, "
                                f"expected float64 {shape}.")
        return value


def find_generators(root: object, name: str, depth: int = 4) -> dict[str, np.random.Generator]:
    """Every numpy Generator reachable from `root` through attributes, lists and tuples, by path
    ("aggregator.stages.0._rng"): the state a loop draws from without saying so (bucketing's shuffle)."""
    if isinstance(root, np.random.Generator):
        return {name: root}
    if depth == 0 or isinstance(root, (np.ndarray, str, bytes, int, float)):
        return {}
    children = (enumerate(root) if isinstance(root, (list, tuple))
                else vars(root).items() if hasattr(root, "__dict__") else ())
    found: dict[str, np.random.Generator] = {}
    for key, child in children:
        found.update(find_generators(child, f"{name}.{key}", depth - 1))
    return found


def generator_states(generators: Mapping[str, np.random.Generator]) -> dict[str, dict]:
    """The bit generators' states (plain ints and names: JSON-able)."""
    return {name: generator.bit_generator.state for name, generator in generators.items()}


def restore_generators(generators: Mapping[str, np.random.Generator], states: Mapping[str, Any]) -> None:
    """Put the states of `generator_states` back, refusing a checkpoint whose generators differ."""
    if not isinstance(states, Mapping) or set(states) != set(generators):
        found = sorted(states) if isinstance(states, Mapping) else states
        raise TrainingError(f"the checkpoint's random generators {found} are not this run's {sorted(generators)}.")
    for name, generator in generators.items():
        state = states[name]
        kind = generator.bit_generator.state["bit_generator"]
        if not isinstance(state, Mapping) or state.get("bit_generator") != kind:
            raise TrainingError(f"the checkpoint's generator {name!r} is not a {kind} state.")
        try:
            generator.bit_generator.state = dict(state)
        except (TypeError, ValueError, KeyError) as error:
            raise TrainingError(f"the checkpoint's generator {name!r} has a malformed state ({error}).") from None


def _flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping):
        for key in sorted(value):
            yield from _flatten(value[key], f"{prefix}{key}.")
    else:
        yield prefix.rstrip("."), value


def _identity_difference(saved: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    """The first few fields that differ, as "lr: 0.1 there, 0.2 here"."""
    theirs, ours = dict(_flatten(saved)), dict(_flatten(current))
    keys = sorted(set(theirs) | set(ours))
    differing = [f"{key}: {theirs.get(key, 'absent')!r} there, {ours.get(key, 'absent')!r} here"
                 for key in keys if theirs.get(key) != ours.get(key)]
    return "; ".join(differing[:3]) + ("; ..." if len(differing) > 3 else "")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_durably(directory: Path, name: str, write: Any) -> Path:
    """`write(file)` into a temporary file in `directory`, flushed to disk; the caller renames it."""
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return Path(temporary)


def _rename(temporary: Path, target: Path) -> None:
    try:
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"it holds {name}, which is not JSON")


def _read_manifest(path: Path) -> Any:
    """The parsed manifest, strict JSON of bounded size, or one TrainingError saying what is wrong."""
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_MANIFEST_BYTES + 1)
    except OSError as error:
        raise TrainingError(f"cannot read the checkpoint {path}: {(error.strerror or str(error)).lower()}.") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise TrainingError(f"the checkpoint {path} is larger than {MAX_MANIFEST_BYTES // 2**20} MiB.")
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError:
        raise TrainingError(f"the checkpoint {path} is not UTF-8 text.") from None
    except json.JSONDecodeError as error:
        raise TrainingError(f"the checkpoint {path} is not valid JSON ({error.msg} at line {error.lineno}).") from None
    except RecursionError:
        raise TrainingError(f"the checkpoint {path} nests arrays or objects too deeply.") from None
    except ValueError as error:  # NaN or Infinity, an integer of more than 4,300 digits
        reason = str(error) if "not JSON" in str(error) else "it holds an integer too long to read"
        raise TrainingError(f"the checkpoint {path} is not readable JSON ({reason}).") from None


class Checkpointer:
    """Writes a run's snapshot every `every_rounds` rounds into `directory`; loads the last one to resume.

    `resume` says whether `load` must find a checkpoint (the user asked to resume) or ignore any.
    """

    def __init__(self, directory: Path, every_rounds: int, resume: bool = False) -> None:
        if every_rounds < 1:
            raise TrainingError(f"checkpoints are written every >= 1 rounds, got {every_rounds}.")
        if directory.exists() and not directory.is_dir():
            raise TrainingError(f"the checkpoint directory {directory} is a file.")
        self.directory = directory
        self.every_rounds = every_rounds
        self.resume = resume

    def due(self, round_number: int) -> bool:
        return round_number % self.every_rounds == 0

    def save(self, snapshot: Snapshot, identity: Mapping[str, Any]) -> None:
        """Write `snapshot` as the directory's checkpoint, replacing the previous one atomically."""
        self.directory.mkdir(parents=True, exist_ok=True)
        arrays = _write_durably(self.directory, "arrays", lambda file: np.savez(file, **snapshot.arrays))
        digest = _sha256(arrays)
        # named by content, so it never overwrites the arrays the current manifest names
        arrays_name = f"round-{snapshot.round:06d}-{digest[:16]}.npz"
        _rename(arrays, self.directory / arrays_name)
        manifest = {"format": FORMAT, "version": VERSION, "round": snapshot.round, "identity": dict(identity),
                    "arrays": arrays_name, "arrays_sha256": digest, "state": snapshot.state}
        try:
            text = json.dumps(manifest, indent=1, allow_nan=False).encode()
        except ValueError:
            raise TrainingError(f"cannot checkpoint round {snapshot.round}: its state holds a non-finite "
                                "number, which JSON cannot represent.") from None
        _rename(_write_durably(self.directory, MANIFEST, lambda file: file.write(text)), self.directory / MANIFEST)
        _fsync_directory(self.directory)
        for stale in self.directory.glob("round-*.npz"):  # the previous checkpoint's arrays
            if stale.name != arrays_name:
                stale.unlink(missing_ok=True)
        logger.info("checkpoint of round %d written to %s", snapshot.round, self.directory)

    def load(self, identity: Mapping[str, Any]) -> Snapshot | None:
        """The directory's checkpoint when resuming (None otherwise); refused if another run wrote it."""
        if not self.resume:
            return None
        path = self.directory / MANIFEST
        if not path.is_file():
            raise TrainingError(f"there is no checkpoint to resume in {self.directory} (no {MANIFEST}).")
        manifest = _read_manifest(path)
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise TrainingError(f"{path} is not a training checkpoint (format tag {FORMAT!r} missing).")
        if manifest.get("version") != VERSION:
            raise TrainingError(f"the checkpoint {path} has format version {manifest.get('version')!r}; "
                                f"this program reads version {VERSION}.")
        if manifest.get("identity") != json.loads(json.dumps(dict(identity))):
            raise TrainingError(f"the checkpoint in {self.directory} belongs to a different run "
                                f"({_identity_difference(manifest.get('identity') or {}, identity)}); resume "
                                "with the options, data and model it was written with.")
        round_number, arrays_name, state = manifest.get("round"), manifest.get("arrays"), manifest.get("state")
        if (not isinstance(round_number, int) or round_number < 0 or not isinstance(state, dict)
                or not isinstance(arrays_name, str) or Path(arrays_name).name != arrays_name):
            raise TrainingError(f"the checkpoint {path} is malformed (round, arrays or state).")
        arrays_path = self.directory / arrays_name
        if not arrays_path.is_file() or _sha256(arrays_path) != manifest.get("arrays_sha256"):
            raise TrainingError(f"the checkpoint's arrays {arrays_path} are missing or do not match its SHA-256.")
        try:
            with np.load(arrays_path, allow_pickle=False) as stored:
                arrays = {name: stored[name] for name in stored.files}
        except ValueError as error:  # an object array needs pickle: refused
            raise TrainingError(f"the checkpoint's arrays {arrays_path} cannot be read without pickle ({error}).") \
                from None
        logger.info("resuming from the checkpoint of round %d in %s", round_number, self.directory)
        return Snapshot(round_number, arrays, state)
