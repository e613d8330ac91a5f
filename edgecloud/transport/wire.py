"""The edgecloud wire format: a fixed prefix, a JSON header, then raw little-endian tensor bytes.

API (stable; used by the agents and the client):

    from edgecloud.transport.wire import Message, WireLimits, encode, decode
    message = Message(kind="activation", request_id="r1", sender="edge",
                      tensors={"x": np.ones((1, 3), np.float32)},
                      reply_to="edgecloud/demo/client/in", deadline=time.time() + 5.0,
                      meta={"stage": 1})
    payload: bytes = encode(message)              # validates against DEFAULT_LIMITS too
    received: Message = decode(payload)           # raises WireFormatError on any violation

`decode` returns tensors as numpy views into `payload` (no copy; read-only when the payload is
`bytes`, as MQTT delivers it); copy them if you need to write or want the payload freed.

Layout (all integers little-endian):

    offset 0   4 bytes  magic b"ECW1"
    offset 4   1 byte   format version (1)
    offset 5   3 bytes  reserved, must be zero
    offset 8   uint32   header length H in bytes
    offset 12  H bytes  UTF-8 JSON object (may end with spaces so that the data starts 8-aligned)
    then       tensor data: tensor i starts at the next multiple of 8 (counted from offset 0) after
               the previous one ends; the gap bytes are zero; nothing follows the last tensor.

The header is exactly these keys: request_id (str), sender (str), reply_to (str or null), deadline
(finite unix seconds as number, or null), kind (one of KINDS), meta (free-form JSON object for stage
numbers, fallback flags, error text...), tensors (list of {name, dtype, shape, length}). `length`
must equal prod(shape) * itemsize. Why so strict: a message comes from the network, so every size
is checked against `WireLimits` before any array is allocated or viewed, and nothing is ever
unpickled (pickled exchange is a known remote-code-execution hole in FL frameworks).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgecloud.errors import WireFormatError

MAGIC = b"ECW1"
VERSION = 1
ALIGNMENT_BYTES = 8
_PREFIX = struct.Struct("<4sB3sI")
PREFIX_BYTES = _PREFIX.size

KINDS: tuple[str, ...] = ("request", "activation", "result", "error")
DTYPES: tuple[str, ...] = ("float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool")
_HEADER_KEYS = frozenset({"request_id", "sender", "reply_to", "deadline", "kind", "meta", "tensors"})
_TENSOR_KEYS = frozenset({"name", "dtype", "shape", "length"})
# Looked up once: numpy 2's `dtype.name` and `np.dtype(name)` cost microseconds per call, and a
# message pays several per tensor on every hop (measured: half of a 10 KB message's encode).
_LITTLE_ENDIAN: dict[str, np.dtype] = {name: np.dtype(name).newbyteorder("<") for name in DTYPES}
_NAME_OF_LITTLE_ENDIAN: dict[np.dtype, str] = {dtype: name for name, dtype in _LITTLE_ENDIAN.items()}
_JSON_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)  # `json.dumps(**options)` builds one per call


@dataclass(frozen=True)
class WireLimits:
    """Upper bounds a receiver enforces before allocating anything.

    The 16 MiB default fits a 10 MB activation with room to spare and stays within what the
    embedded amqtt broker moves in well under a second.
    """

    max_message_bytes: int = 16 * 2**20
    max_header_bytes: int = 64 * 2**10
    max_tensors: int = 64
    max_rank: int = 8
    max_name_chars: int = 256
    max_id_chars: int = 128
    max_topic_chars: int = 256


DEFAULT_LIMITS = WireLimits()


@dataclass(frozen=True)
class Message:
    """One unit on the wire: routing in the header, tensors by name (order is kept)."""

    kind: str
    request_id: str
    sender: str
    tensors: Mapping[str, np.ndarray] = field(default_factory=dict)
    reply_to: str | None = None
    deadline: float | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)


def _aligned(offset: int) -> int:
    return -(-offset // ALIGNMENT_BYTES) * ALIGNMENT_BYTES


def _brief(value: Any, max_chars: int = 80) -> str:
    """`value` as an error message quotes it: shortened, since it comes from the network and may be
    64 KiB long, or an integer too long for Python's int-to-str limit (a ValueError of its own)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    try:
        text = repr(value)
    except ValueError:  # an over-long integer nested in a list
        return f"a {type(value).__name__} holding an integer too long to print"
    return text if len(text) <= max_chars else f"{text[:max_chars - 3]}..."


