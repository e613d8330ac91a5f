"""The wire format: exact round trips, zero-copy decode, and rejection of every malformed input."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgecloud.errors import WireFormatError
from edgecloud.transport.wire import ALIGNMENT_BYTES, DTYPES, KINDS, PREFIX_BYTES, Message, WireLimits, decode, encode

names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20)
arrays = st.sampled_from(DTYPES).flatmap(
    lambda dtype: hnp.arrays(np.dtype(dtype), hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)))
json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.text(max_size=10),
                           lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
                           max_leaves=10)
messages = st.builds(
    Message,
    kind=st.sampled_from(KINDS), request_id=names, sender=names,
    tensors=st.dictionaries(names, arrays, max_size=5),
    reply_to=st.none() | names,
    deadline=st.none() | st.floats(allow_nan=False, allow_infinity=False),
    meta=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
)


@settings(max_examples=150, deadline=None)
@given(messages)
def test_round_trip_keeps_every_field_and_every_bit(message: Message) -> None:
    payload = encode(message)
    decoded = decode(payload)
    assert (decoded.kind, decoded.request_id, decoded.sender, decoded.reply_to, decoded.deadline, decoded.meta) == (
        message.kind, message.request_id, message.sender, message.reply_to, message.deadline, message.meta)
    assert list(decoded.tensors) == list(message.tensors)
    for name, array in message.tensors.items():
        got = decoded.tensors[name]
        assert (got.dtype, got.shape, got.tobytes()) == (array.dtype, array.shape, array.tobytes())
        assert got.flags.aligned


@settings(max_examples=100, deadline=None)
@given(messages, st.data())
def test_every_truncation_is_rejected(message: Message, data: st.DataObject) -> None:
    payload = encode(message)
    cut = data.draw(st.integers(0, len(payload) - 1))
    with pytest.raises(WireFormatError):
        decode(payload[:cut])


def test_decode_is_zero_copy_and_read_only() -> None:
    payload = bytearray(encode(Message("activation", "r", "edge", {"x": np.arange(4, dtype=np.float32)})))
    decoded = decode(payload)
    assert np.shares_memory(decoded.tensors["x"], np.frombuffer(payload, np.uint8))
    frozen = decode(bytes(payload)).tensors["x"]
    assert not frozen.flags.writeable


def test_big_endian_and_strided_inputs_are_written_little_endian_contiguous() -> None:
    big_endian = np.arange(6, dtype=">i4").reshape(2, 3)
    strided = np.arange(20, dtype=np.float64)[::3]
    decoded = decode(encode(Message("result", "r", "cloud", {"a": big_endian, "b": strided})))
    np.testing.assert_array_equal(decoded.tensors["a"], big_endian)
    np.testing.assert_array_equal(decoded.tensors["b"], strided)
    assert decoded.tensors["a"].dtype == np.dtype("<i4")


def test_tensor_data_is_aligned_to_eight_bytes() -> None:
    message = Message("activation", "r", "edge", {"a": np.ones(3, np.int8), "b": np.ones(2, np.float64)})
    payload = encode(message)
    header_bytes = struct.unpack_from("<I", payload, 8)[0]
    assert (PREFIX_BYTES + header_bytes) % ALIGNMENT_BYTES == 0
    assert len(payload) == PREFIX_BYTES + header_bytes + 8 + 16  # 3 bytes, 5 zero padding bytes, 16 bytes


def valid_payload() -> bytes:
    return encode(Message("activation", "req", "edge", {"x": np.arange(6, dtype=np.float32).reshape(2, 3)},
                          reply_to="edgecloud/d/client/in", deadline=10.0, meta={"stage": 1}))


def with_header(header: dict | list | str, data: bytes = b"", raw: bytes | None = None) -> bytes:
    """A payload with a hand-written header (tensor data appended as given)."""
    body = raw if raw is not None else json.dumps(header).encode()
    body += b" " * (-(PREFIX_BYTES + len(body)) % ALIGNMENT_BYTES)
    return struct.pack("<4sB3sI", b"ECW1", 1, b"\0\0\0", len(body)) + body + data


def good_header(**changes: object) -> dict:
    header = {"request_id": "r", "sender": "edge", "reply_to": None, "deadline": None, "kind": "activation",
              "meta": {}, "tensors": [{"name": "x", "dtype": "float32", "shape": [2], "length": 8}]}
    header.update(changes)
    return header


TENSOR_DATA = np.ones(2, np.float32).tobytes()


@pytest.mark.parametrize(("payload", "reason"), [
    (b"", "shorter than"),
    (b"XXXX" + valid_payload()[4:], "magic"),
    (valid_payload()[:4] + b"\x02" + valid_payload()[5:], "version"),
    (valid_payload()[:5] + b"\x01\0\0" + valid_payload()[8:], "reserved"),
    (valid_payload()[:8] + struct.pack("<I", 10**6) + valid_payload()[12:], "header"),
    (valid_payload()[:8] + struct.pack("<I", 4000) + valid_payload()[12:], "runs past the end"),
    (valid_payload() + b"\0", "accounts for"),
    (with_header([], raw=b"\xff\xfe"), "UTF-8 JSON"),
    (with_header([]), "exactly the keys"),
    (with_header({}, raw=b'{"request_id": "a", "request_id": "b"}'), "repeats a key"),
    (with_header({}, raw=json.dumps(good_header()).replace('"deadline": null', '"deadline": NaN').encode()), "constant"),
    (with_header({**good_header(), "extra": 1}, TENSOR_DATA), "exactly the keys"),
    (with_header(good_header(kind="pickle"), TENSOR_DATA), "kind"),
    (with_header(good_header(request_id=""), TENSOR_DATA), "request_id"),
    (with_header(good_header(request_id="r" * 500), TENSOR_DATA), "characters"),
    (with_header(good_header(sender=7), TENSOR_DATA), "sender"),
    (with_header(good_header(deadline="soon"), TENSOR_DATA), "deadline"),
    (with_header(good_header(deadline=True), TENSOR_DATA), "deadline"),
    (with_header(good_header(deadline=10**400), TENSOR_DATA), "deadline"),
    (with_header({}, raw=json.dumps(good_header()).replace('"meta": {}', '"meta": {"n": ' + "9" * 5000 + "}").encode()),
     "UTF-8 JSON"),
    (with_header(good_header(meta=[]), TENSOR_DATA), "meta"),
    (with_header(good_header(tensors={}), TENSOR_DATA), "tensors must be a list"),
    (with_header(good_header(tensors=[{"name": "x"}]), TENSOR_DATA), "exactly the keys"),
    (with_header(good_header(tensors=[{"name": "x", "dtype": "object", "shape": [2], "length": 8}]), TENSOR_DATA), "dtype"),
    (with_header(good_header(tensors=[{"name": "x", "dtype": "<f4", "shape": [2], "length": 8}]), TENSOR_DATA), "dtype"),
    (with_header(good_header(tensors=[{"name": "x", "dtype": "float32", "shape": [-2], "length": 8}]), TENSOR_DATA), "non-negative"),
    (with_header(good_header(tensors=[{"name": "x", "dtype": "float32", "shape": [2.0], "length": 8}]), TENSOR_DATA), "non-negative"),
    (with_header(good_header(tensors=[{"name": "x", "dtype": "float32", "shape": [True, 2], "length": 8}]), TENSOR_DATA), "non-negative"),
    (with_header(good_header(tensors=[{"name": "x", "dtype": "float32", "shape": [1] * 9, "length": 4}]), TENSOR_DATA), "at most 8"),
    (with_header(good_header(tensors=[{"name": "x", "dtype": "float32", "shape": [2], "length": 4}]), TENSOR_DATA), "declares"),
    (with_header(good_header(tensors=[{"name": "x", "dtype": "float32", "shape": [2], "length": 8.0}]), TENSOR_DATA), "declares"),
    (with_header(good_header(tensors=[{"name": "x", "dtype": "float32", "shape": [10**12], "length": 4 * 10**12}]), TENSOR_DATA), "multiply to more"),
    (with_header(good_header(tensors=[{"name": "x", "dtype": "float32", "shape": [2**40, 2**40], "length": 2**82}])), "multiply to more"),
    (with_header(good_header(tensors=[{"name": "x", "dtype": "float32", "shape": [2**20], "length": 4 * 2**20}]), TENSOR_DATA), "past the end"),
    (with_header(good_header(tensors=[{"name": "", "dtype": "float32", "shape": [2], "length": 8}]), TENSOR_DATA), "tensor name"),
    (with_header(good_header(tensors=[{"name": "x", "dtype": "uint8", "shape": [1], "length": 1}] * 2), b"\1" + b"\0" * 7 + b"\1"), "twice"),
    (with_header(good_header(tensors=[{"name": "a", "dtype": "uint8", "shape": [1], "length": 1},
                                      {"name": "b", "dtype": "uint8", "shape": [1], "length": 1}]), b"\1\7\0\0\0\0\0\0\1"), "padding"),
    (with_header(good_header(tensors=[{"name": "b", "dtype": "bool", "shape": [2], "length": 2}]), b"\1\2"), "bool"),
])
def test_malformed_payloads_are_rejected_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(WireFormatError, match=reason):
        decode(payload)


def test_limits_are_enforced_on_both_sides() -> None:
    small = WireLimits(max_message_bytes=1024, max_tensors=2, max_rank=2, max_name_chars=4)
    cases = [
        Message("activation", "r", "e", {"x": np.zeros(2000, np.uint8)}),
        Message("activation", "r", "e", {"a": np.zeros(1), "b": np.zeros(1), "c": np.zeros(1)}),
        Message("activation", "r", "e", {"x": np.zeros((1, 1, 1))}),
        Message("activation", "r", "e", {"long-name": np.zeros(1)}),
    ]
    for message in cases:
        with pytest.raises(WireFormatError, match="limit|at most|characters"):
            encode(message, small)
        with pytest.raises(WireFormatError, match="limit|at most|characters"):
            decode(encode(message), small)


@pytest.mark.parametrize("message", [
    Message("activation", "r", "e", {"x": np.array(["text"])}),
    Message("activation", "r", "e", {"x": np.array([object()], dtype=object)}),
    Message("activation", "r", "e", meta={"x": object()}),
    Message("activation", "r", "e", meta={"x": float("nan")}),
    Message("activation", "r", "e", deadline=float("inf")),
    Message("unknown", "r", "e"),
])
def test_encode_refuses_what_the_format_cannot_carry(message: Message) -> None:
    with pytest.raises(WireFormatError):
        encode(message)


@pytest.mark.parametrize("tensor", [
    {"name": "x", "dtype": "float32", "shape": [0, 2**63], "length": 0},           # numpy's reshape overflows
    {"name": "x", "dtype": "float32", "shape": [0, 2**40, 2**40], "length": 0},
    {"name": "x", "dtype": "float32", "shape": [10**4000, 10**4000], "length": 0},  # the product has 8001 digits
    {"name": "x", "dtype": "float32", "shape": [2], "length": 10**4000},
])
def test_absurd_dimensions_raise_our_error_not_numpys_or_pythons(tensor: dict) -> None:
    """Found by fuzzing (issue 9): a zero-size tensor with a huge dimension passed every check and
    failed in numpy's reshape; two 4001-digit dimensions overflowed Python's int-to-str limit while
    the error message was being formatted. Both escaped as plain ValueError."""
    with pytest.raises(WireFormatError):
        decode(with_header(good_header(tensors=[tensor])))


def test_a_zero_size_tensor_with_large_but_sane_dimensions_still_decodes() -> None:
    payload = encode(Message("activation", "r", "e", {"x": np.zeros((0, 4096, 4096), np.float32)}))
    assert decode(payload).tensors["x"].shape == (0, 4096, 4096)


def test_error_messages_quote_hostile_values_briefly() -> None:
    with pytest.raises(WireFormatError) as caught:
        decode(with_header(good_header(kind="k" * 60000), TENSOR_DATA))
    assert len(str(caught.value)) < 300
