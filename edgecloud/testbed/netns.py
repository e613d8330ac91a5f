"""An edge and a cloud host on one machine: two network namespaces joined by a veth pair shaped by `tc`.

Why namespaces: every process of a deployment (broker, agents, client) keeps its own sockets, and a
message between the hosts crosses a real kernel link whose bandwidth `tbf` limits in each direction,
so transfer times are measured rather than computed. The kernel here has no `netem`, so there is no
propagation delay on the link: the veth adds ~0.05 ms, and the testbed plans and measures at latency 0
(docs/architecture.md §7). Addresses come from 198.18.0.0/15, the range RFC 2544 reserves for
benchmarking: edge 198.18.0.1, cloud 198.18.0.2 (/30). Each emulation has namespaces of its own, so the
same addresses never meet; names carry the creating process id and a counter, so parallel runs and
tests do not collide.

Processes join a namespace through `ip netns exec` (`exec_prefix`); this process's own sockets, and
children whose Popen drops root (Mosquitto), through `entered`, which moves the calling thread only
(setns(2); Python 3.11 has no os.setns) and moves it back on exit. Everything is removed on `close`, on
an exception during setup, and at interpreter exit (edgecloud.testbed.host_commands.Teardown).
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Self

from edgecloud.testbed.host_commands import Teardown, TestbedError, owner_alive, run, system_binary

logger = logging.getLogger(__name__)

Side = Literal["edge", "cloud"]
SIDES: tuple[Side, Side] = ("edge", "cloud")
ADDRESSES: dict[Side, str] = {"edge": "198.18.0.1", "cloud": "198.18.0.2"}  # RFC 2544 benchmarking range
PREFIX_LENGTH = 30
NAMESPACE_PREFIX = "ectb-"  # ectb-<pid>-<n>-edge
VETH_PREFIX = "tb"  # tb<pid>x<n>e: interface names hold at most 15 characters
NETNS_DIR = "/run/netns"
MTU_BYTES = 1514
# tbf's bucket: two full frames, or 0.2 ms at the rate when that is more. A bucket's worth passes at
# once, so it must be small for a small message to pay 8 b / rate (3 KB at 20 Mbit/s: 0.96 of the rate
# with two frames, free with a 2 ms bucket); one frame caps bulk transfers at 0.83 of 100 Mbit/s, two
# hold 0.95 (the rest is TCP/IP headers: 1448 payload bytes per 1514-byte frame), measured here.
# Its queue: half a second at the rate.
BURST_S = 0.0002
QUEUE_S = 0.5
MIN_QUEUE_BYTES = 128 * 1024
_CLONE_NEWNET = 0x40000000
_counter = itertools.count(1)


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise TestbedError(f"cannot enter a network namespace: {os.strerror(code)} ({errno.errorcode.get(code, code)}).")


def tbf_burst_bytes(rate_bps: float) -> int:
    """The bucket tbf gets at `rate_bps` (frame bytes): what passes at once once it has refilled."""
    return max(2 * MTU_BYTES, int(rate_bps / 8 * BURST_S))


def tbf_arguments(rate_bps: float) -> list[str]:
    """`tc ... tbf` arguments for `rate_bps`: rate in bit/s, bucket and queue in bytes."""
    rate_bytes_per_s = rate_bps / 8
    burst = tbf_burst_bytes(rate_bps)
    limit = max(MIN_QUEUE_BYTES, 2 * burst, int(rate_bytes_per_s * QUEUE_S))
    return ["tbf", "rate", f"{int(rate_bps)}bit", "burst", str(burst), "limit", str(limit)]


@dataclass(frozen=True)
class Shaping:
    """The rate `tbf` holds each direction to (bit/s): edge -> cloud and cloud -> edge."""

    uplink_bps: float
    downlink_bps: float


class EmulatedLink:
    """Namespaces "edge" and "cloud" (unique names) joined by a shaped veth pair; a context manager."""

    def __init__(self) -> None:
        tag = f"{os.getpid()}-{next(_counter)}"
        self.namespaces: dict[Side, str] = {side: f"{NAMESPACE_PREFIX}{tag}-{side}" for side in SIDES}
        veth = f"{VETH_PREFIX}{tag.replace('-', 'x')}"
        self.interfaces: dict[Side, str] = {"edge": f"{veth}e", "cloud": f"{veth}c"}
        self.shaping: Shaping | None = None
        self._teardown = Teardown()

    def start(self) -> Self:
        """Build both hosts and the link (unshaped until `shape`); nothing is left behind if a step fails."""
        sweep_stale()
        try:
            for side in SIDES:
                run(["ip", "netns", "add", self.namespaces[side]])
                self._teardown.add(f"namespace {self.namespaces[side]}",
                                   lambda name=self.namespaces[side]: run(["ip", "netns", "del", name]))
            run(["ip", "link", "add", self.interfaces["edge"], "type", "veth", "peer", "name", self.interfaces["cloud"]])
            # Deleted with its namespace once moved there; this removes it if setup stopped before that.
            self._teardown.add(f"veth {self.interfaces['edge']}", self._delete_unmoved_veth)
            for side in SIDES:
                namespace, interface = self.namespaces[side], self.interfaces[side]
                run(["ip", "link", "set", interface, "netns", namespace])
                run(["ip", "-n", namespace, "addr", "add", f"{ADDRESSES[side]}/{PREFIX_LENGTH}", "dev", interface])
                run(["ip", "-n", namespace, "link", "set", interface, "up"])
                run(["ip", "-n", namespace, "link", "set", "lo", "up"])
        except BaseException:
            self.close()
            raise
        logger.info("emulated link %s <-> %s up", *self.namespaces.values())
        return self

    def _delete_unmoved_veth(self) -> None:
        if os.path.exists(f"/sys/class/net/{self.interfaces['edge']}"):
            run(["ip", "link", "del", self.interfaces["edge"]])

    def shape(self, uplink_bps: float, downlink_bps: float | None = None) -> None:
        """Hold edge -> cloud to `uplink_bps` and cloud -> edge to `downlink_bps` (default: the same)."""
        downlink_bps = uplink_bps if downlink_bps is None else downlink_bps
        for side, rate_bps in (("edge", uplink_bps), ("cloud", downlink_bps)):
            run(["tc", "-n", self.namespaces[side], "qdisc", "replace", "dev", self.interfaces[side], "root",
                 *tbf_arguments(rate_bps)])
        self.shaping = Shaping(uplink_bps, downlink_bps)

    def exec_prefix(self, side: Side) -> list[str]:
        """Command prefix that runs a program on `side`'s host."""
        return [system_binary("ip"), "netns", "exec", self.namespaces[side]]

    @contextmanager
    def entered(self, side: Side) -> Iterator[None]:
        """The calling thread on `side`'s host: sockets it opens, threads and processes it starts are there."""
        original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            target = os.open(f"{NETNS_DIR}/{self.namespaces[side]}", os.O_RDONLY)
            try:
                _setns(target)
                try:
                    yield
                finally:
                    _setns(original)
            finally:
                os.close(target)
        finally:
            os.close(original)

    def close(self) -> None:
        """Remove the link and both namespaces (idempotent); processes inside should be stopped first."""
        self._teardown.run()
        self.shaping = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