def _check_text(value: Any, what: str, max_chars: int, *, nullable: bool = False) -> None:
    if value is None and nullable:
        return
    if not isinstance(value, str) or not value:
        raise WireFormatError(f"{what} must be a non-empty string, got {type(value).__name__}.")
    if len(value) > max_chars:
        raise WireFormatError(f"{what} has {len(value)} characters, more than the limit of {max_chars}.")


def _is_finite_number(value: Any) -> bool:
    """JSON gives unbounded ints, and math.isfinite raises OverflowError past the float range."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _check_routing(kind: Any, request_id: Any, sender: Any, reply_to: Any, deadline: Any, meta: Any,
                   limits: WireLimits) -> None:
    """Checks shared by encode and decode, so that a sender cannot build what a receiver rejects."""
    if kind not in KINDS:
        raise WireFormatError(f"kind {_brief(kind)} is not one of {', '.join(KINDS)}.")
    _check_text(request_id, "request_id", limits.max_id_chars)
    _check_text(sender, "sender", limits.max_id_chars)
    _check_text(reply_to, "reply_to", limits.max_topic_chars, nullable=True)
    if deadline is not None and not _is_finite_number(deadline):
        raise WireFormatError(f"deadline must be finite unix seconds or null, got {_brief(deadline)}.")
    if not isinstance(meta, Mapping):
        raise WireFormatError(f"meta must be a JSON object, got {type(meta).__name__}.")


def _tensor_length(name: str, dtype_name: str, shape: Any, limits: WireLimits) -> int:
    """Bytes of the tensor; every size is checked first.

    Why the product of the non-zero sizes is bounded as well: a zero-size tensor of shape
    [0, 2**63] needs no bytes, yet numpy cannot even reshape an empty buffer to it.
    """
    if dtype_name not in DTYPES:
        raise WireFormatError(f"tensor {name!r} has dtype {_brief(dtype_name)}, not one of {', '.join(DTYPES)}.")
    if not isinstance(shape, list | tuple) or len(shape) > limits.max_rank:
        raise WireFormatError(f"tensor {name!r} shape must be a list of at most {limits.max_rank} sizes.")
    if any(isinstance(size, bool) or not isinstance(size, int) or size < 0 for size in shape):
        raise WireFormatError(f"tensor {name!r} shape {_brief(shape)} must hold non-negative integers.")
    elements = 1
    for size in shape:
        elements *= max(size, 1)
        if elements > limits.max_message_bytes:
            raise WireFormatError(f"tensor {name!r} has a shape whose non-zero sizes multiply to more than "
                                  f"the message limit of {limits.max_message_bytes}.")
    return math.prod(shape) * _LITTLE_ENDIAN[dtype_name].itemsize


def _little_endian_c_order(name: str, value: Any) -> tuple[np.ndarray, str]:
    """`value` as a C-contiguous little-endian array and its dtype's name (no copy when it is one already)."""
    array = np.asarray(value)
    dtype_name = _NAME_OF_LITTLE_ENDIAN.get(array.dtype)
    if dtype_name is not None and array.flags.c_contiguous:
        return array, dtype_name
    dtype_name = array.dtype.name
    if dtype_name not in DTYPES:
        raise WireFormatError(f"tensor {name!r} has dtype {dtype_name!r}, not one of {', '.join(DTYPES)}.")
    return array.astype(_LITTLE_ENDIAN[dtype_name], order="C", copy=False), dtype_name  # keeps 0-d arrays 0-d


