"""The cost graph: what a placement costs, independent of where the numbers came from.

A cost graph holds per node the seconds it takes on every device, per tensor its bytes, producer and
consumers, per device pair a link (bandwidth, latency), a source device (where graph inputs live) and a
sink device (where graph outputs must arrive). It is built from an ONNX model and device profiles
(`partitioner.costs.from_model`) or read from a JSON file (`edgecloud.costgraph/1`), so that any pipeline can
be planned. `CostArrays` is the same graph as numpy index arrays: every solver, baseline and objective
evaluation works on it, so they all read the transfer semantics from one place.

Transfer semantics: a tensor produced on device k is sent directly from k to every OTHER device that
needs it (a consumer runs there, or the tensor is a graph output and that device is the sink), once per
destination device, costing `LinkProfile.transfer_time_s(bytes)` = `8 * bytes / bandwidth_bps + latency_s` plus what the hosts and
brokers add per message (`message_s + broker_s + host_s_per_byte * bytes`, 0 unless calibrated). A tensor is
charged as one message: the agents send one message per (stage, destination) holding all its tensors, so
for a stage that sends k tensors to one device the fixed part is counted k times (exact for chains).
The client's two hops (inputs to the source, outputs back from the sink) cost the same for every
placement; with a `client_link` they are priced (`CostArrays.fixed_s`) so that the prediction is the
latency a client sees, without them (None, files from before) the prediction starts at the source.

Where the broker sits (`broker`, a device whose host runs it; None: messages go straight from device to
device, as before): every message goes device -> broker -> device, two transfers, each over the link
between those hosts or over none when they are one host. A message from edge to cloud with the broker
in the cloud crosses the link once, as without a broker; but the client on the edge reaching the edge
agent through a broker in the cloud crosses it twice (measured: all-edge at 1 Mbit/s took 2 x 49 KB on
the wire). The fixed per-message part stays the sending link's (`message_s + broker_s + host_s_per_byte *
bytes`), the wire part is the legs' (`wire_s`), the client's hops pay their legs too.
Where the devices, links, pins and memory limits come from is `partitioner.costs.scenario`'s business.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from devices.json_files import read_json_file, write_json_file
# A cost graph's link is the device catalogue's link profile; a link given in one direction holds for both.
from devices.errors import DeviceError
from devices.profiles import LinkKey, LinkProfile, link_key, links_from_list, links_to_list

from partitioner.errors import PartitionerError

COSTGRAPH_FORMAT = "edgecloud.costgraph/1"



@dataclass
class CostNode:
    """A layer: its seconds on each device, the memory it occupies where it runs, an optional pin."""

    time_s: dict[str, float]
    memory_bytes: int = 0
    pin: str | None = None
    members: list[str] | None = None  # ONNX node ids behind this layer (model-derived graphs only)


@dataclass
class CostTensor:
    """An activation: `producer` None means a graph input (it lives on the source device)."""

    bytes: int
    producer: str | None
    consumers: list[str]
    output: bool = False


@dataclass
class CostGraph:
    devices: dict[str, dict[str, Any]]  # name -> profile dict; "memory_bytes" caps the sum of its nodes'
    links: dict[LinkKey, LinkProfile]  # keyed by `link_key` (whatever order the caller gave the pair in)
    source: str
    sink: str
    nodes: dict[str, CostNode]
    tensors: dict[str, CostTensor]
    model: str | None = None  # ONNX path when built from a model
    client_link: LinkProfile | None = None  # the client's hops to the source and from the sink (None: unpriced)
    broker: str | None = None  # the device whose host runs the broker (None: device to device, no broker leg)
    model_sha256: str | None = None  # of that file when its costs were taken: plans record it, splits check it

    def __post_init__(self) -> None:
        self.links = keyed_links(self.links)

    def link(self, a: str, b: str) -> LinkProfile:
        return self.links[link_key(a, b)]

    def wire_s(self, a: str, b: str, size_bytes: Any, bucket_bytes: float = 0.0) -> Any:
        """Seconds `size_bytes` spend on the wire from a's host to b's (0 on one host), the link's
        token bucket holding `bucket_bytes` (`LinkProfile.serialisation_s`)."""
        if a == b:
            return 0.0 * size_bytes
        link = self.link(a, b)
        return link.serialisation_s(size_bytes, bucket_bytes) + link.latency_s

    @property
    def client_crosses(self) -> bool:
        """The client's hops cross a link: the broker sits on another host than the source or the sink."""
        return self.broker is not None and (self.broker != self.source or self.broker != self.sink)

    def device_bucket_bytes(self, a: str, b: str) -> float:
        """What a shaper's bucket on the a-b link holds when a device-to-device message comes (bench/tbf_bucket.py).
        The first message of a request each way finds it full: each device-to-device message (one each
        way in a chain's split) unless the client's hops cross the link. When they do, the request went
        up and came down first: a message then finds the bucket refilled by what the request's second leg
        took beyond its own bucket (measured: all-cloud at 1 Mbit/s, 64 ms, not 78 with it empty)."""
        if not self.client_crosses:
            return math.inf
        link = self.link(a, b)
        request = sum(t.bytes for t in self.tensors.values() if t.producer is None) + link.overhead_bytes
        return max(0.0, request - link.burst_bytes)

    def transfer_s(self, a: str, b: str, size_bytes: Any) -> Any:
        """Seconds of a message a -> b (a != b): through the broker's host when there is a broker, then
        what the hosts and brokers add per message (the a-b link's figures), the link's token bucket
        as `device_bucket_bytes` says."""
        link = self.link(a, b)
        bucket = self.device_bucket_bytes(a, b)
        if self.broker is None:
            return link.transfer_time_s(size_bytes, bucket)
        return self.wire_s(a, self.broker, size_bytes, bucket) + self.wire_s(self.broker, b, size_bytes, bucket) \
            + link.message_cost_s(size_bytes)

    def memory_limit_bytes(self, device: str) -> float:
        limit = self.devices[device].get("memory_bytes")
        return math.inf if limit is None else float(limit)

    def validate(self) -> CostGraph:
        """Raise one PartitionerError sentence for the first inconsistency; return self when sound."""
        if not self.devices:
            raise PartitionerError("the cost graph has no devices.")
        for role, device in (("source", self.source), ("sink", self.sink)):
            if device not in self.devices:
                raise PartitionerError(f"the {role} device {device!r} is not one of the devices {sorted(self.devices)}.")
        if self.broker is not None and self.broker not in self.devices:
            raise PartitionerError(f"the broker's device {self.broker!r} is not one of the devices {sorted(self.devices)}.")
        names = sorted(self.devices)
        for device, spec in self.devices.items():
            limit = spec.get("memory_bytes")
            if limit is not None and not (_is_number(limit) and limit >= 0):
                raise PartitionerError(f"device {device!r} has an invalid memory_bytes {limit!r}: give a non-negative number.")
        for a, b in self.links:  # the figures were checked when each LinkProfile was made
            for device in (a, b):
                if device not in self.devices:
                    raise PartitionerError(f"link {a}-{b} names the unknown device {device!r}.")
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                if link_key(a, b) not in self.links:
                    raise PartitionerError(f"there is no link between devices {a!r} and {b!r}; give one (e.g. --link {a}-{b}=20Mbit,10ms).")
        for name, node in self.nodes.items():
            for device in self.devices:
                time_s = node.time_s.get(device)
                if time_s is None:
                    raise PartitionerError(f"node {name!r} has no time for device {device!r}.")
                if not (_is_number(time_s) and time_s >= 0):
                    raise PartitionerError(f"node {name!r} has an invalid time {time_s!r} for device {device!r}.")
            if not (_is_number(node.memory_bytes) and node.memory_bytes >= 0):
                raise PartitionerError(f"node {name!r} has an invalid memory_bytes {node.memory_bytes!r}.")
            if node.pin is not None and node.pin not in self.devices:
                raise PartitionerError(f"node {name!r} is pinned to the unknown device {node.pin!r} (devices: {', '.join(names)}).")
        for name, tensor in self.tensors.items():
            if tensor.producer is not None and tensor.producer not in self.nodes:
                raise PartitionerError(f"tensor {name!r} is produced by the unknown node {tensor.producer!r}.")
            for consumer in tensor.consumers:
                if consumer not in self.nodes:
                    raise PartitionerError(f"tensor {name!r} is consumed by the unknown node {consumer!r}.")
            if not (_is_number(tensor.bytes) and tensor.bytes >= 0):
                raise PartitionerError(f"tensor {name!r} has an invalid size {tensor.bytes!r}: give a non-negative number of bytes.")
        topological_order(self)  # raises on a cycle
        return self

    def to_dict(self, relative_to: Path | None = None) -> dict[str, Any]:
        """The JSON form; the model path is written relative to `relative_to` (the file's folder) if given,
        so that a folder of model + cost graph can move, as plan files do."""
        model = self.model
        if model is not None and relative_to is not None:
            model = os.path.relpath(Path(model).resolve(), relative_to.resolve())
        return {
            "format": COSTGRAPH_FORMAT,
            "devices": self.devices,
            "links": links_to_list(self.links),
            "source": self.source,
            "sink": self.sink,
            "nodes": {name: {"time_s": node.time_s, "memory_bytes": node.memory_bytes, "pin": node.pin,
                             **({"members": node.members} if node.members is not None else {})}
                      for name, node in self.nodes.items()},
            "tensors": {name: {"bytes": t.bytes, "producer": t.producer, "consumers": t.consumers, "output": t.output}
                        for name, t in self.tensors.items()},
            **({"model": model} if model is not None else {}),
            **({"model_sha256": self.model_sha256} if self.model_sha256 is not None else {}),
            **({"client_link": self.client_link.to_dict()} if self.client_link is not None else {}),
            **({"broker": self.broker} if self.broker is not None else {}),
        }

    def save(self, path: str | Path) -> None:
        write_json_file(path, self.to_dict(relative_to=Path(path).parent), "cost graph", error=PartitionerError)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CostGraph:
        if not isinstance(data, dict) or data.get("format") != COSTGRAPH_FORMAT:
            raise PartitionerError(f"the cost graph must be a JSON object with \"format\": \"{COSTGRAPH_FORMAT}\".")
        try:
            links = links_from_list(data.get("links", []), "the cost graph")
            nodes = {
                str(name): CostNode(time_s=dict(node["time_s"]), memory_bytes=int(node.get("memory_bytes") or 0),
                                    pin=_optional_name(node.get("pin"), f"pin of node {name!r}"),
                                    members=node.get("members"))
                for name, node in data["nodes"].items()
            }
            tensors = {
                str(name): CostTensor(bytes=int(t["bytes"]),
                                      producer=_optional_name(t.get("producer"), f"producer of tensor {name!r}"),
                                      consumers=_name_list(t.get("consumers", []), f"consumers of tensor {name!r}"),
                                      output=bool(t.get("output", False)))
                for name, t in data.get("tensors", {}).items()
            }
            graph = cls(devices={str(k): dict(v or {}) for k, v in data["devices"].items()}, links=links,
                        source=_optional_name(data["source"], "source"),
                        sink=_optional_name(data.get("sink", data["source"]), "sink"), nodes=nodes, tensors=tensors,
                        model=data.get("model"), model_sha256=_optional_name(data.get("model_sha256"), "model_sha256"),
                        client_link=None if data.get("client_link") is None
                        else LinkProfile.from_dict(data["client_link"], "the cost graph's client_link"),
                        broker=_optional_name(data.get("broker"), "broker"))
        except DeviceError as error:  # a link's sentence names it already
            raise PartitionerError(str(error)) from None
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as error:
            raise PartitionerError(f"the cost graph is malformed ({type(error).__name__}: {error}).") from None
        return graph.validate()

    @classmethod
    def load(cls, path: str | Path) -> CostGraph:
        data = read_json_file(path, "cost graph", expected_format=COSTGRAPH_FORMAT, error=PartitionerError)
        try:
            graph = cls.from_dict(data)
        except PartitionerError as error:  # the sentence names the file, as the reader's do
            raise type(error)(f"cost graph file {path}: {error}") from None
        if graph.model is not None:  # relative to the cost graph's folder, as the plan's is to its own
            graph.model = str((Path(path).parent / graph.model).resolve())
        return graph


