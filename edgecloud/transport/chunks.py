"""Messages larger than one MQTT packet, sent as bounded chunks and put back together by the receiver.

Why: brokers cap packets (Mosquitto's `message_size_limit`, a 256 MB protocol ceiling, our own 16 MiB
`WireLimits.max_message_bytes`), and a single 100 MB publish blocks the client's network thread long
enough to miss keepalives. An encoded wire message (`edgecloud.transport.wire`) of any size is cut into
chunks of at most `chunk_bytes`, each its own MQTT message on the same topic, so the network thread
interleaves them with keepalives and acknowledgements.

Chunk layout (little-endian), 48 bytes of header then the chunk's bytes:

    offset 0   4 bytes  magic b"ECC1" (a wire message starts b"ECW1": receivers tell them apart)
    offset 4   1 byte   version (1)
    offset 5   3 bytes  reserved, zero
    offset 8   16 bytes transfer id (random per message)
    offset 24  uint32   chunk index, < count
    offset 28  uint32   chunk count
    offset 32  uint64   total bytes of the whole message
    offset 40  uint32   CRC-32 of this chunk's bytes
    offset 44  uint32   CRC-32 of the whole message

Every chunk but the last carries exactly `total / count` rounded up bytes, so a chunk's offset is its
index times that size and nothing in a chunk can place bytes outside the buffer. The receiver keeps one
buffer per transfer, allocated once at the announced total after checking it against its limits, and
bounded in sum over all open transfers; a transfer not completed within `expiry_s` of its first chunk
(the receiver's own monotonic clock, never the sender's) is dropped and its memory freed.

Flow control (MQTT has none end to end: a broker drops what overflows a slow subscriber's queue, e.g.
Mosquitto's `max_queued_bytes`). The receiver answers each chunk it has put in place with a credit
frame, published to the sender's own inbox from the receiver (`edgecloud/<dep>/<sender>/in/<receiver>`,
which the fleet's ACL lets the receiver write and only the sender read):

    offset 0   4 bytes  magic b"ECG1"
    offset 4   1 byte   version (1)
    offset 5   3 bytes  reserved, zero
    offset 8   16 bytes transfer id
    offset 24  uint32   chunks of that transfer the receiver holds so far

The count is cumulative, so a credit delivered twice or late changes nothing. The sender sends chunk
`i` only once the receiver holds more than `i - window` chunks: at most `window` chunks of a transfer are
ever between the two (in the sender's queue, the broker or the sockets), whatever the receiver's speed.
"""

from __future__ import annotations

import logging
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from edgecloud.errors import WireFormatError

logger = logging.getLogger(__name__)

CHUNK_MAGIC = b"ECC1"
CHUNK_VERSION = 1
_HEADER = struct.Struct("<4sB3s16sIIQII")
CHUNK_HEADER_BYTES = _HEADER.size
TRANSFER_ID_BYTES = 16
CREDIT_MAGIC = b"ECG1"
_CREDIT = struct.Struct("<4sB3s16sI")
ProgressHandler = Callable[[str, bytes, int], None]  # (key, transfer id, chunks held)


def is_chunk(payload: bytes | bytearray | memoryview) -> bool:
    return bytes(payload[:4]) == CHUNK_MAGIC


def new_transfer_id() -> bytes:
    return os.urandom(TRANSFER_ID_BYTES)


def is_credit(payload: bytes | bytearray | memoryview) -> bool:
    return bytes(payload[:4]) == CREDIT_MAGIC


def credit_frame(transfer_id: bytes, chunks_held: int) -> bytes:
    """The receiver's word that it holds `chunks_held` chunks of transfer `transfer_id`."""
    return _CREDIT.pack(CREDIT_MAGIC, CHUNK_VERSION, b"\0\0\0", transfer_id, chunks_held)


