"""A slower device on this host: processes held to a share of the CPU by a cgroup v1 quota.

Why a quota (and not `nice` or a thread count alone): `cpu.cfs_quota_us` caps the CPU time a group gets
per `cpu.cfs_period_us` whatever else runs, so a board's slower cores become the same work spread over
more wall time (20 % slowed a busy loop about 5x here, docs/architecture.md §7). A share of one core
cannot be set from a device's datasheet alone (the host's and the board's cores differ per operator),
so `calibrate` measures the model itself in the group and adjusts the share until its whole-model time
matches the profile's prediction.

The period is short (10 ms, longer only where the kernel's 1 ms minimum quota needs it), so that
work is slowed evenly rather than run at full speed and then stalled for most of a long period. Still,
the quota is enforced at the scheduler tick (4 ms at HZ=250 here): a burst shorter than the quota per
period, such as a 1 ms stage after an idle wait, can run at full speed (measured: mobilenetv2's median
isolated run unchanged at 29 %, its mean over back-to-back runs slowed). So the calibration matches the
sustained (mean back-to-back) whole-model time, and short stages may still run faster than predicted.

Processes join once started (`add`): an interpreter and onnxruntime starting at 7 % of a core take
tens of seconds, and a device boots before it serves. Group names carry the creating process id; the group is
removed on `close`, at interpreter exit, and by `sweep_stale` after a SIGKILL.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from edgecloud.testbed.host_commands import Teardown, TestbedError, owner_alive

logger = logging.getLogger(__name__)

CPU_ROOT = Path("/sys/fs/cgroup/cpu")
GROUP_PREFIX = "edgecloud-testbed-"
MIN_QUOTA_US = 1000  # the kernel refuses a smaller cfs_quota_us
MIN_PERIOD_US = 1000
MAX_PERIOD_US = 1_000_000
SHORT_PERIOD_US = 10_000  # the period used whenever the share allows the 1 ms minimum quota in it
_counter = itertools.count(1)


def quota_figures(cpus: float) -> tuple[int, int]:
    """(quota_us, period_us) giving `cpus` CPUs' worth of time (0.25: a quarter of one core)."""
    if not math.isfinite(cpus) or cpus <= 0:
        raise TestbedError(f"a CPU share must be a positive number, not {cpus}.")
    period_us = max(SHORT_PERIOD_US, math.ceil(MIN_QUOTA_US / cpus))
    if period_us > MAX_PERIOD_US:
        raise TestbedError(f"a CPU share of {cpus:g} is below what a cgroup quota can hold "
                           f"({MIN_QUOTA_US / MAX_PERIOD_US:g}).")
    return max(MIN_QUOTA_US, round(cpus * period_us)), period_us


