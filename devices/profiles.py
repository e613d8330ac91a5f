"""Device and link profiles: the few figures a planner needs to cost a layer or a transfer on a device
it does not have at hand, loaded from JSON data files that name the public source of every figure.

Catalogue devices are data (`devices/catalogue/<name>.json`); `host` is this machine, measured once and
cached (see `devices.host`), so the package never holds a figure nobody can trace.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from devices.errors import DeviceError
from devices.json_files import read_json_file, write_json_file

HOST_DEVICE_NAME = "host"
LINK_PRESETS_FILE = "links.json"
PREDICTOR_FILE = "predictor.json"
_NOT_DEVICE_FILES = frozenset({LINK_PRESETS_FILE, PREDICTOR_FILE})

_DEVICE_FIGURES: dict[str, type] = {
    "peak_flops": float,
    "memory_bandwidth_bytes_per_s": float,
    "memory_bytes": int,
    "threads": int,
}
_LINK_FIGURES: tuple[str, ...] = ("bandwidth_bps", "latency_s")
# Optional figures of a link (0 when absent, so files written before them load unchanged), measured
# once per deployment by `edgecloud calibrate` (see `edgecloud.calibrate`).
_MESSAGE_FIGURES: tuple[str, ...] = ("message_s", "broker_s", "host_s_per_byte", "burst_bytes", "overhead_bytes")
CLIENT_LINK_KEY = "client_link"  # a calibrated link file may also price the client's own hops


def _positive_number(value: Any, key: str, owner: str, allow_zero: bool = False) -> float:
    """A finite number > 0 (or >= 0); booleans and strings are refused because JSON lets both slip in."""
    try:  # math.isfinite raises OverflowError on an int beyond the float range, which JSON allows
        finite = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    except OverflowError:
        finite = False
    if not finite:
        raise DeviceError(f"{owner}: '{key}' must be a finite number, got {value!r}.")
    if value < 0 or (value == 0 and not allow_zero):
        bound = "non-negative" if allow_zero else "positive"
        raise DeviceError(f"{owner}: '{key}' must be {bound}, got {value!r}.")
    return float(value)


@dataclass(frozen=True)
class DeviceProfile:
    """What a device can do, in the units the cost model uses (FLOP/s, bytes/s, bytes, threads)."""

    name: str
    peak_flops: float
    memory_bandwidth_bytes_per_s: float
    memory_bytes: int
    threads: int
    sources: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any, origin: str = "device profile") -> DeviceProfile:
        """Validate and build; `origin` names the file in the one-sentence error."""
        if not isinstance(d, dict):
            raise DeviceError(f"{origin}: expected a JSON object, got {type(d).__name__}.")
        missing = [key for key in ("name", *_DEVICE_FIGURES) if key not in d]
        if missing:
            raise DeviceError(f"{origin}: missing key(s) {', '.join(missing)}.")
        if not isinstance(d["name"], str) or not d["name"]:
            raise DeviceError(f"{origin}: 'name' must be a non-empty string.")
        figures: dict[str, Any] = {}
        for key, kind in _DEVICE_FIGURES.items():
            value = _positive_number(d[key], key, origin)
            if kind is int and value != int(value):
                raise DeviceError(f"{origin}: '{key}' must be a whole number, got {d[key]!r}.")
            figures[key] = kind(value)
        sources = d.get("sources", {})
        if not isinstance(sources, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in sources.items()
        ):
            raise DeviceError(f"{origin}: 'sources' must map figure names to source strings.")
        return cls(name=d["name"], sources=dict(sources), **figures)

    def save(self, path: str | Path) -> None:
        write_json_file(path, self.to_dict(), "device profile", indent=2)


LinkKey = tuple[str, str]


def link_key(a: str, b: str) -> LinkKey:
    """The one key of the link between devices a and b: a link holds both ways, so the pair is sorted."""
    return (a, b) if a <= b else (b, a)


@dataclass(frozen=True)
class LinkProfile:
    """A network link: a message of b bytes costs, in either direction,

        8*b/bandwidth_bps + latency_s                      on the wire, plus
        message_s + broker_s + host_s_per_byte * b         at the hosts and brokers it passes;

    where b on the wire counts `overhead_bytes` beyond the tensors (headers, topic); a message that
    finds a shaper's token bucket full pays 8*max(0, b - burst_bytes)/bandwidth_bps on the wire instead
    (which messages find it full is the cost graph's rule, `CostGraph.transfer_s`).

    The second line is what a real deployment pays per message beyond the wire (measured here: ~0.3-1 ms
    a hop through Mosquitto where the wire model said 0): `message_s` is our client library at both ends
    (encode, publish, acknowledgements, decode, the agent's hand-off), `broker_s` the broker path (device
    -> broker -> device is two transfers; a bridge adds a broker and a transfer), `host_s_per_byte` the
    copies on the way. All three default to 0 (the wire alone, as before) and are measured once per
    deployment by `edgecloud calibrate --broker URL`. `burst_bytes` (0: no bucket) is what a shaper
    such as tbf lets through at once after an idle moment, in the bytes the cost graph counts (tensor
    bytes: the frames' and the message's own headers already taken out); the bandwidth is then the rate
    behind the bucket (bench/tbf_bucket.py measured both on the testbed's link). `overhead_bytes` (0:
    not counted) is what a message carries on the wire beyond its tensors, in the same bytes.

    The figures are checked when the link is made, wherever it comes from (a catalogue file, a plan, a
    cost graph, a command-line option), so no consumer checks them again."""

    bandwidth_bps: float
    latency_s: float
    message_s: float = 0.0
    broker_s: float = 0.0
    host_s_per_byte: float = 0.0
    burst_bytes: float = 0.0
    overhead_bytes: float = 0.0

    def __post_init__(self) -> None:
        _check_link_figures(self.bandwidth_bps, self.latency_s, "link")
        object.__setattr__(self, "bandwidth_bps", float(self.bandwidth_bps))
        object.__setattr__(self, "latency_s", float(self.latency_s))
        for key in _MESSAGE_FIGURES:
            object.__setattr__(self, key, _positive_number(getattr(self, key), key, "link", allow_zero=True))

    def serialisation_s(self, size_bytes: Any, bucket_bytes: float = 0.0) -> Any:
        """Seconds the link is busy putting `size_bytes` on the wire (a number, or a numpy array of sizes),
        beyond what the shaper's bucket lets through at once when it holds `bucket_bytes` (at most
        `burst_bytes`; math.inf: full)."""
        on_wire = size_bytes + self.overhead_bytes
        held = min(bucket_bytes, self.burst_bytes)
        if held <= 0:
            return 8.0 * on_wire / self.bandwidth_bps
        excess = on_wire - held
        return 8.0 * (excess * (excess > 0)) / self.bandwidth_bps

    def message_cost_s(self, size_bytes: Any) -> Any:
        """Seconds a message costs beyond the wire: client libraries, broker path, copies."""
        return self.message_s + self.broker_s + self.host_s_per_byte * size_bytes

    def transfer_time_s(self, size_bytes: Any, bucket_bytes: float = 0.0) -> Any:
        """Seconds from the send call to the message in the receiver's hands (a number, or a numpy
        array of sizes): the wire, then what the hosts and brokers on the way add."""
        return self.serialisation_s(size_bytes, bucket_bytes) + self.latency_s + self.message_cost_s(size_bytes)

    def to_dict(self) -> dict[str, float]:
        """The figures; the per-message ones only when measured (old readers and files stay as they were)."""
        figures = asdict(self)
        return {key: value for key, value in figures.items() if key in _LINK_FIGURES or value}

    @classmethod
    def from_dict(cls, d: Any, origin: str = "link profile") -> LinkProfile:
        if not isinstance(d, dict):
            raise DeviceError(f"{origin}: expected a JSON object, got {type(d).__name__}.")
        missing = [key for key in _LINK_FIGURES if key not in d]
        if missing:
            raise DeviceError(f"{origin}: missing key(s) {', '.join(missing)}.")
        _check_link_figures(d["bandwidth_bps"], d["latency_s"], origin)
        extra = {key: _positive_number(d[key], key, origin, allow_zero=True) for key in _MESSAGE_FIGURES if key in d}
        return cls(bandwidth_bps=d["bandwidth_bps"], latency_s=d["latency_s"], **extra)


def _check_link_figures(bandwidth_bps: Any, latency_s: Any, origin: str) -> None:
    _positive_number(bandwidth_bps, "bandwidth_bps", origin)
    _positive_number(latency_s, "latency_s", origin, allow_zero=True)


def links_to_list(links: dict[LinkKey, LinkProfile]) -> list[dict[str, Any]]:
    """The JSON form of a set of links (cost graphs and plans): one `{"from", "to", figures}` per link."""
    return [{"from": a, "to": b, **link.to_dict()} for (a, b), link in links.items()]


def links_from_list(items: Any, origin: str) -> dict[LinkKey, LinkProfile]:
    """Parse `links_to_list`'s form (a missing latency is 0 s, as files written by hand may leave it
    out); each link is checked by `LinkProfile.from_dict`, and a pair given twice is refused."""
    if not isinstance(items, list):
        raise DeviceError(f"{origin}: 'links' must be a list of links.")
    links: dict[LinkKey, LinkProfile] = {}
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("from"), str) or not isinstance(item.get("to"), str):
            raise DeviceError(f"{origin}: each link needs the device names 'from' and 'to', got {item!r}.")
        key = link_key(item["from"], item["to"])
        if key in links:
            raise DeviceError(f"{origin}: the link {key[0]}-{key[1]} is given twice.")
        links[key] = LinkProfile.from_dict({"latency_s": 0.0, **item}, origin=f"{origin}, link {key[0]}-{key[1]}")
    return links


def _catalogue_folder() -> Path:
    return Path(str(resources.files("devices") / "catalogue"))


def catalogue_path(file_name: str) -> Path:
    """Path of a data file shipped in `devices/catalogue/`."""
    return _catalogue_folder() / file_name


def shipped_device_files() -> dict[str, Path]:
    """Device name -> its data file in `devices/catalogue/` (the shipped profiles, not `host`)."""
    return {path.stem: path for path in sorted(_catalogue_folder().glob("*.json"))
            if path.name not in _NOT_DEVICE_FILES}


@cache
def load_shipped_device(name: str) -> DeviceProfile:
    """A shipped profile by name (KeyError for any other name)."""
    path = shipped_device_files()[name]
    return DeviceProfile.from_dict(read_json_file(path, "device profile"), origin=str(path))


@cache
def _link_presets_with_sources() -> dict[str, tuple[LinkProfile, dict[str, str]]]:
    path = catalogue_path(LINK_PRESETS_FILE)
    data = read_json_file(path, "link presets")
    if not isinstance(data, dict):
        raise DeviceError(f"{path}: expected a JSON object of named links.")
    return {
        name: (LinkProfile.from_dict(entry, origin=f"{path} [{name}]"), dict(entry.get("sources", {})))
        for name, entry in data.items()
    }


def link_presets() -> dict[str, LinkProfile]:
    """Named links ("wifi", "4g", "ethernet", ...) with published typical figures."""
    return {name: link for name, (link, _) in _link_presets_with_sources().items()}


def link_sources(name: str) -> dict[str, str]:
    """The public source of each figure of a named link."""
    return _link_presets_with_sources()[name][1]


def load_link(name_or_path: str) -> LinkProfile:
    """A named link preset or a link JSON file (`{"bandwidth_bps": ..., "latency_s": ...}`)."""
    return load_link_with_client(name_or_path)[0]


def load_link_with_client(name_or_path: str) -> tuple[LinkProfile, LinkProfile | None]:
    """A link preset or file, and the client's link a calibrated file also holds (`client_link`), else None."""
    presets = link_presets()
    if name_or_path in presets:
        return presets[name_or_path], None
    path = Path(name_or_path)
    if path.suffix != ".json" and not path.exists():
        raise DeviceError(f"unknown link '{name_or_path}': use one of {', '.join(presets)} or a JSON file.")
    data = read_json_file(path, "link profile")
    link = LinkProfile.from_dict(data, origin=str(path))
    client = data.get(CLIENT_LINK_KEY)
    return link, None if client is None else LinkProfile.from_dict(client, origin=f"{path} [{CLIENT_LINK_KEY}]")
