"""Timing events a request collects on its way through the agents, carried in the wire header's `meta`.

Why in the messages: the client learns where its time went (each stage, each hop) without a separate
metrics channel, and the demo can set measured times beside the plan's predictions. Times are unix
seconds from each host's clock, so hop times are exact on one machine and as good as clock sync across.
A peer's entries are checked field by field (`TraceEvent.from_dict`), never coerced: JSON can carry
1e400 or a 400-digit integer, which `int()`/`float()` turn into OverflowError, and a request must never
fail because of its diagnostics.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from edgecloud.errors import EdgecloudError
from edgecloud.serving.deadlines import finite_float

MAX_EVENTS = 256  # keeps the header far below the wire's header limit, even for many-stage plans
CLIENT = "client"
KINDS = ("stage", "transfer")
MAX_NAME_CHARS = 128
MAX_INT = 2**53  # exact in a double: what JSON readers elsewhere can hold


class TraceFormatError(EdgecloudError):
    """A trace entry from a peer that is not one we would write; the entry is skipped, never fatal."""


@dataclass(frozen=True)
class TraceEvent:
    """One timed step: a stage run on a device (`kind` "stage") or a message hop (`kind` "transfer")."""

    kind: str
    start_s: float
    end_s: float
    device: str  # stage: where it ran; transfer: the receiver
    sender: str | None = None  # transfer only
    stage: int | None = None  # stage: the stage run; transfer: the stage whose outputs travel (None: inputs)
    bytes: int = 0  # transfer only: tensor bytes carried

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    def to_dict(self) -> dict[str, Any]:
        item: dict[str, Any] = {"kind": self.kind, "start_s": self.start_s, "end_s": self.end_s, "device": self.device,
                                "stage": self.stage}
        if self.kind == "transfer":
            item.update(sender=self.sender, bytes=self.bytes)
        return item

    @classmethod
    def from_dict(cls, item: Any) -> "TraceEvent":
        """The event an entry from a peer describes; TraceFormatError if any field is not what we write
        (a peer's entry is never coerced: `int(1e400)` raises OverflowError, `str({...})` is no name)."""
        if not isinstance(item, Mapping):
            raise TraceFormatError("a trace entry must be a JSON object")
        kind = item.get("kind")
        if kind not in KINDS:
            raise TraceFormatError(f"trace kind {kind!r} is not one of {', '.join(KINDS)}")
        start_s, end_s = finite_float(item.get("start_s")), finite_float(item.get("end_s"))
        if start_s is None or end_s is None:
            raise TraceFormatError("trace times must be finite numbers")
        stage, n_bytes = item.get("stage"), item.get("bytes", 0)
        if stage is not None and not _is_bounded_int(stage):
            raise TraceFormatError(f"trace stage {stage!r} is not a stage index")
        if not _is_bounded_int(n_bytes):
            raise TraceFormatError(f"trace byte count {n_bytes!r} is not a byte count")
        return cls(kind=kind, start_s=start_s, end_s=end_s, device=_name(item.get("device")),
                   sender=None if item.get("sender") is None else _name(item.get("sender")),
                   stage=stage, bytes=n_bytes)


def _is_bounded_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_INT


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_NAME_CHARS:
        raise TraceFormatError("trace device names must be short non-empty strings")
    return value


def stage_event(stage: int, device: str, start_s: float, end_s: float) -> TraceEvent:
    return TraceEvent("stage", start_s, end_s, device, stage=stage)


def transfer_event(sender: str, receiver: str, sent_s: float, received_s: float, n_bytes: int,
                   from_stage: int | None = None) -> TraceEvent:
    return TraceEvent("transfer", sent_s, received_s, receiver, sender=sender, stage=from_stage, bytes=n_bytes)


def parse_trace(raw: Any) -> list[TraceEvent]:
    """Events from a message's `meta["trace"]`; entries that do not parse are skipped (the trace is
    diagnostic: a bad entry must never fail a request)."""
    if not isinstance(raw, list):
        return []
    events: list[TraceEvent] = []
    for item in raw[:MAX_EVENTS]:
        try:
            events.append(TraceEvent.from_dict(item))
        except TraceFormatError:
            continue
    return events


def encode_trace(events: Iterable[TraceEvent]) -> list[dict[str, Any]]:
    return [event.to_dict() for event in events]


class TraceLog:
    """One request's events on an agent, kept with their encoded form (what messages carry).

    Why: every message carries the whole trace so far, and most of what arrives is known already (the
    events this agent sent on, coming back with the answer; a DAG request's paths share their prefix).
    Checking each entry (`TraceEvent.from_dict`) and encoding the log for every message was ~10 % of
    an agent's CPU per hop; here a known entry is recognised by its encoded items without parsing, and
    each event is encoded once. At most MAX_EVENTS events; the rest are dropped.
    """

    def __init__(self) -> None:
        self.events: list[TraceEvent] = []
        self.encoded: list[dict[str, Any]] = []
        self._keys: set[tuple[Any, ...]] = set()

    def add(self, event: TraceEvent) -> None:
        """Append `event` unless it is known or the log is full."""
        if len(self.events) >= MAX_EVENTS:
            return
        item = event.to_dict()
        key = tuple(item.items())
        if key not in self._keys:
            self._keys.add(key)
            self.events.append(event)
            self.encoded.append(item)

    def merge_raw(self, raw: Any) -> None:
        """Add the events of a message's `meta["trace"]` not known yet; entries that do not parse are
        skipped (the trace is diagnostic: a bad entry must never fail a request)."""
        if not isinstance(raw, list):
            return
        for item in raw[:MAX_EVENTS]:
            if isinstance(item, dict):
                try:
                    if tuple(item.items()) in self._keys:
                        continue
                except TypeError:  # an unhashable value: not one of ours, parse it to find out
                    pass
            try:
                self.add(TraceEvent.from_dict(item))
            except TraceFormatError:
                continue

    def snapshot(self) -> list[dict[str, Any]]:
        """The encoded events now, for a message (a copy: the log grows on after it is sent)."""
        return list(self.encoded)