def parse_credit(payload: bytes | bytearray | memoryview) -> tuple[bytes, int]:
    """(transfer id, chunks held) of a credit frame; WireFormatError for anything else."""
    if len(payload) != _CREDIT.size:
        raise WireFormatError(f"a credit frame has {_CREDIT.size} bytes, not {len(payload)}")
    magic, version, reserved, transfer_id, chunks_held = _CREDIT.unpack(payload)
    if magic != CREDIT_MAGIC or version != CHUNK_VERSION or reserved != b"\0\0\0":
        raise WireFormatError("not a version-1 credit frame (bad magic, version or reserved bytes)")
    return transfer_id, chunks_held


def chunk_size_of(total_bytes: int, count: int) -> int:
    """Bytes in every chunk but the last."""
    return -(-total_bytes // count)


def chunk_frames(payload: bytes | bytearray | memoryview, chunk_bytes: int,
                 transfer_id: bytes | None = None) -> Iterator[bytes]:
    """The chunks of `payload`, each a header plus at most `chunk_bytes` of it."""
    if chunk_bytes <= 0:
        raise ValueError("chunk_bytes must be positive")
    view = memoryview(payload).cast("B")
    total = len(view)
    count = max(1, -(-total // chunk_bytes))
    size = chunk_size_of(total, count)
    transfer_id = new_transfer_id() if transfer_id is None else transfer_id
    whole_crc = zlib.crc32(view)
    for index in range(count):
        part = view[index * size:(index + 1) * size]
        yield _HEADER.pack(CHUNK_MAGIC, CHUNK_VERSION, b"\0\0\0", transfer_id, index, count, total,
                           zlib.crc32(part), whole_crc) + part


@dataclass(frozen=True)
class ChunkLimits:
    """What a receiver accepts: one message's size, the memory all open transfers may hold, how long
    a transfer may take, and how many may be open at once (per receiver)."""

    max_message_bytes: int = 2 * 2**30
    max_buffered_bytes: int = 4 * 2**30
    expiry_s: float = 60.0
    max_open_transfers: int = 64


@dataclass
class _Transfer:
    total_bytes: int
    count: int
    whole_crc: int
    started_s: float
    buffer: bytearray
    received: bytearray  # one flag per chunk
    missing: int
    chunk_bytes: int = field(init=False)

    def __post_init__(self) -> None:
        self.chunk_bytes = chunk_size_of(self.total_bytes, self.count)


class Reassembler:
    """Puts chunked messages back together, per sender key (the topic they arrived on, which the
    broker's ACL ties to one identity), within `ChunkLimits`. Not thread-safe: one per subscription
    callback, which paho calls from its one network thread."""

    def __init__(self, limits: ChunkLimits = ChunkLimits(), clock: Callable[[], float] = time.monotonic,
                 on_progress: ProgressHandler | None = None) -> None:
        self.limits = limits
        self.clock = clock
        self.on_progress = on_progress  # told after each chunk put in place, but the last (flow control)
        self._open: dict[tuple[str, bytes], _Transfer] = {}
        # transfers completed within `expiry_s`: a chunk delivered again (QoS 1) must not start a new one
        self._completed: dict[tuple[str, bytes], float] = {}
        self.buffered_bytes = 0

    @property
    def open_transfers(self) -> int:
        return len(self._open)

    def add(self, key: str, frame: bytes | bytearray | memoryview) -> bytearray | None:
        """Take one chunk; return the whole message when this chunk completed it, else None.

        Raises WireFormatError for a chunk that is malformed, inconsistent with its transfer's earlier
        chunks, corrupted (CRC), or over the limits; the transfer it belonged to is dropped then."""
        self.expire()
        view = memoryview(frame).cast("B")
        if len(view) < CHUNK_HEADER_BYTES:
            raise WireFormatError(f"a chunk of {len(view)} bytes is shorter than its {CHUNK_HEADER_BYTES}-byte header")
        magic, version, reserved, transfer_id, index, count, total, crc, whole_crc = _HEADER.unpack_from(view)
        if magic != CHUNK_MAGIC or version != CHUNK_VERSION or reserved != b"\0\0\0":
            raise WireFormatError("not a version-1 chunk (bad magic, version or reserved bytes)")
        body = view[CHUNK_HEADER_BYTES:]
        if (key, transfer_id) in self._completed:
            return None  # a late duplicate of a message already delivered
        transfer = self._transfer(key, transfer_id, count, total, whole_crc)
        try:
            self._check_chunk(transfer, index, body, crc)
        except WireFormatError:
            self._drop((key, transfer_id))
            raise
        if not transfer.received[index]:  # else a duplicate (QoS 1 may deliver twice): already in place
            start = index * transfer.chunk_bytes
            transfer.buffer[start:start + len(body)] = body
            transfer.received[index] = 1
            transfer.missing -= 1
        if transfer.missing:
            if self.on_progress is not None:
                self.on_progress(key, transfer_id, transfer.count - transfer.missing)
            return None
        self._drop((key, transfer_id))
        self._completed[(key, transfer_id)] = self.clock()
        if zlib.crc32(transfer.buffer) != transfer.whole_crc:
            raise WireFormatError(f"a {transfer.total_bytes}-byte chunked message failed its whole-message CRC")
        return transfer.buffer

    def _transfer(self, key: str, transfer_id: bytes, count: int, total: int, whole_crc: int) -> _Transfer:
        found = self._open.get((key, transfer_id))
        if found is not None:
            if (found.count, found.total_bytes, found.whole_crc) != (count, total, whole_crc):
                self._drop((key, transfer_id))
                raise WireFormatError("a chunk disagrees with its transfer's earlier chunks on count, size or CRC")
            return found
        limits = self.limits
        if total > limits.max_message_bytes:
            raise WireFormatError(f"a chunked message of {total} bytes exceeds the {limits.max_message_bytes}-byte limit")
        if count < 1 or count > max(1, total) or (total and chunk_size_of(total, count) * (count - 1) >= total):
            raise WireFormatError(f"{count} chunks cannot carry {total} bytes (every chunk but the last is full)")
        if self.buffered_bytes + total > limits.max_buffered_bytes or len(self._open) >= limits.max_open_transfers:
            raise WireFormatError(f"refusing a {total}-byte chunked message: {len(self._open)} open transfers already "
                                  f"hold {self.buffered_bytes} of at most {limits.max_buffered_bytes} bytes")
        transfer = _Transfer(total, count, whole_crc, self.clock(), bytearray(total), bytearray(count), count)
        self._open[(key, transfer_id)] = transfer
        self.buffered_bytes += total
        return transfer

    @staticmethod
    def _check_chunk(transfer: _Transfer, index: int, body: memoryview, crc: int) -> None:
        if index >= transfer.count:
            raise WireFormatError(f"chunk index {index} is not below the count {transfer.count}")
        expected = transfer.chunk_bytes if index < transfer.count - 1 else (
            transfer.total_bytes - transfer.chunk_bytes * (transfer.count - 1))
        if len(body) != expected:
            raise WireFormatError(f"chunk {index} carries {len(body)} bytes, its place holds {expected}")
        if zlib.crc32(body) != crc:
            raise WireFormatError(f"chunk {index} failed its CRC")

    def expire(self) -> None:
        """Drop transfers older than `expiry_s` by our own clock, freeing their buffers (and forget
        completed ones as old: a duplicate later than that is a new, incomplete transfer that expires)."""
        now = self.clock()
        for key in [k for k, done_s in self._completed.items() if now - done_s > self.limits.expiry_s]:
            del self._completed[key]
        for key in [k for k, t in self._open.items() if now - t.started_s > self.limits.expiry_s]:
            transfer = self._open[key]
            logger.warning("dropped an incomplete %d-byte chunked message on %s after %.3g s (%d of %d chunks)",
                           transfer.total_bytes, key[0], now - transfer.started_s,
                           transfer.count - transfer.missing, transfer.count)
            self._drop(key)

    def _drop(self, key: tuple[str, bytes]) -> None:
        transfer = self._open.pop(key, None)
        if transfer is not None:
            self.buffered_bytes -= transfer.total_bytes