def keyed_links(links: Mapping[tuple[str, str], LinkProfile]) -> dict[LinkKey, LinkProfile]:
    """`links` keyed by `link_key`, whichever order each pair was given in; a pair given both ways is refused."""
    keyed: dict[LinkKey, LinkProfile] = {}
    for (a, b), link in links.items():
        if link_key(a, b) in keyed:
            raise PartitionerError(f"the link between devices {a!r} and {b!r} is given twice.")
        keyed[link_key(a, b)] = link
    return keyed


def _is_number(value: object) -> bool:
    """A finite int or float that a float can hold, not bool (JSON's true would otherwise count as 1;
    JSON's integers have no size limit, and 10**400 overflows the solver's float arithmetic)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _name_list(value: object, what: str) -> list[str]:
    if not isinstance(value, list):
        raise ValueError(f"{what} must be a list of node names")
    return [str(item) for item in value]


def _optional_name(value: object, what: str) -> str | None:
    """A device or node name read from a file: a string (or absent), never a list or object, which
    would otherwise surface later as 'unhashable type' instead of a sentence about the file."""
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{what} must be a name (a JSON string), not {type(value).__name__}")
    return value


def topological_order(graph: CostGraph) -> list[str]:
    """Nodes in a dependency order (Kahn, ties kept in file order); raises PartitionerError on a cycle."""
    successors: dict[str, set[str]] = {name: set() for name in graph.nodes}
    indegree = dict.fromkeys(graph.nodes, 0)
    for tensor in graph.tensors.values():
        if tensor.producer is None:
            continue
        for consumer in set(tensor.consumers):
            if consumer not in successors[tensor.producer]:
                successors[tensor.producer].add(consumer)
                indegree[consumer] += 1
    ready = [name for name, degree in indegree.items() if degree == 0]
    order: list[str] = []
    while ready:
        name = ready.pop()
        order.append(name)
        for successor in successors[name]:
            indegree[successor] -= 1
            if indegree[successor] == 0:
                ready.append(successor)
    if len(order) != len(graph.nodes):
        stuck = sorted(name for name, degree in indegree.items() if degree > 0)
        raise PartitionerError(f"the graph has a cycle through node {stuck[0]!r}.")
    return order


@dataclass(frozen=True)
class CostArrays:
    """The cost graph as index arrays (nodes in topological order) for the solvers and evaluators.

    Tensors are listed once per (tensor, consumer) in `use_tensor`/`use_node`; `home` device of a graph
    input is the source. `transfer_s[t, k, l]` is what sending tensor t from k to l costs (0 when k == l).
    """

    device_names: list[str]
    node_names: list[str]
    tensor_names: list[str]
    time_s: np.ndarray  # (n, d)
    memory_bytes: np.ndarray  # (n,)
    memory_limit_bytes: np.ndarray  # (d,) inf when unlimited
    pin: np.ndarray  # (n,) device index or -1
    producer: np.ndarray  # (T,) node index or -1 (graph input)
    tensor_bytes: np.ndarray  # (T,)
    is_output: np.ndarray  # (T,) bool
    use_tensor: np.ndarray  # (U,) tensor index of each (tensor, consumer) pair, consumers deduplicated
    use_node: np.ndarray  # (U,) consumer node index
    source: int
    sink: int
    transfer_s: np.ndarray = field(repr=False)  # (T, d, d)
    fixed_s: float = 0.0  # what every placement pays alike: the client's hops (see the module docstring)

    @property
    def n_nodes(self) -> int:
        return len(self.node_names)

    @property
    def n_devices(self) -> int:
        return len(self.device_names)

    @property
    def n_tensors(self) -> int:
        return len(self.tensor_names)

    @cached_property
    def predecessors(self) -> tuple[tuple[int, ...], ...]:
        """Each node's producer nodes, once each, in tensor order (graph inputs are not nodes): built
        once for the baselines, the schedule and the reachability walks that all need it."""
        found: list[dict[int, None]] = [{} for _ in range(self.n_nodes)]
        for t, c in zip(self.use_tensor.tolist(), self.use_node.tolist()):
            p = int(self.producer[t])
            if p >= 0:
                found[c][p] = None
        return tuple(tuple(p) for p in found)

    @cached_property
    def successors(self) -> tuple[tuple[int, ...], ...]:
        """Each node's consumer nodes, once each (the reverse of `predecessors`)."""
        found: list[list[int]] = [[] for _ in range(self.n_nodes)]
        for c, producers in enumerate(self.predecessors):
            for p in producers:
                found[p].append(c)
        return tuple(tuple(c) for c in found)

    def allowed_devices(self, node: int) -> list[int]:
        pin = int(self.pin[node])
        return [pin] if pin >= 0 else list(range(self.n_devices))

    def allowed(self) -> np.ndarray:
        """(n, d) bool: device k may run node v (every device, or only the one it is pinned to)."""
        allowed = np.ones((self.n_nodes, self.n_devices), dtype=bool)
        pinned = np.flatnonzero(self.pin >= 0)
        allowed[pinned] = False
        allowed[pinned, self.pin[pinned]] = True
        return allowed


