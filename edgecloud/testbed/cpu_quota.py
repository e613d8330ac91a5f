"""A slower device on this host: processes held to a share of the CPU by a cgroup v1 quota.

Why a quota (and not `nice` or a thread count alone): `cpu.cfs_quota_us` caps the CPU time a group gets
per `cpu.cfs_period_us` whatever else runs, so a board's slower cores become the same work spread over
more wall time (20 % slowed a busy loop about 5x here, docs/architecture.md §7). A share of one core
cannot be set from a device's datasheet alone (the host's and the board's cores differ per operator),
so `calibrate` measures the model itself in the group and adjusts the share until its whole-model time
matches the profile's prediction.

The period is the shortest the kernel takes for the share: the kernel refuses a quota or a period
under 1 ms, so a share s < 1 gets 1 ms of quota per 1/s ms (2 %: 1 ms per 50 ms; 50 %: 1 ms per 2 ms),
and s >= 1 gets s ms per 1 ms. A longer period only lengthens the stall after a burst has used its
quota (issue 13: at 2 % with 10-47 ms periods, an agent got its 1 ms and then waited for the next
period). Two limits remain and are measured, not hidden: the quota is enforced at the scheduler tick
(4 ms at HZ=250 here), and a burst shorter than the 1 ms least quota, arriving after an idle wait, runs
at full speed whatever the share. So the calibration matches request-sized bursts (one run after an
idle gap, `edgecloud.testbed.model_timer`), and reports how close it got.

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
MIN_CALIBRATION_CPUS = 0.02  # 1 ms per 50 ms: a longer period stalls the agent longer than any stage it holds
UNMOVED_RATIO = 1.2  # halving the share slowed the run by less than this: the quota does not hold it
_counter = itertools.count(1)


def quota_figures(cpus: float) -> tuple[int, int]:
    """(quota_us, period_us) giving `cpus` CPUs' worth of time (0.25: a quarter of one core)."""
    if not math.isfinite(cpus) or cpus <= 0:
        raise TestbedError(f"a CPU share must be a positive number, not {cpus}.")
    period_us = max(MIN_PERIOD_US, math.ceil(MIN_QUOTA_US / cpus))
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
        self.period_us = 0
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
        self.period_us = period_us

    def period_s(self) -> float:
        """The period in force (the shortest the kernel takes for the share), 0 before any share is set."""
        return self.period_us / 1e6

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
              tolerance: float = 0.05, max_attempts: int = 8, min_cpus: float = MIN_CALIBRATION_CPUS) -> Calibration:
    """Find the share at which `measure_s()` (a run in the group) takes `target_s`.

    Time under a quota is roughly inversely proportional to the share, so each step scales the share
    by measured / target; it starts from the unlimited time. It stops when the share is at a bound or
    when halving it or more twice in a row barely slowed the run. A run at full speed shorter than the
    kernel's least quota (1 ms) is not slowed by any share and ends the search at once. When no attempt
    came within twice the tolerance, the group is left at `max_cpus`: a share that cannot slow the run
    would only add stalls of a long period to the agent's other work, and the ratio at full speed says
    how far the device is from its profile."""
    if not math.isfinite(target_s) or target_s <= 0:
        raise TestbedError(f"the predicted whole-model time must be positive, not {target_s}.")
    quota.set_cpus(max_cpus)
    attempts: list[tuple[float, float]] = []
    cpus, measured = max_cpus, measure_s()
    attempts.append((cpus, measured))
    if measured * max_cpus < MIN_QUOTA_US / 1e6 and measured < target_s:
        # The whole run fits in the least quota the kernel takes: whatever the share, a run after an
        # idle gap finds its quota there and runs at full speed (what looks slower is noise).
        logger.warning("the emulated device cannot be held to %.3g s: one run takes %.3g s, under the kernel's "
                       "least quota of %g ms", target_s, measured, MIN_QUOTA_US / 1e3)
        return Calibration(target_s=target_s, cpus=max_cpus, measured_s=measured, attempts=attempts)
    unmoved = 0  # steps in a row that halved the share or more and barely slowed the run
    while abs(measured / target_s - 1) > tolerance and len(attempts) < max_attempts:
        wanted = min(max_cpus, max(min_cpus, cpus * measured / target_s))
        if math.isclose(wanted, cpus, rel_tol=1e-3):
            logger.warning("the emulated device cannot be held to %.3g s: %.3g s at a share of %.3g", target_s, measured, cpus)
            break
        quota.set_cpus(wanted)
        previous_cpus, previous_s = cpus, measured
        cpus = quota.cpus or wanted
        measured = measure_s()
        attempts.append((cpus, measured))
        unmoved = unmoved + 1 if cpus < previous_cpus / 2 and measured < previous_s * UNMOVED_RATIO else 0
        if unmoved >= 2:
            logger.warning("a share of %.3g barely slows the run (%.3g s, %.3g s at %.3g): the quota cannot hold it "
                           "to %.3g s", cpus, measured, previous_s, previous_cpus, target_s)
            break
    best_cpus, best_s = min(attempts, key=lambda attempt: abs(attempt[1] / target_s - 1))
    if abs(best_s / target_s - 1) > 2 * tolerance:
        best_cpus, best_s = attempts[0]
    quota.set_cpus(best_cpus)
    return Calibration(target_s=target_s, cpus=best_cpus, measured_s=best_s, attempts=attempts)
