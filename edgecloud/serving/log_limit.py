"""A rate limit for log lines that a peer can trigger at will (rejected messages, failed requests).

Why: an agent logs one line per rejected message, so a peer sending thousands of bad messages a second
would otherwise fill the disk and bury everything else. The first `burst` lines of each period are
written; the rest are counted and reported as one line when the period ends.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any


class RateLimitedLog:
    """At most `burst` warnings per `period_s` through `logger`, then one line with the count held back."""

    def __init__(self, logger: logging.Logger, burst: int = 20, period_s: float = 10.0) -> None:
        self.logger = logger
        self.burst = burst
        self.period_s = period_s
        self._lock = threading.Lock()
        self._period_end_s = 0.0
        self._written = 0
        self.suppressed = 0  # held back in the current period

    def warning(self, message: str, *args: Any) -> None:
        with self._lock:
            self._roll(time.monotonic())
            if self._written >= self.burst:
                self.suppressed += 1
                return
            self._written += 1
        self.logger.warning(message, *args)

    def flush(self) -> None:
        """Report what the ended period held back (call now and then: the count is written only once a
        period is over)."""
        with self._lock:
            self._roll(time.monotonic())

    def _roll(self, now_s: float) -> None:
        if now_s < self._period_end_s:
            return
        if self.suppressed:
            self.logger.warning("%d more such line(s) suppressed in the last %g s", self.suppressed, self.period_s)
        self._period_end_s = now_s + self.period_s
        self._written = self.suppressed = 0
