"""Fuzz the wire decoder and the JSON file loaders: every input must be accepted or refused with our own
error type, and no input may make the parser allocate more than a small multiple of its own size.

    python bench/fuzz_wire.py [--wire 120000] [--loader 5000] [--seed 0] [--out bench/results/fuzz_wire.json]

Inputs (seeded; the same seed gives the same inputs):
- wire: random bytes (with and without a valid prefix), valid messages mutated 1-8 times (bit flips,
  byte overwrites, insertions, deletions, truncation, extension, a patched header length), and crafted
  headers: a well-formed prefix and JSON header whose values are drawn from hostile ones (4000-digit
  integers, 2**63, negative and zero sizes, floats, wrong types, deep nesting, long strings, duplicate
  tensors), followed by as many data bytes as the header claims, or a few more or fewer.
- loaders, through their public functions (`partitioner.plan.plan_file.load_plan`,
  `partitioner.split.manifest.load_manifest`, `partitioner.costs.cost_graph.CostGraph.load`,
  `devices.lookup.load_device`, `devices.profiles.load_link`): a valid document with 1-4 values
  replaced by hostile ones, keys deleted or added, or its text mutated byte-wise.
"Our own error type" means `edgecloud.errors.EdgecloudError`, `partitioner.errors.PartitionerError` or
`devices.errors.DeviceError`: all subclass ValueError, so a bare ValueError (numpy's, Python's) counts as
an escape. Allocation is measured with tracemalloc (numpy reports its buffers to it) as the peak above
what was allocated before the call. The machine is shared with other jobs: the rates are indicative.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import struct
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from devices.errors import DeviceError
from devices.lookup import load_device
from devices.profiles import load_link
from edgecloud.errors import EdgecloudError
from edgecloud.transport.wire import DTYPES, KINDS, MAGIC, PREFIX_BYTES, VERSION, Message, decode, encode
from partitioner.costs.cost_graph import CostGraph
from partitioner.errors import PartitionerError
from partitioner.plan.plan_file import load_plan
from partitioner.split.manifest import MANIFEST_FILE, load_manifest

OUR_ERRORS = (EdgecloudError, PartitionerError, DeviceError)
# Allowed extra allocation while parsing an input of n bytes: JSON parsing builds a few objects per
# byte; anything that scales with a *declared* size instead (a shape, a length) breaks this bound.
ALLOCATION_BASE_BYTES = 2**20
ALLOCATION_PER_INPUT_BYTE = 16

HOSTILE_VALUES: tuple[Any, ...] = (
    None, True, False, 0, -1, 1, 2**31, 2**63, -2**63, 2**64 + 1, 10**4000, -(10**4000), 1e308, -1e308, 0.5, 1e-320,
    "", "x" * 10_000, "\u202e\ud7ff\U0001f600", "NaN", "../../etc/passwd", "/dev/zero", [], {}, [[[[[]]]]], [0] * 1000,
    {"a": {"b": {"c": {}}}}, [2**63, 0], [0, 2**63], [10**4000, 10**4000], [-1], [1.5], ["1"],
)


def hostile(rng: random.Random) -> Any:
    """A value from HOSTILE_VALUES, sometimes nested deeply (up to 200 levels: below json's recursion limit)."""
    value = copy.deepcopy(rng.choice(HOSTILE_VALUES))  # a fresh object: a shared one could be nested into itself
    if rng.random() < 0.05:
        for _ in range(rng.randrange(1, 200)):
            value = [value] if rng.random() < 0.5 else {"k": value}
    return value


# -- wire inputs ----------------------------------------------------------------------------------

def valid_message(rng: random.Random) -> bytes:
    tensors = {}
    for index in range(rng.randrange(0, 4)):
        dtype = np.dtype(rng.choice(DTYPES))
        shape = tuple(rng.randrange(0, 5) for _ in range(rng.randrange(0, 4)))
        data = np.frombuffer(rng.randbytes(int(np.prod(shape)) * dtype.itemsize), dtype=np.uint8)
        tensors[f"t{index}"] = data.view(dtype).reshape(shape) if dtype != np.bool_ else (data % 2).astype(bool).reshape(shape)
    return encode(Message(rng.choice(KINDS), f"r{rng.randrange(10**6)}", rng.choice(["edge", "cloud"]), tensors,
                          reply_to=rng.choice([None, "edgecloud/d/client/in"]), deadline=rng.choice([None, 1e9]),
                          meta={"stage": rng.randrange(5)}))


def mutate_bytes(rng: random.Random, data: bytes, rounds: int) -> bytes:
    buffer = bytearray(data)
    for _ in range(rounds):
        operation = rng.randrange(7)
        position = rng.randrange(len(buffer) + 1)
        if operation == 0 and buffer:
            buffer[position % len(buffer)] ^= 1 << rng.randrange(8)
        elif operation == 1 and buffer:
            buffer[position % len(buffer)] = rng.randrange(256)
        elif operation == 2:
            buffer[position:position] = rng.randbytes(rng.randrange(1, 9))
        elif operation == 3:
            del buffer[position:position + rng.randrange(1, 9)]
        elif operation == 4:
            del buffer[position:]
        elif operation == 5:
            buffer += rng.randbytes(rng.randrange(1, 64))
        elif len(buffer) >= PREFIX_BYTES:  # a plausible but wrong header length
            struct.pack_into("<I", buffer, 8, rng.choice([0, 1, len(buffer), 2**16, 2**32 - 1, rng.randrange(2**32)]))
    return bytes(buffer)


def crafted_header(rng: random.Random) -> bytes:
    def pick(good: Any) -> Any:
        return hostile(rng) if rng.random() < 0.15 else good

    tensors = []
    for index in range(rng.randrange(0, 3) if rng.random() < 0.95 else 70):  # 70: more than max_tensors
        dtype = pick(rng.choice(DTYPES))
        shape = pick([pick(rng.choice([0, 1, 2, 3, 2**20, 2**31, 2**63])) for _ in range(rng.randrange(0, 4))])
        sizes_ok = isinstance(shape, list) and all(type(size) is int and 0 <= size < 2**64 for size in shape)
        length = math.prod(shape) * np.dtype(dtype).itemsize if sizes_ok and dtype in DTYPES else rng.randrange(64)
        entry = {"name": pick(f"t{index % max(1, rng.randrange(3))}"), "dtype": dtype, "shape": shape,
                 "length": pick(length)}
        if rng.random() < 0.05:
            entry.pop(rng.choice(sorted(entry)))
        tensors.append(entry)
    header: Any = {"request_id": pick("r"), "sender": pick("edge"), "reply_to": pick(None), "deadline": pick(None),
                   "kind": pick("activation"), "meta": pick({}), "tensors": pick(tensors)}
    if rng.random() < 0.05:
        header = hostile(rng)
    body = json.dumps(header).encode()
    body += b" " * (-(PREFIX_BYTES + len(body)) % 8)
    declared = sum(entry.get("length", 0) if isinstance(entry, dict) and isinstance(entry.get("length"), int) else 0
                   for entry in (tensors if isinstance(tensors, list) else []))
    data_bytes = max(0, min(declared, 4096) + rng.choice([0, 0, 0, -1, 1, 8]))
    return struct.pack("<4sB3sI", MAGIC, VERSION, b"\0\0\0", len(body)) + body + bytes(data_bytes)


def wire_inputs(seed: int, count: int) -> Iterator[tuple[str, bytes]]:
    """`count` (category, payload) pairs, the three categories in turn."""
    rng = random.Random(seed)
    prefix = struct.pack("<4sB3sI", MAGIC, VERSION, b"\0\0\0", 0)
    for index in range(count):
        category = ("random", "mutated", "crafted")[index % 3]
        if category == "random":
            data = rng.randbytes(rng.randrange(0, 2048))
            yield category, (prefix[:8] + data if rng.random() < 0.5 else data)
        elif category == "mutated":
            yield category, mutate_bytes(rng, valid_message(rng), rng.randrange(1, 9))
        else:
            yield category, crafted_header(rng)


# -- loader inputs --------------------------------------------------------------------------------

SEED_DOCUMENTS: dict[str, dict[str, Any]] = {
    "plan": {
        "format": "edgecloud.plan/1", "model": None, "objective": "latency", "devices": {"edge": {}, "cloud": {}},
        "links": [{"from": "edge", "to": "cloud", "bandwidth_bps": 2e7, "latency_s": 0.01}],
        "source": "edge", "sink": "edge", "placement": {"a": "edge", "b": "cloud"}, "predicted_s": 0.01,
        "breakdown": {"compute_s": {"edge": 0.0, "cloud": 0.0}, "transfer_s": {}}, "crossing_tensors": [],
        "baselines": {"all_edge": 0.02}, "solver": {"name": "highs", "status": "optimal", "time_s": 0.01, "gap": 0.0},
    },
    "cost_graph": {
        "format": "edgecloud.costgraph/1", "devices": {"edge": {}, "cloud": {}},
        "links": [{"from": "edge", "to": "cloud", "bandwidth_bps": 2e7, "latency_s": 0.001}],
        "source": "edge", "sink": "edge",
        "nodes": {"a": {"time_s": {"edge": 0.01, "cloud": 0.001}, "memory_bytes": 10, "pin": "edge"},
                  "b": {"time_s": {"edge": 0.02, "cloud": 0.002}, "memory_bytes": 10, "pin": None}},
        "tensors": {"in": {"bytes": 100, "producer": None, "consumers": ["a"], "output": False},
                    "mid": {"bytes": 50, "producer": "a", "consumers": ["b"], "output": False},
                    "out": {"bytes": 4, "producer": "b", "consumers": [], "output": True}},
    },
    "manifest": {
        "format": "edgecloud.split/1", "model": "/abs/model.onnx", "plan_sha256": "0" * 64, "source": "edge", "sink": "edge",
        "graph_inputs": [{"name": "input", "dtype": "float32", "shape": ["batch", 4]}],
        "graph_outputs": [{"name": "output", "dtype": "float32", "shape": ["batch", 2]}],
        "stage_order": [0, 1], "devices": {"edge": {"stages": [0]}, "cloud": {"stages": [1]}},
        "source_outputs": [{"tensor": "input", "to": [{"device": "edge", "stage": 0}]}],
        "sink_inputs": [{"tensor": "output", "from": {"device": "cloud", "stage": 1}}],
        "stages": [{"index": 0, "device": "edge", "file": "stage_00_edge.onnx", "nodes": ["n0"],
                    "inputs": [{"tensor": "input", "from": "source"}],
                    "outputs": [{"tensor": "h", "to": [{"device": "cloud", "stage": 1}]}]},
                   {"index": 1, "device": "cloud", "file": "stage_01_cloud.onnx", "nodes": ["n1"],
                    "inputs": [{"tensor": "h", "from": {"device": "edge", "stage": 0}}],
                    "outputs": [{"tensor": "output", "to": [], "sink": True}]}],
    },
    "device": {"name": "board", "peak_flops": 4.8e10, "memory_bandwidth_bytes_per_s": 1.28e10,
               "memory_bytes": 4294967296, "threads": 4},
    "link": {"bandwidth_bps": 5e7, "latency_s": 0.001},
}


def _paths(document: Any) -> list[tuple[Any, Any]]:
    """(container, key) of every value inside `document`."""
    found: list[tuple[Any, Any]] = []
    stack = [document]
    while stack:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            found.append((node, key))
            stack.append(value)
    return found


def mutate_document(rng: random.Random, document: dict[str, Any]) -> str:
    """The JSON text of `document` after 1-4 structural mutations, or its text mutated byte-wise."""
    if rng.random() < 0.2:
        return mutate_bytes(rng, json.dumps(document).encode(), rng.randrange(1, 9)).decode("utf-8", "replace")
    copy = json.loads(json.dumps(document))
    for _ in range(rng.randrange(1, 5)):
        paths = _paths(copy)
        if not paths:
            break
        container, key = rng.choice(paths)
        choice = rng.random()
        if choice < 0.7:
            container[key] = hostile(rng)
        elif choice < 0.85:
            del container[key]
        elif isinstance(container, dict):
            container[f"extra{rng.randrange(9)}"] = hostile(rng)
        else:
            container.append(hostile(rng))
    return json.dumps(copy)


def loaders(workdir: Path) -> dict[str, tuple[Path, Callable[[], object]]]:
    """Loader name -> (the file it reads, a call of its public load function on it)."""
    split_dir = workdir / "split"
    split_dir.mkdir(exist_ok=True)
    files = {"plan": workdir / "plan.json", "cost_graph": workdir / "graph.json", "manifest": split_dir / MANIFEST_FILE,
             "device": workdir / "device.json", "link": workdir / "link.json"}
    calls: dict[str, Callable[[], object]] = {
        "plan": lambda: load_plan(files["plan"]), "cost_graph": lambda: CostGraph.load(files["cost_graph"]),
        "manifest": lambda: load_manifest(split_dir), "device": lambda: load_device(str(files["device"])),
        "link": lambda: load_link(str(files["link"])),
    }
    return {name: (files[name], calls[name]) for name in files}


# -- running --------------------------------------------------------------------------------------

@dataclass
class Tally:
    inputs: int = 0
    accepted: int = 0
    refused: int = 0
    escapes: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)
    over_allocation: int = 0
    max_extra_bytes: int = 0
    seconds: float = 0.0

    def record(self, call: Callable[[], object], input_bytes: int, describe: Callable[[], str]) -> None:
        self.inputs += 1
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        try:
            call()
            self.accepted += 1
        except OUR_ERRORS:
            self.refused += 1
        except Exception as error:  # noqa: BLE001  (an escape is what we are counting)
            kind = type(error).__name__
            self.escapes[kind] = self.escapes.get(kind, 0) + 1
            if len(self.examples) < 5:
                self.examples.append(f"{kind}: {str(error)[:120]} <- {describe()[:300]}")
        extra = tracemalloc.get_traced_memory()[1] - before
        self.max_extra_bytes = max(self.max_extra_bytes, extra)
        if extra > ALLOCATION_BASE_BYTES + ALLOCATION_PER_INPUT_BYTE * input_bytes:
            self.over_allocation += 1

    @property
    def escaped(self) -> int:
        return sum(self.escapes.values())


