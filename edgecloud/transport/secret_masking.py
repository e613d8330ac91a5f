"""Keep broker passwords out of log output: every log record of the process is masked once one is known.

Why a log-record factory rather than a handler filter: a filter sits on one handler or logger, and
records from other loggers (an application's, a library's) pass by it; the factory builds every
record in the process, so a password quoted anywhere (inside a URL, an exception text) is replaced
by `***` before any handler formats it. Records are only built for enabled levels, so the cost is a
few substring searches per emitted line.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

MASK = "***"
_secrets: tuple[str, ...] = ()  # longest first, so that overlaps mask whole; replaced, never mutated
_lock = threading.Lock()
_installed = False


def mask(text: str) -> str:
    """`text` with every registered secret replaced by `***` (longest first, so that overlaps mask whole)."""
    for secret in _secrets:
        text = text.replace(secret, MASK)
    return text


def register_secret(secret: str) -> None:
    """Mask `secret` in every log record from now on (installs the record factory on first use)."""
    global _installed, _secrets
    if not secret:
        return
    with _lock:
        _secrets = tuple(sorted({*_secrets, secret}, key=len, reverse=True))
        if _installed:
            return
        make_record = logging.getLogRecordFactory()

        def masked_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = make_record(*args, **kwargs)
            try:
                return _masked(record)
            except Exception:  # a bad format call must not raise in the caller: keep its parts, masked
                record.msg, record.args = mask(f"{record.msg} {record.args!r}"), None
                return record

        def _masked(record: logging.LogRecord) -> logging.LogRecord:
            message = record.getMessage()
            masked = mask(message)
            if masked != message:
                record.msg, record.args = masked, None
            if record.exc_info and record.exc_info[1] is not None:
                exception_text = str(record.exc_info[1])
                if mask(exception_text) != exception_text:  # the traceback would quote it: keep only the type
                    record.msg, record.args = f"{mask(message)} ({type(record.exc_info[1]).__name__}: "\
                                              f"{mask(exception_text)})", None
                    record.exc_info = None
            return record

        logging.setLogRecordFactory(masked_record)
        _installed = True