def encode(message: Message, limits: WireLimits = DEFAULT_LIMITS) -> bytes:
    """Serialise `message`; raises WireFormatError when it breaks the format or `limits`.

    Arrays are written C-contiguous and little-endian; the tensor bytes are copied exactly once,
    into the returned buffer.
    """
    return b"".join(encoded_parts(message, limits))


def encoded_parts(message: Message, limits: WireLimits = DEFAULT_LIMITS) -> list[bytes | np.ndarray]:
    """`encode(message)` as the buffers it joins: prefix and header, padding, and each tensor's own
    C-contiguous little-endian memory (a view of the caller's array when it is one already), so that a
    sender can hand them to the socket without copying the tensors (see `MqttTransport.publish_message`)."""
    _check_routing(message.kind, message.request_id, message.sender, message.reply_to,
                   message.deadline, message.meta, limits)
    if len(message.tensors) > limits.max_tensors:
        raise WireFormatError(f"message has {len(message.tensors)} tensors, more than the limit of {limits.max_tensors}.")
    arrays: list[np.ndarray] = []
    descriptors: list[dict[str, Any]] = []
    for name, value in message.tensors.items():
        _check_text(name, "tensor name", limits.max_name_chars)
        array, dtype_name = _little_endian_c_order(name, value)
        shape = [int(size) for size in array.shape]
        _tensor_length(name, dtype_name, shape, limits)
        arrays.append(array)
        descriptors.append({"name": name, "dtype": dtype_name, "shape": shape, "length": array.nbytes})
    header = {
        "request_id": message.request_id, "sender": message.sender, "reply_to": message.reply_to,
        "deadline": None if message.deadline is None else float(message.deadline), "kind": message.kind,
        "meta": dict(message.meta), "tensors": descriptors,
    }
    try:
        header_bytes = _JSON_ENCODER.encode(header).encode("utf-8")
    except (TypeError, ValueError) as error:
        raise WireFormatError(f"header is not plain JSON: {error}.") from None
    header_bytes += b" " * (_aligned(PREFIX_BYTES + len(header_bytes)) - PREFIX_BYTES - len(header_bytes))
    if len(header_bytes) > limits.max_header_bytes:
        raise WireFormatError(f"header has {len(header_bytes)} bytes, more than the limit of {limits.max_header_bytes}.")
    parts: list[bytes | np.ndarray] = [_PREFIX.pack(MAGIC, VERSION, b"\0\0\0", len(header_bytes)) + header_bytes]
    offset = PREFIX_BYTES + len(header_bytes)
    for array in arrays:
        padding = _aligned(offset) - offset
        if padding:
            parts.append(b"\0" * padding)
        parts.append(array)  # C-contiguous: its buffer reads as the tensor's bytes
        offset += padding + array.nbytes
    if offset > limits.max_message_bytes:
        raise WireFormatError(f"message has {offset} bytes, more than the limit of {limits.max_message_bytes}.")
    return parts


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise WireFormatError("header JSON repeats a key.")
    return result


def _reject_constant(name: str) -> None:
    raise WireFormatError(f"header JSON holds the non-standard constant {name}.")


_JSON_DECODER = json.JSONDecoder(object_pairs_hook=_reject_duplicate_keys, parse_constant=_reject_constant)


def _parse_header(raw: memoryview) -> dict[str, Any]:
    try:
        header = _JSON_DECODER.decode(str(raw, "utf-8"))
    except WireFormatError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as error:  # ValueError: also ints over 4300 digits
        raise WireFormatError(f"header is not UTF-8 JSON: {error}.") from None
    if not isinstance(header, dict) or header.keys() != _HEADER_KEYS:
        found = _brief(sorted(header)) if isinstance(header, dict) else type(header).__name__
        raise WireFormatError(f"header must be an object with exactly the keys {sorted(_HEADER_KEYS)}, got {found}.")
    return header