def our_namespaces() -> list[str]:
    """Names of every emulation namespace on this machine (ours or another run's)."""
    if not os.path.isdir(NETNS_DIR):
        return []
    return sorted(name for name in os.listdir(NETNS_DIR) if name.startswith(NAMESPACE_PREFIX))


def our_root_interfaces() -> list[str]:
    """Emulation veth ends still in this namespace (setup stopped before moving them)."""
    return sorted(name for name in os.listdir("/sys/class/net") if name.startswith(VETH_PREFIX)
                  and name[len(VETH_PREFIX):-1].replace("x", "").isdigit())


def sweep_stale() -> None:
    """Remove namespaces and veth ends left by emulations whose process was SIGKILLed."""
    for name in our_namespaces():
        if not owner_alive(name, NAMESPACE_PREFIX):
            logger.info("removing namespace %s left by a process that is gone", name)
            run(["ip", "netns", "del", name])
    for name in our_root_interfaces():
        if not owner_alive(name, VETH_PREFIX):
            run(["ip", "link", "del", name])


def unavailable_reason() -> str | None:
    """Why namespaces and tc shaping cannot be used here (None: they can), found by building one link."""
    try:
        with EmulatedLink() as link:
            link.shape(1e6)
    except (TestbedError, OSError) as error:
        return str(error)
    return None


def measured_rate_bps(link: EmulatedLink, n_bytes: int, upward: bool = True, timeout_s: float = 60.0) -> float:
    """Bits per second of one TCP transfer of `n_bytes` across `link` (edge -> cloud when `upward`):
    the sender's clock from connect until the receiver acknowledges the last byte."""
    receiver_side: Side = "cloud" if upward else "edge"
    sender_side: Side = "edge" if upward else "cloud"
    ready = threading.Event()
    failure: list[BaseException] = []
    port_box: list[int] = []

    def receive() -> None:
        try:
            with link.entered(receiver_side), socket.create_server((ADDRESSES[receiver_side], 0)) as server:
                server.settimeout(timeout_s)
                port_box.append(server.getsockname()[1])
                ready.set()
                connection, _ = server.accept()
                with connection:
                    connection.settimeout(timeout_s)
                    remaining = n_bytes
                    while remaining > 0:
                        chunk = connection.recv(min(remaining, 1 << 16))
                        if not chunk:
                            raise TestbedError(f"the transfer ended {remaining} bytes early")
                        remaining -= len(chunk)
                    connection.sendall(b"k")
        except BaseException as error:  # reported to the sender's thread
            failure.append(error)
            ready.set()

    receiver = threading.Thread(target=receive, name="rate-receiver", daemon=True)
    receiver.start()
    ready.wait(timeout_s)
    if failure or not port_box:
        raise TestbedError(f"the rate probe could not listen: {failure[0] if failure else 'timeout'}")
    payload = bytes(n_bytes)
    with link.entered(sender_side):
        started_s = time.perf_counter()
        with socket.create_connection((ADDRESSES[receiver_side], port_box[0]), timeout=timeout_s) as connection:
            connection.sendall(payload)
            if connection.recv(1) != b"k":
                raise TestbedError("the rate probe's receiver did not acknowledge the transfer")
        elapsed_s = time.perf_counter() - started_s
    receiver.join(timeout_s)
    if failure:
        raise TestbedError(f"the rate probe failed: {failure[0]}")
    return 8 * n_bytes / elapsed_s
