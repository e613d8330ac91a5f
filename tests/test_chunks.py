"""Chunked messages: any order, duplicates and interleaved transfers reassemble exactly; anything
malformed, corrupted, oversized or stale is refused and its memory freed."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecloud.errors import WireFormatError
from edgecloud.transport.chunks import (CHUNK_HEADER_BYTES, ChunkLimits, Reassembler, chunk_frames, chunk_size_of,
                                        credit_frame, is_chunk, is_credit, parse_credit)


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(0, 5000), min_size=1, max_size=4), chunk_bytes=st.integers(1, 700),
       seed=st.integers(0, 2**32 - 1))
def test_interleaved_shuffled_duplicated_chunks_reassemble_exactly(sizes, chunk_bytes, seed) -> None:
    rng = random.Random(seed)
    payloads = [rng.randbytes(size) for size in sizes]
    frames = [(f"topic/{i % 2}", i, frame) for i, payload in enumerate(payloads)
              for frame in chunk_frames(payload, chunk_bytes)]
    frames += rng.sample(frames, k=len(frames) // 3)  # QoS 1 may deliver a chunk twice
    rng.shuffle(frames)
    reassembler = Reassembler()
    done = {}
    for key, i, frame in frames:
        assert is_chunk(frame) and len(frame) <= CHUNK_HEADER_BYTES + chunk_bytes
        whole = reassembler.add(key, frame)
        if whole is not None:
            assert i not in done
            done[i] = bytes(whole)
    assert done == dict(enumerate(payloads))
    assert reassembler.open_transfers == 0 and reassembler.buffered_bytes == 0


def _frames(size: int = 1000, chunk_bytes: int = 300) -> list[bytearray]:
    return [bytearray(frame) for frame in chunk_frames(random.Random(size).randbytes(size), chunk_bytes)]


@pytest.mark.parametrize("corrupt", ["body", "whole_crc", "index", "total", "count", "truncate", "magic", "extend"])
def test_a_bad_chunk_is_refused_and_its_transfer_dropped(corrupt: str) -> None:
    frames = _frames()
    reassembler = Reassembler()
    assert reassembler.add("t", frames[0]) is None
    bad = frames[1]
    if corrupt == "body":
        bad[-1] ^= 1
    elif corrupt == "whole_crc":  # every chunk agrees, but the whole does not match: seen at the end
        frames = [bytearray(f) for f in frames]
        for frame in frames:
            struct.pack_into("<I", frame, 44, 12345)
        reassembler = Reassembler()
        for frame in frames[:-1]:
            reassembler.add("t", frame)
        with pytest.raises(WireFormatError, match="whole-message CRC"):
            reassembler.add("t", frames[-1])
        assert reassembler.buffered_bytes == 0
        return
    elif corrupt == "index":
        struct.pack_into("<I", bad, 24, 99)
    elif corrupt == "total":
        struct.pack_into("<Q", bad, 32, 10**6)
    elif corrupt == "count":
        struct.pack_into("<I", bad, 28, 7)
    elif corrupt == "truncate":
        del bad[-5:]
    elif corrupt == "magic":
        bad[0:4] = b"ECW1"
    elif corrupt == "extend":
        bad += b"xx"
    with pytest.raises(WireFormatError):
        reassembler.add("t", bad)
    if corrupt != "magic":
        assert reassembler.open_transfers == 0 and reassembler.buffered_bytes == 0


def test_limits_bound_every_allocation_before_it_happens() -> None:
    big = list(chunk_frames(bytes(10_000), 1000))
    with pytest.raises(WireFormatError, match="exceeds"):
        Reassembler(ChunkLimits(max_message_bytes=9_999)).add("t", big[0])
    reassembler = Reassembler(ChunkLimits(max_buffered_bytes=15_000))
    reassembler.add("a", big[0])
    with pytest.raises(WireFormatError, match="open transfers already hold"):
        reassembler.add("b", list(chunk_frames(bytes(10_000), 1000))[0])
    assert reassembler.buffered_bytes == 10_000
    one_open = Reassembler(ChunkLimits(max_open_transfers=1))
    one_open.add("a", big[0])
    with pytest.raises(WireFormatError):
        one_open.add("a", list(chunk_frames(bytes(100), 10))[0])
    # a header announcing 2 GiB in one chunk of 3 bytes is refused before any buffer exists
    forged = bytearray(big[0][:CHUNK_HEADER_BYTES]) + b"abc"
    struct.pack_into("<IIQ", forged, 24, 0, 1, 2 * 2**30)
    with pytest.raises(WireFormatError):
        Reassembler().add("t", forged)


def test_impossible_chunk_counts_are_refused() -> None:
    for total, count in ((10, 11), (10, 0), (10, 6), (0, 2)):  # 6 chunks of 2 bytes leave the last one empty
        frame = bytearray(next(chunk_frames(bytes(total), max(total, 1))))
        struct.pack_into("<I", frame, 28, count)
        with pytest.raises(WireFormatError):
            Reassembler().add("t", frame)
    assert chunk_size_of(10, 5) == 2 and chunk_size_of(10, 4) == 3


def test_a_stale_transfer_expires_by_the_receivers_own_clock() -> None:
    now = [0.0]
    reassembler = Reassembler(ChunkLimits(expiry_s=5.0), clock=lambda: now[0])
    frames = _frames()
    reassembler.add("t", frames[0])
    assert reassembler.buffered_bytes == 1000
    now[0] = 5.5
    reassembler.expire()
    assert reassembler.open_transfers == 0 and reassembler.buffered_bytes == 0
    for frame in frames[1:]:  # the rest arrives late: never completes, never returns a partial message
        assert reassembler.add("t", frame) is None
    assert reassembler.buffered_bytes == 1000  # the late chunks opened a new transfer, which expires in turn
    now[0] = 11.0
    reassembler.expire()
    assert reassembler.buffered_bytes == 0


def test_the_same_transfer_id_on_two_topics_is_two_transfers() -> None:
    """Keys are the topic (one sender each, by the broker's ACL): a forger on its own topic cannot fill
    in another sender's message."""
    honest = list(chunk_frames(b"a" * 100, 40, transfer_id=b"x" * 16))
    forged = list(chunk_frames(b"b" * 100, 40, transfer_id=b"x" * 16))
    reassembler = Reassembler()
    reassembler.add("honest", honest[0])
    reassembler.add("forger", forged[1])
    reassembler.add("honest", honest[1])
    assert bytes(reassembler.add("honest", honest[2])) == b"a" * 100


def test_credit_frames_round_trip_and_malformed_ones_are_refused() -> None:
    transfer_id = bytes(range(16))
    frame = credit_frame(transfer_id, 7)
    assert is_credit(frame) and not is_chunk(frame)
    assert parse_credit(frame) == (transfer_id, 7)
    for bad in (frame[:-1], b"ECW1" + frame[4:], frame[:4] + b"\x02" + frame[5:]):
        with pytest.raises(WireFormatError):
            parse_credit(bad)


def test_progress_reports_the_chunks_held_for_every_chunk_but_the_last() -> None:
    progress: list[tuple[str, int]] = []
    reassembler = Reassembler(on_progress=lambda key, _transfer, held: progress.append((key, held)))
    frames = list(chunk_frames(bytes(1000), 300))
    for frame in [frames[0], frames[0], *frames[1:]]:  # a duplicate reports the same count again
        reassembler.add("k", frame)
    assert progress == [("k", 1), ("k", 1), ("k", 2), ("k", 3)]
