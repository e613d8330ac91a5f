"""Children end with their parent even when it is SIGKILLed (robust_training.runners.parent_death), and a
child started from a helper thread does not die with that thread (PR_SET_PDEATHSIG's trap)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

# The parent: starts one sleeping child (the watched side) from its main thread or from a helper thread
# that then exits, prints the child's pid, and sleeps until it is killed.
PARENT = textwrap.dedent("""
    import os, subprocess, sys, threading, time
    from robust_training.runners.parent_death import child_environment
    CHILD = ("from robust_training.runners.parent_death import end_with_parent_from_environment as end; "
             "end(); import time; time.sleep(600)")
    started = []
    def start():
        started.append(subprocess.Popen([sys.executable, "-c", CHILD], env=child_environment(os.environ)))
    if sys.argv[1] == "main":
        start()
    else:
        helper = threading.Thread(target=start)
        helper.start()
        helper.join()  # the thread that forked the child is gone now
    print(started[0].pid, flush=True)
    time.sleep(600)
""")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("thread", ["main", "helper"])
def test_a_child_ends_when_its_parent_is_sigkilled(thread: str) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, thread], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    child = int(parent.stdout.readline())  # type: ignore[union-attr]
    try:
        time.sleep(3.0)  # the child has set itself up; a helper thread's exit has not ended it
        assert _alive(child), "the child died while its parent lives"
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 5.0
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(child), f"child {child} outlived its SIGKILLed parent ({thread} thread)"
    finally:
        parent.kill()
        if _alive(child):
            psutil.Process(child).kill()