def to_arrays(graph: CostGraph) -> CostArrays:
    """Index the (validated) graph: nodes in topological order, devices in the graph's order."""
    device_names = list(graph.devices)
    device_index = {name: i for i, name in enumerate(device_names)}
    node_names = topological_order(graph)
    node_index = {name: i for i, name in enumerate(node_names)}
    nodes = [graph.nodes[name] for name in node_names]
    d = len(device_names)
    time_s = np.array([[node.time_s[device] for device in device_names] for node in nodes], dtype=float).reshape(len(nodes), d)
    memory_bytes = np.array([node.memory_bytes for node in nodes], dtype=float)
    pin = np.array([device_index[node.pin] if node.pin is not None else -1 for node in nodes], dtype=np.int64)
    tensor_names = list(graph.tensors)
    tensors = [graph.tensors[name] for name in tensor_names]
    producer = np.array([node_index[t.producer] if t.producer is not None else -1 for t in tensors], dtype=np.int64)
    tensor_bytes = np.array([t.bytes for t in tensors], dtype=float)
    is_output = np.array([t.output for t in tensors], dtype=bool)
    use_tensor, use_node = [], []
    for index, tensor in enumerate(tensors):
        for consumer in dict.fromkeys(tensor.consumers):
            use_tensor.append(index)
            use_node.append(node_index[consumer])
    transfer_s = np.zeros((len(tensors), d, d))  # the diagonal stays 0: no transfer within a device
    for a in device_names:
        for b in device_names:
            if a != b:
                transfer_s[:, device_index[a], device_index[b]] = graph.transfer_s(a, b, tensor_bytes)
    return CostArrays(
        device_names=device_names, node_names=node_names, tensor_names=tensor_names, time_s=time_s,
        memory_bytes=memory_bytes,
        memory_limit_bytes=np.array([_binding_limit(graph.memory_limit_bytes(name), memory_bytes.sum())
                                     for name in device_names]),
        pin=pin, producer=producer, tensor_bytes=tensor_bytes, is_output=is_output,
        use_tensor=np.array(use_tensor, dtype=np.int64), use_node=np.array(use_node, dtype=np.int64),
        source=device_index[graph.source],
        sink=device_index[graph.sink], transfer_s=transfer_s, fixed_s=sum(client_hops_s(graph)),
    )