def fuzz_wire(seed: int, count: int) -> dict[str, Tally]:
    tallies: dict[str, Tally] = {}
    for category, payload in wire_inputs(seed, count):
        tally = tallies.setdefault(category, Tally())
        started = time.perf_counter()
        tally.record(lambda: decode(payload), len(payload), lambda: repr(payload[:300]))
        tally.seconds += time.perf_counter() - started
    return tallies


def fuzz_loaders(seed: int, count: int, workdir: Path) -> dict[str, Tally]:
    rng = random.Random(seed)
    tallies: dict[str, Tally] = {}
    for name, (path, call) in loaders(workdir).items():
        tally = tallies.setdefault(name, Tally())
        for _ in range(count):
            text = mutate_document(rng, SEED_DOCUMENTS[name])
            path.write_text(text, errors="surrogatepass")
            started = time.perf_counter()
            tally.record(call, len(text), lambda: text)
            tally.seconds += time.perf_counter() - started
    return tallies


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--wire", type=int, default=120_000, help="wire inputs (three categories in turn)")
    parser.add_argument("--loader", type=int, default=5_000, help="inputs per loader")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "fuzz_wire.json")
    args = parser.parse_args()
    tracemalloc.start()
    results: dict[str, Tally] = {f"wire/{name}": tally for name, tally in fuzz_wire(args.seed, args.wire).items()}
    with tempfile.TemporaryDirectory(prefix="edgecloud-fuzz-") as workdir:
        results |= {f"loader/{name}": tally for name, tally in fuzz_loaders(args.seed, args.loader, Path(workdir)).items()}
    tracemalloc.stop()
    print("| target | inputs | accepted | refused (our error) | escaped | over allocation limit | max extra alloc (KiB) | inputs/s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, tally in results.items():
        print(f"| {name} | {tally.inputs} | {tally.accepted} | {tally.refused} | {tally.escaped} | {tally.over_allocation} "
              f"| {tally.max_extra_bytes / 1024:.0f} | {tally.inputs / max(tally.seconds, 1e-9):.0f} |")
    for name, tally in results.items():
        for example in tally.examples:
            print(f"escape in {name}: {example}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"seed": args.seed, "results": {
        name: {"inputs": t.inputs, "accepted": t.accepted, "refused": t.refused, "escapes": t.escapes,
               "examples": t.examples, "over_allocation": t.over_allocation, "max_extra_bytes": t.max_extra_bytes,
               "seconds": t.seconds} for name, t in results.items()}}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
