"""Child processes that end with their parent, even when the parent is SIGKILLed and cleans nothing up.

A local run (`edgecloud train --runner mqtt` or `--runner torch`) starts a broker and P workers; its
own stop handles a normal end, an error and Ctrl-C, but a SIGKILL (an OOM kill, `kill -9`, a CI
timeout) runs no Python at all, and the children would live on, holding ports and cores. So each such
child, at its start, arranges its own end:

- Linux's PR_SET_PDEATHSIG (prctl through ctypes): the kernel sends SIGTERM the moment the parent dies.
  It fires when the parent *thread* that started the child exits, not the process, so it is asked for
  only when that thread is the parent's main thread (`child_environment` records which it was); a
  child started from a helper thread (a fault injector) would otherwise die with that thread.
- A watcher thread, on every platform and whichever thread started it: once the parent pid is no
  longer our parent (we were reparented), SIGTERM to ourselves, so the process stops the way a
  supervisor stops it, and `os._exit` if it has not within EXIT_GRACE_S (a child stuck in C code).
- The parent may die before the child got that far: the child checks its parent pid right away.

Parents pass their pid in the environment (`child_environment`); spawned torch workers get it as an
argument. The variables are removed from our environment once read, so a grandchild does not mistake
its parent for ours.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping

logger = logging.getLogger(__name__)

PARENT_ENV = "EDGECLOUD_PARENT_PID"
DEATHSIG_ENV = "EDGECLOUD_PARENT_DEATHSIG"  # "1": the parent started us from its main thread
PR_SET_PDEATHSIG = 1
WATCH_S = 0.5
EXIT_GRACE_S = 10.0


def started_from_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def child_environment(environment: Mapping[str, str]) -> dict[str, str]:
    """`environment` plus what `end_with_parent_from_environment` reads in the child (call this in
    the thread that starts the child)."""
    return {**environment, PARENT_ENV: str(os.getpid()), DEATHSIG_ENV: "1" if started_from_main_thread() else "0"}


def end_with_parent_from_environment() -> None:
    """In a child started with `child_environment`: end with that parent (a no-op without it)."""
    parent = os.environ.pop(PARENT_ENV, None)
    deathsig = os.environ.pop(DEATHSIG_ENV, "0") == "1"
    if parent is not None and parent.isdigit():
        end_with_parent(int(parent), deathsig)


def end_with_parent(parent_pid: int, deathsig: bool) -> None:
    """SIGTERM ourselves when `parent_pid` dies (see the module docstring); at once if it already has."""
    if deathsig and sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            logger.warning("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))
    if os.getppid() != parent_pid:  # it died before we could ask
        _end()
        return
    threading.Thread(target=_watch, args=(parent_pid,), name="parent-watch", daemon=True).start()


def _watch(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(WATCH_S)
    _end()


def _end() -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    deadline = threading.Timer(EXIT_GRACE_S, os._exit, args=(128 + signal.SIGTERM,))
    deadline.daemon = True  # a graceful exit is not held up by it
    deadline.start()
