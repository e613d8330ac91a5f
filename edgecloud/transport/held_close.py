"""Closing an MQTT connection only once the broker has read our DISCONNECT.

Why this exists: paho closes its socket right after writing DISCONNECT. When messages the broker
already sent wait unread in that socket, the kernel answers the close with a reset instead of an
orderly end (RFC 2525 2.17), and the broker's kernel drops what the broker had not read yet, the
DISCONNECT among it. The broker then sees a lost connection and keeps the session for its expiry
interval, so the same device connecting again within it looks like a second client holding its
identity (`IdentityInUseError`): a parameter server restarted right after the previous one stopped
was refused that way.

The fix keeps a duplicate of the socket's descriptor across paho's close: the connection stays open
(so no reset), and since a broker closes the connection once it has processed a DISCONNECT (MQTT 5
3.14.4, 3.1.1 3.14.4), reading the duplicate to its end of stream proves the broker read it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any, Self

logger = logging.getLogger(__name__)

DRAIN_READ_BYTES = 256 * 2**10


class HeldConnection:
    """A second descriptor of a connected socket, read to the peer's end of stream and then closed;
    a context manager, so that an error between holding and waiting does not keep the connection open."""

    def __init__(self, connected: Any | None) -> None:
        """`connected` is paho's socket (plain or TLS: only its descriptor is used); None, or a socket
        without a descriptor (a websocket wrapper), holds nothing: closing behaves as paho's own close."""
        self._held: socket.socket | None = None
        if connected is None:
            return
        try:
            descriptor = os.dup(connected.fileno())
        except (OSError, AttributeError, ValueError) as error:
            logger.debug("cannot hold the MQTT connection open across close: %s", error)
            return
        try:
            self._held = socket.socket(fileno=descriptor)
        except OSError as error:
            os.close(descriptor)
            logger.debug("cannot hold the MQTT connection open across close: %s", error)

    @property
    def holding(self) -> bool:
        return self._held is not None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._held is not None:
            self._held.close()
            self._held = None

    def wait_for_peer_close(self, timeout_s: float) -> bool:
        """Discard what arrives until the peer closes (True) or `timeout_s` passes (False); then close.
        False at once when nothing is held.

        The bytes read are messages we no longer take and, over TLS, encrypted records: neither is parsed.
        """
        held, self._held = self._held, None
        if held is None:
            return False
        deadline = time.monotonic() + timeout_s
        try:
            while (left_s := deadline - time.monotonic()) > 0:
                held.settimeout(left_s)
                if not held.recv(DRAIN_READ_BYTES):
                    return True
            return False
        except TimeoutError:
            return False
        except OSError:  # reset by the peer: the connection is gone either way
            return True
        finally:
            held.close()