class CpuQuota:
    """One cgroup v1 CPU group; `set_cpus` sets its share, `exec_prefix` runs a program inside it."""

    def __init__(self, label: str = "edge", root: Path = CPU_ROOT) -> None:
        self.path = root / f"{GROUP_PREFIX}{os.getpid()}-{next(_counter)}-{label}"
        self.root = root
        self.cpus: float | None = None
        self._teardown = Teardown()

    def start(self) -> Self:
        if not (self.root / "cpu.cfs_quota_us").exists():
            raise TestbedError(f"no cgroup v1 CPU controller at {self.root} (cpu.cfs_quota_us missing).")
        sweep_stale(self.root)
        try:
            self.path.mkdir()
        except OSError as error:
            raise TestbedError(f"cannot create the CPU group {self.path}: {error.strerror}.") from None
        self._teardown.add(f"CPU group {self.path}", self._remove)
        return self

    def set_cpus(self, cpus: float) -> None:
        """Cap the group at `cpus` CPUs' worth of time (may exceed 1 for several threads)."""
        quota_us, period_us = quota_figures(cpus)
        try:  # quota first: a period shorter than the quota in force would be refused
            (self.path / "cpu.cfs_quota_us").write_text("-1")
            (self.path / "cpu.cfs_period_us").write_text(str(period_us))
            (self.path / "cpu.cfs_quota_us").write_text(str(quota_us))
        except OSError as error:
            raise TestbedError(f"cannot set the quota of {self.path}: {error.strerror}.") from None
        self.cpus = quota_us / period_us

    def add(self, pid: int) -> None:
        """Move process `pid`, all its threads and the children it starts later, into this group."""
        try:
            (self.path / "cgroup.procs").write_text(str(pid))
        except OSError as error:
            raise TestbedError(f"cannot move process {pid} into {self.path}: {error.strerror}.") from None

    def pids(self) -> list[int]:
        try:
            return [int(line) for line in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def _remove(self) -> None:
        if not self.path.exists():
            return
        remaining = self.pids()
        if remaining:  # rmdir would fail; hand them back to the root group rather than leak the group
            logger.warning("processes %s still in %s at teardown; moving them out", remaining, self.path)
            for pid in remaining:
                try:
                    (self.root / "cgroup.procs").write_text(str(pid))
                except OSError:
                    pass
        self.path.rmdir()

    def close(self) -> None:
        self._teardown.run()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


def our_groups(root: Path = CPU_ROOT) -> list[Path]:
    return sorted(path for path in root.glob(f"{GROUP_PREFIX}*") if path.is_dir()) if root.exists() else []


def sweep_stale(root: Path = CPU_ROOT) -> None:
    """Remove empty groups left by testbeds whose process was SIGKILLed."""
    for path in our_groups(root):
        if not owner_alive(path.name, GROUP_PREFIX):
            try:
                path.rmdir()
            except OSError as error:
                logger.warning("cannot remove stale CPU group %s: %s", path, error.strerror)


@dataclass
class Calibration:
    """How the share was found: each attempt's share and measured time, and the final ratio."""

    target_s: float
    cpus: float
    measured_s: float
    attempts: list[tuple[float, float]] = field(default_factory=list)  # (cpus, measured seconds)

    @property
    def ratio(self) -> float:
        """Measured over predicted whole-model time at the final share (1.0 is a perfect match)."""
        return self.measured_s / self.target_s

    def to_dict(self) -> dict[str, object]:
        return {"target_s": self.target_s, "cpus": self.cpus, "measured_s": self.measured_s, "ratio": self.ratio,
                "attempts": [{"cpus": cpus, "measured_s": seconds} for cpus, seconds in self.attempts]}


def calibrate(quota: CpuQuota, target_s: float, measure_s: Callable[[], float], max_cpus: float,
              tolerance: float = 0.05, max_attempts: int = 8) -> Calibration:
    """Find the share at which `measure_s()` (a run in the group) takes `target_s`.

    Time under a quota is close to inversely proportional to the share, so each step scales the share
    by measured / target; it starts from the unlimited time. When even `max_cpus` (all the threads the
    device may use) is too slow, the share stays there and the ratio says how far off it is."""
    if not math.isfinite(target_s) or target_s <= 0:
        raise TestbedError(f"the predicted whole-model time must be positive, not {target_s}.")
    quota.set_cpus(max_cpus)
    attempts: list[tuple[float, float]] = []
    cpus, measured = max_cpus, measure_s()
    attempts.append((cpus, measured))
    while abs(measured / target_s - 1) > tolerance and len(attempts) < max_attempts:
        wanted = min(max_cpus, cpus * measured / target_s)
        if wanted >= max_cpus and cpus >= max_cpus:
            logger.warning("the emulated device cannot be slowed to %.3g s: it takes %.3g s at full speed",
                           target_s, measured)
            break
        quota.set_cpus(max(wanted, MIN_QUOTA_US / MAX_PERIOD_US))
        cpus = quota.cpus or wanted
        measured = measure_s()
        attempts.append((cpus, measured))
    best_cpus, best_s = min(attempts, key=lambda attempt: abs(attempt[1] / target_s - 1))
    quota.set_cpus(best_cpus)
    return Calibration(target_s=target_s, cpus=best_cpus, measured_s=best_s, attempts=attempts)
