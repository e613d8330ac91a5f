"""Reading and writing the project's JSON files: every way a file can be wrong, reported in one place.

Plans, split manifests, cost graphs, profiles, predictors and device profiles are all JSON that users
hand to the CLI. Each loader used to catch its own subset of what can go wrong (one missed non-UTF-8
bytes, one a 5,000-digit integer, all of them a file nested 100,000 brackets deep), and each gap was a
traceback. `read_json_file` is the one reader: it checks the size before reading, the encoding, the
syntax (strict: no NaN or Infinity), the nesting, and the format tag of versioned files, and raises the
caller's own exception type with one sentence naming the file and what is wrong. `dumps_strict` and
`write_json_file` are the writers: never `Infinity` or `NaN`, which no other JSON parser accepts.

This module is in `devices`, the leaf package, so that `partitioner` and `edgecloud` can use it too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from devices.errors import DeviceError

# The largest JSON file we read. A cost graph of 2,000 nodes is ~1 MB, the largest plan of the bundled
# models ~0.3 MB; 64 MiB leaves room for models 50x larger and still refuses /dev/zero or a disk image.
MAX_JSON_BYTES = 64 * 2**20

# Files users confuse with ours, by suffix: named in the error instead of "not UTF-8 at byte 3".
_OTHER_KINDS = {".onnx": "an ONNX model", ".npy": "a numpy array", ".npz": "a numpy archive",
                ".png": "a PNG image", ".pt": "a torch checkpoint", ".pth": "a torch checkpoint"}


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"it holds {name}, which is not JSON")


def _parse(raw: bytes) -> Any:
    """Strict JSON from bytes; raises UnicodeDecodeError, JSONDecodeError, ValueError or RecursionError."""
    return json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)


def read_json_file(path: str | Path, what: str, *, expected_format: str | None = None,
                   error: type[Exception] = DeviceError, max_bytes: int = MAX_JSON_BYTES,
                   wrong_kind_hint: str = "") -> Any:
    """The parsed content of the `what` file at `path` (e.g. what="plan"), or `error` with one sentence.

    With `expected_format`, the content must be an object whose "format" is that tag: a file of another
    kind (a profile given as a plan, a model given as a plan) is named as such, followed by
    `wrong_kind_hint` (e.g. how to make the right file from it).
    """
    path = Path(path)
    label = f"{what} file {path}"
    other_kind = _OTHER_KINDS.get(path.suffix.lower())
    if path.is_dir():
        raise error(f"{label} is a directory, not a JSON file.")
    try:
        with path.open("rb") as file:  # the size is checked on what is read: /proc and pipes report 0
            raw = file.read(max_bytes + 1)
    except FileNotFoundError:
        raise error(f"{label} does not exist.") from None
    except PermissionError:
        raise error(f"cannot read {label}: permission denied.") from None
    except OSError as failure:
        raise error(f"cannot read {label}: {(failure.strerror or str(failure)).lower()}.") from None
    if len(raw) > max_bytes:
        raise error(f"{label} is larger than {max_bytes / 2**20:g} MiB; it cannot be a {what} file.")
    if not raw.strip():
        raise error(f"{label} is empty.")
    try:
        data = _parse(raw)
    except UnicodeDecodeError as failure:
        if other_kind:
            raise error(f"{label} is {other_kind}, not a JSON {what} file{wrong_kind_hint}.") from None
        raise error(f"{label} is not UTF-8 text (byte {raw[failure.start]:#04x} at offset {failure.start}); "
                    f"it is not a JSON {what} file.") from None
    except json.JSONDecodeError as failure:
        if other_kind:
            raise error(f"{label} is {other_kind}, not a JSON {what} file{wrong_kind_hint}.") from None
        raise error(f"{label} is not valid JSON ({failure.msg} at line {failure.lineno}, "
                    f"column {failure.colno}).") from None
    except RecursionError:
        raise error(f"{label} nests arrays or objects too deeply to be a {what} file.") from None
    except ValueError as failure:  # an integer of more than 4,300 digits, NaN, Infinity
        reason = str(failure) if "not JSON" in str(failure) else "it holds an integer too long to read"
        raise error(f"{label} is not readable JSON ({reason}).") from None
    if expected_format is not None:
        found = data.get("format") if isinstance(data, dict) else None
        if found != expected_format:
            seen = f"its format is {found!r}" if found is not None else "it has no \"format\" tag"
            raise error(f"{label} is not an edgecloud {what} (expected \"format\": \"{expected_format}\"; "
                        f"{seen}){wrong_kind_hint}.")
    return data


def dumps_strict(data: Any, what: str, *, error: type[Exception] = DeviceError, indent: int | None = None) -> str:
    """`data` as standard JSON; a NaN or infinity in it is `error` naming `what`, never `Infinity`."""
    try:
        return json.dumps(data, indent=indent, allow_nan=False)
    except ValueError:
        raise error(f"the {what} holds a non-finite number (NaN or infinity), which JSON cannot represent.") from None


def write_json_file(path: str | Path, data: Any, what: str, *, error: type[Exception] = DeviceError,
                    indent: int | None = 1) -> None:
    """Write `data` as strict JSON to the `what` file at `path`; any failure is `error` with one sentence."""
    path = Path(path)
    text = dumps_strict(data, f"{what} file {path}", error=error, indent=indent)
    try:
        path.write_text(text + "\n")
    except OSError as failure:
        raise error(f"cannot write {what} file {path}: {(failure.strerror or str(failure)).lower()}.") from None
