"""Software emulation of a slow link between agents that really share one fast host.

Why: on one machine every hop is loopback (well under a millisecond), so a plan made for a 20 Mbit/s
edge-cloud link cannot be checked against measurements. With emulation on, an agent holds each message
for a device back as long as the plan's link model (`devices.profiles.LinkProfile`) says it takes,
`8 * bytes / bandwidth_bps + latency_s`, and messages to one device queue behind each other as on one
link. Network namespaces with `tc` shaping (docs/architecture.md §7) are the faithful alternative; they need root.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from devices.profiles import LinkKey, LinkProfile
from edgecloud.serving.expiry import ExpiryTimer

logger = logging.getLogger(__name__)


def links_of(device: str, plan_links: Mapping[LinkKey, LinkProfile]) -> dict[str, LinkProfile]:
    """The plan's links that touch `device` (a link holds both ways), keyed by the device at the other end."""
    return {(b if a == device else a): link for (a, b), link in plan_links.items() if device in (a, b) and a != b}


class LinkEmulator:
    """Releases each submitted send when its emulated transfer ends, from one timer thread."""

    def __init__(self, links: Mapping[str, LinkProfile], send: Callable[[str, object], None]) -> None:
        self.links = dict(links)
        self._send = send
        self._busy_until_s: dict[str, float] = {}
        self._lock = threading.Lock()
        self._timer = ExpiryTimer("link-emulator")  # due times in submit order per link: sends stay in order

    def submit(self, device: str, item: object, n_bytes: int) -> None:
        """Send `item` to `device` once the link has carried it (at once when no link is emulated)."""
        link = self.links.get(device)
        if link is None:
            self._send(device, item)
            return
        with self._lock:
            now = time.monotonic()
            # The link serialises messages: this one starts when the previous one has left.
            leaves_s = max(now, self._busy_until_s.get(device, now)) + link.serialisation_s(n_bytes)
            self._busy_until_s[device] = leaves_s
            self._timer.schedule(leaves_s + link.latency_s - now, lambda: self._release(device, item))

    def close(self) -> None:
        """Stop the worker; sends still held back are dropped (the agent is shutting down)."""
        in_transit = self._timer.pending()
        if in_transit:
            logger.info("link emulator dropped %d message(s) still in transit", in_transit)
        self._timer.close()

    def _release(self, device: str, item: object) -> None:
        try:
            self._send(device, item)
        except Exception:  # a failed send must not stop the link
            logger.exception("emulated link to %s failed to send", device)
