"""A short fuzz of everything that parses untrusted input (the long run is `python bench/fuzz_wire.py`):
the wire decoder and the plan, manifest, cost-graph and device/link profile loaders, through their public
functions. Every input is accepted or refused with our own error type (all of which subclass ValueError,
so a bare ValueError from numpy or Python fails the test), and the decoder's allocations do not grow with
the sizes a message merely declares."""

from __future__ import annotations

import random
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.fuzz_wire import (ALLOCATION_BASE_BYTES, ALLOCATION_PER_INPUT_BYTE, OUR_ERRORS, SEED_DOCUMENTS, crafted_header,
                             loaders, mutate_bytes, mutate_document, valid_message)
from edgecloud.errors import WireFormatError
from edgecloud.transport.wire import decode

FUZZ_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
seeds = st.integers(0, 2**32 - 1)


def decodes_or_refuses_within_memory(payload: bytes) -> None:
    tracemalloc.start()
    try:
        try:
            decode(payload)
        except WireFormatError:
            pass
        extra_bytes = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert extra_bytes <= ALLOCATION_BASE_BYTES + ALLOCATION_PER_INPUT_BYTE * len(payload)


@FUZZ_SETTINGS
@given(st.binary(max_size=4096))
def test_random_bytes(payload: bytes) -> None:
    decodes_or_refuses_within_memory(payload)


@FUZZ_SETTINGS
@given(seeds, st.integers(1, 8))
def test_mutated_valid_messages(seed: int, rounds: int) -> None:
    rng = random.Random(seed)
    decodes_or_refuses_within_memory(mutate_bytes(rng, valid_message(rng), rounds))


@FUZZ_SETTINGS
@given(seeds)
def test_crafted_headers(seed: int) -> None:
    decodes_or_refuses_within_memory(crafted_header(random.Random(seed)))


@pytest.mark.parametrize("name", sorted(SEED_DOCUMENTS))
def test_every_seed_document_is_loadable(tmp_path: Path, name: str) -> None:
    """The fuzzer mutates valid documents: were a seed refused, every mutation would test only that refusal."""
    import json

    path, call = loaders(tmp_path)[name]
    path.write_text(json.dumps(SEED_DOCUMENTS[name]))
    call()


@pytest.mark.parametrize("name", sorted(SEED_DOCUMENTS))
def test_loaders_refuse_mutated_documents_with_our_error(tmp_path_factory: pytest.TempPathFactory, name: str) -> None:
    path, call = loaders(tmp_path_factory.mktemp(name))[name]

    @FUZZ_SETTINGS
    @given(seeds)
    def check(seed: int) -> None:
        path.write_text(mutate_document(random.Random(seed), SEED_DOCUMENTS[name]), errors="surrogatepass")
        try:
            call()
        except OUR_ERRORS:
            pass

    check()
