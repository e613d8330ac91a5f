"""One thread that runs callbacks at their times: the client's request timeouts.

Why not `threading.Timer` per request: each one starts a thread, and `Thread.start` waits until the new
thread runs. On the two shared cores of this machine that cost the client ~0.1 ms of CPU on every
request, right while the request was on its way (bench/agent_hop.py). Here a request's timeout is one
heap entry; cancelling marks it, and cancelled entries are dropped when they come due or when they make
up most of the heap.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)


class Expiry:
    """A handle to one scheduled callback; `cancel()` makes sure it does not run (if it has not yet)."""

    __slots__ = ("callback", "cancelled", "_timer")

    def __init__(self, callback: Callable[[], None], timer: ExpiryTimer) -> None:
        self.callback = callback
        self.cancelled = False
        self._timer = timer

    def cancel(self) -> None:
        self._timer._cancel(self)


class ExpiryTimer:
    """Runs each scheduled callback at its time (monotonic clock) on one daemon thread, started lazily."""

    def __init__(self, name: str = "expiry-timer") -> None:
        self.name = name
        self._heap: list[tuple[float, int, Expiry]] = []
        self._order = itertools.count()
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._cancelled = 0  # cancelled entries still in the heap

    def schedule(self, delay_s: float, callback: Callable[[], None]) -> Expiry:
        """Run `callback()` in `delay_s` seconds unless the returned handle is cancelled first."""
        expiry = Expiry(callback, self)
        with self._condition:
            if self._closed:
                raise RuntimeError("the expiry timer is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            heapq.heappush(self._heap, (time.monotonic() + delay_s, next(self._order), expiry))
            if self._cancelled > 64 and self._cancelled > len(self._heap) // 2:
                self._heap = [entry for entry in self._heap if not entry[2].cancelled]
                heapq.heapify(self._heap)
                self._cancelled = 0
            if self._heap[0][2] is expiry:  # the earliest now: the thread sleeps too long otherwise
                self._condition.notify()
        return expiry

    def pending(self) -> int:
        """Scheduled callbacks neither run nor cancelled."""
        with self._condition:
            return len(self._heap) - self._cancelled

    def _cancel(self, expiry: Expiry) -> None:
        with self._condition:
            if not expiry.cancelled:
                expiry.cancelled = True
                self._cancelled += 1

    def close(self) -> None:
        """Stop the thread; callbacks not yet run are dropped (idempotent)."""
        with self._condition:
            self._closed = True
            self._condition.notify()
            thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._closed and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._condition.wait(None if not self._heap else self._heap[0][0] - time.monotonic())
                if self._closed:
                    return
                _, _, expiry = heapq.heappop(self._heap)
                if expiry.cancelled:
                    self._cancelled -= 1
                    continue
                expiry.cancelled = True  # ran: a late cancel() changes nothing
            try:
                expiry.callback()
            except Exception:  # one failing callback must not stop the others
                logger.exception("an expiry callback failed")