def client_hops_s(graph: CostGraph) -> tuple[float, float]:
    """Seconds of the client's request (every graph input in one message, the client on the source) and
    of the answer (every graph output, the client on the sink): the client link's figures, plus the
    wire there and back when the broker is on another host (the request's legs are the first each way
    and find a shaper's bucket full, the answer's follow them and are priced with it empty,
    `CostGraph.device_bucket_bytes`); (0, 0) with neither."""
    inputs = sum(t.bytes for t in graph.tensors.values() if t.producer is None)
    outputs = sum(t.bytes for t in graph.tensors.values() if t.output)

    def hop_s(device: str, n_bytes: int, bucket_bytes: float) -> float:
        own = 0.0 if graph.client_link is None else graph.client_link.transfer_time_s(n_bytes)
        legs = 0.0 if graph.broker is None else (graph.wire_s(device, graph.broker, n_bytes, bucket_bytes)
                                                 + graph.wire_s(graph.broker, device, n_bytes, bucket_bytes))
        return float(own + legs)

    return hop_s(graph.source, inputs, math.inf), hop_s(graph.sink, outputs, 0.0)


def _binding_limit(limit_bytes: float, total_bytes: float) -> float:
    """A limit that even all nodes together fit under constrains nothing: drop it (inf), so that the
    exact two-device min-cut stays applicable and the MIP carries no redundant row."""
    return math.inf if limit_bytes >= total_bytes else limit_bytes
