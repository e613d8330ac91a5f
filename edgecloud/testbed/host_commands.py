"""Run the `ip` and `tc` commands that build an emulation, and tear down what a run left behind.

Why one runner: every failure of a system command becomes one `TestbedError` sentence naming the
command and the kernel's answer, and every resource an emulation creates is registered for removal at
once, so that a failure half-way through setup, an exception, SIGTERM (turned into an exception by the
CLI) and interpreter exit (atexit) all leave nothing behind. SIGKILL cannot be caught: names carry the
creating process id, and `sweep_stale` removes those of processes that no longer exist.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Sequence

from edgecloud.errors import EdgecloudError

logger = logging.getLogger(__name__)

SYSTEM_PATH = "/usr/sbin:/sbin:/usr/bin:/bin"
COMMAND_TIMEOUT_S = 30.0


class TestbedError(EdgecloudError):
    """An emulation could not be built or measured (not root, no `tc`, a command the kernel refused)."""

    __test__ = False  # not a pytest test class, whatever its name


def system_binary(name: str) -> str:
    """Absolute path of `ip`/`tc`, which live in /usr/sbin, off an ordinary user's PATH."""
    found = shutil.which(name) or shutil.which(name, path=SYSTEM_PATH)
    if found is None:
        raise TestbedError(f"`{name}` is not installed; on Debian it comes with the iproute2 package.")
    return found


def run(args: Sequence[str]) -> str:
    """Run one system command; its stdout, or TestbedError with the command and its stderr."""
    command = [system_binary(args[0]), *args[1:]]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise TestbedError(f"`{' '.join(args)}` did not finish within {COMMAND_TIMEOUT_S:g} s.") from None
    if done.returncode:
        reason = (done.stderr or done.stdout).strip().splitlines()[:1] or [f"exit code {done.returncode}"]
        raise TestbedError(f"`{' '.join(args)}` failed: {reason[0]}")
    return done.stdout


class Teardown:
    """Undo actions, run last-registered first, each once; registered with atexit while any are pending."""

    _live: set["Teardown"] = set()
    _lock = threading.Lock()
    _hooked = False

    def __init__(self) -> None:
        self._undo: list[tuple[str, Callable[[], None]]] = []

    def add(self, what: str, undo: Callable[[], None]) -> None:
        with Teardown._lock:
            self._undo.append((what, undo))
            Teardown._live.add(self)
            if not Teardown._hooked:
                atexit.register(Teardown.run_all)
                Teardown._hooked = True

    def run(self) -> None:
        """Run every undo action; one that fails is logged and the others still run."""
        while True:
            with Teardown._lock:
                if not self._undo:
                    Teardown._live.discard(self)
                    return
                what, undo = self._undo.pop()
            try:
                undo()
            except Exception as error:  # the rest must still be removed
                logger.warning("could not remove %s: %s", what, error)

    @classmethod
    def run_all(cls) -> None:
        for teardown in list(cls._live):
            teardown.run()


def owner_alive(name: str, prefix: str) -> bool:
    """Whether the process whose id follows `prefix` in `name` still runs (names it cannot parse: yes)."""
    found = re.match(re.escape(prefix) + r"(\d+)", name)
    return found is None or os.path.exists(f"/proc/{found.group(1)}")
