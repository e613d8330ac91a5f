"""The scenario: where a graph is to run. Devices, the links between them, the source and sink devices,
pins and memory limits, everything a cost graph holds besides its nodes and tensors.

Why one owner: the `plan` and `sweep` commands, the demo, the benches and the tests all describe the
same thing; each used to build it by hand (and `sweep` could not take extra devices or links at all).
They now parse their strings into a `Scenario`, `validate()` it once, before a model is loaded or
profiled, and let `cost_graph()` put it together with the priced nodes and tensors. The rules are the
cost graph's own (`CostGraph.validate`), so a scenario is sound exactly when a graph built on it can be.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from devices.profiles import DeviceProfile, LinkKey, LinkProfile
from partitioner.costs.cost_graph import CostGraph, CostNode, CostTensor, keyed_links
from partitioner.errors import PartitionerError


@dataclass(frozen=True)
class Scenario:
    """Devices (name -> profile dict), links (keyed by `link_key`, in whatever order given), source and
    sink device, pins (node -> device; an ONNX node id names the layer holding it) and memory limits
    (device -> bytes, replacing the profile's `memory_bytes`), the client's link (see `CostGraph.client_link`)
    and the device whose host runs the broker (`CostGraph.broker`)."""

    devices: Mapping[str, Mapping[str, Any]]
    links: Mapping[tuple[str, str], LinkProfile]
    source: str
    sink: str
    pins: Mapping[str, str] = field(default_factory=dict)
    memory_limits_bytes: Mapping[str, int] = field(default_factory=dict)
    client_link: LinkProfile | None = None
    broker: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "links", keyed_links(self.links))

    @classmethod
    def of_profiles(cls, devices: Mapping[str, DeviceProfile], links: Mapping[tuple[str, str], LinkProfile],
                    source: str, sink: str | None = None) -> Scenario:
        """Catalogue or file devices under the names the plan gives them; the sink is the source unless given."""
        return cls({name: device.to_dict() for name, device in devices.items()}, links, source,
                   source if sink is None else sink)

    @classmethod
    def of_graph(cls, graph: CostGraph) -> Scenario:
        """The scenario a cost graph was built on (its nodes keep their own pins)."""
        return cls(graph.devices, graph.links, graph.source, graph.sink, client_link=graph.client_link, broker=graph.broker)

    def overridden(self, links: Mapping[tuple[str, str], LinkProfile] | None = None,
                   pins: Mapping[str, str] | None = None,
                   memory_limits_bytes: Mapping[str, int] | None = None,
                   client_link: LinkProfile | None = None) -> Scenario:
        """The same scenario with these links, pins, memory limits and client link given on top (each
        wins over the old)."""
        return replace(self, links={**self.links, **keyed_links(links or {})}, pins={**self.pins, **(pins or {})},
                       memory_limits_bytes={**self.memory_limits_bytes, **(memory_limits_bytes or {})},
                       client_link=self.client_link if client_link is None else client_link)

    def device_pair(self, text: str) -> LinkKey:
        """The two devices `A-B` names; device names may contain '-', so the split is the one naming two."""
        for i, char in enumerate(text):
            if char == "-" and text[:i] in self.devices and text[i + 1:] in self.devices:
                return text[:i], text[i + 1:]
        raise PartitionerError(f"the link {text!r} must name two devices as A-B, among {', '.join(self.devices)}.")

    def device_specs(self) -> dict[str, dict[str, Any]]:
        """Each device's profile dict with its memory limit applied."""
        for name in self.memory_limits_bytes:
            if name not in self.devices:
                raise PartitionerError(f"the memory limit names the unknown device {name!r} "
                                       f"(devices: {', '.join(self.devices)}).")
        return {name: {**spec, **({"memory_bytes": self.memory_limits_bytes[name]}
                                  if name in self.memory_limits_bytes else {})}
                for name, spec in self.devices.items()}

    def device_profiles(self) -> dict[str, DeviceProfile]:
        """The devices as profiles, to price a model's layers on (memory limits do not change a speed)."""
        return {name: DeviceProfile.from_dict(dict(spec), origin=f"device {name!r}") for name, spec in self.devices.items()}

    def validate(self) -> Scenario:
        """Raise one PartitionerError sentence for the first inconsistency; return self when sound (the
        pins' nodes are known, and checked, once the nodes are: in `cost_graph`)."""
        replace(self, pins={}).cost_graph({}, {})
        return self

    def cost_graph(self, nodes: Mapping[str, CostNode], tensors: Mapping[str, CostTensor], model: str | None = None,
                   model_sha256: str | None = None) -> CostGraph:
        """The validated cost graph of these nodes and tensors in this scenario, pins applied."""
        layer_of = {member: layer for layer, node in nodes.items() for member in node.members or [layer]}
        pinned = dict(nodes)
        for node, device in self.pins.items():
            layer = layer_of.get(node, node if node in nodes else None)
            if layer is None:
                raise PartitionerError(f"a pin names the unknown node {node!r}.")
            pinned[layer] = replace(pinned[layer], pin=device)
        return CostGraph(devices=self.device_specs(), links=dict(self.links), source=self.source, sink=self.sink,
                         nodes=pinned, tensors=dict(tensors), model=model, model_sha256=model_sha256,
                         client_link=self.client_link, broker=self.broker).validate()
