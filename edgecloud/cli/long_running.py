"""What every long-running command (`agent`, `train-worker`) sets up: its log level and a stop on SIGINT/SIGTERM."""

from __future__ import annotations

import logging
import signal
import threading

from edgecloud.errors import EdgecloudError

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def configure_logging(log_level: str) -> None:
    """Log at `log_level` (case-insensitive) with timestamps; EdgecloudError for an unknown level."""
    level = log_level.upper()
    if level not in LOG_LEVELS:
        raise EdgecloudError(f"--log-level {log_level!r} is not one of {', '.join(LOG_LEVELS)}.")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def stop_on_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM, so that the command shuts down gracefully (a supervisor's SIGTERM)."""
    stop = threading.Event()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signal_number, lambda *_: stop.set())
    return stop