def decode(payload: bytes | bytearray | memoryview, limits: WireLimits = DEFAULT_LIMITS) -> Message:
    """Parse and validate `payload`; tensors are zero-copy views into it.

    Every check runs before a tensor view exists: prefix, header size, header schema, dtype
    whitelist, shapes, declared lengths, and that the declared sizes add up to the payload length
    exactly (so truncated and padded-out messages both fail).
    """
    view = memoryview(payload).cast("B")
    total_bytes = view.nbytes
    if total_bytes > limits.max_message_bytes:
        raise WireFormatError(f"message has {total_bytes} bytes, more than the limit of {limits.max_message_bytes}.")
    if total_bytes < PREFIX_BYTES:
        raise WireFormatError(f"message has {total_bytes} bytes, shorter than the {PREFIX_BYTES}-byte prefix.")
    magic, version, reserved, header_bytes = _PREFIX.unpack_from(view, 0)
    if magic != MAGIC:
        raise WireFormatError(f"message starts with {bytes(magic)!r}, not the magic {MAGIC!r}.")
    if version != VERSION:
        raise WireFormatError(f"message has format version {version}, this receiver reads version {VERSION}.")
    if reserved != b"\0\0\0":
        raise WireFormatError("message has non-zero reserved prefix bytes.")
    if header_bytes > limits.max_header_bytes:
        raise WireFormatError(f"header has {header_bytes} bytes, more than the limit of {limits.max_header_bytes}.")
    if PREFIX_BYTES + header_bytes > total_bytes:
        raise WireFormatError(f"header of {header_bytes} bytes runs past the end of a {total_bytes}-byte message.")
    header = _parse_header(view[PREFIX_BYTES:PREFIX_BYTES + header_bytes])
    _check_routing(header["kind"], header["request_id"], header["sender"], header["reply_to"],
                   header["deadline"], header["meta"], limits)
    descriptors = header["tensors"]
    if not isinstance(descriptors, list) or len(descriptors) > limits.max_tensors:
        raise WireFormatError(f"tensors must be a list of at most {limits.max_tensors} entries.")
    layout: list[tuple[str, str, tuple[int, ...], int]] = []
    offset = PREFIX_BYTES + header_bytes
    for descriptor in descriptors:
        if not isinstance(descriptor, dict) or descriptor.keys() != _TENSOR_KEYS:
            raise WireFormatError(f"each tensor entry must have exactly the keys {sorted(_TENSOR_KEYS)}.")
        name = descriptor["name"]
        _check_text(name, "tensor name", limits.max_name_chars)
        if any(name == seen for seen, *_ in layout):
            raise WireFormatError(f"tensor {name!r} appears twice.")
        length = _tensor_length(name, descriptor["dtype"], descriptor["shape"], limits)
        declared = descriptor["length"]
        if isinstance(declared, bool) or not isinstance(declared, int) or declared != length:
            raise WireFormatError(f"tensor {name!r} declares {_brief(declared)} bytes, its shape and dtype need {length}.")
        start = _aligned(offset)
        if start + length > total_bytes:
            raise WireFormatError(f"tensor {name!r} runs past the end of a {total_bytes}-byte message (truncated?).")
        if any(view[offset:start]):
            raise WireFormatError(f"alignment padding before tensor {name!r} is not zero.")
        layout.append((name, descriptor["dtype"], tuple(descriptor["shape"]), start))
        offset = start + length
    if offset != total_bytes:
        raise WireFormatError(f"message has {total_bytes} bytes, its header accounts for {offset}.")
    tensors: dict[str, np.ndarray] = {}
    for name, dtype_name, shape, start in layout:
        array = np.frombuffer(view, dtype=_LITTLE_ENDIAN[dtype_name], count=math.prod(shape), offset=start).reshape(shape)
        if dtype_name == "bool" and np.any(array.view(np.uint8) > 1):
            raise WireFormatError(f"bool tensor {name!r} holds bytes other than 0 and 1.")
        tensors[name] = array
    return Message(kind=header["kind"], request_id=header["request_id"], sender=header["sender"], tensors=tensors,
                   reply_to=header["reply_to"], deadline=header["deadline"], meta=header["meta"])
