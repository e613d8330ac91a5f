"""The edge device emulated: a CPU group calibrated so that the whole model takes the profile's time.

`calibrated_device` starts `edgecloud.testbed.model_timer` and moves it into the group (with the
agent's thread count), and `cpu_quota.calibrate` adjusts the group's share until the timer's median
whole-model run, one run at a time after an idle gap as requests arrive, is within the tolerance of the
prediction; the agent then runs in the same group at that share. Where no share gets there (a run
shorter than the kernel's least quota runs at full speed whatever the share), the calibration's ratio
says how far off the device is, and the testbed plans with the device as measured.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import TracebackType
from typing import Self

from edgecloud.testbed.cpu_quota import Calibration, CpuQuota, calibrate
from edgecloud.testbed.host_commands import TestbedError
from edgecloud.transport.hop_costs import stop_by_closing_stdin

TIMER_START_TIMEOUT_S = 120.0


class ModelTimer:
    """A `model_timer` child in a CPU group; `measure_s(budget_s, gap_s)` is the median isolated run."""

    def __init__(self, quota: CpuQuota, model_path: Path, threads: int, seed: int = 0) -> None:
        self.quota = quota
        self.command = [sys.executable, "-m", "edgecloud.testbed.model_timer", str(model_path),
                        "--threads", str(threads), "--seed", str(seed)]
        self._process: subprocess.Popen[str] | None = None

    def start(self) -> Self:
        """Start the timer at full speed, and move it into the group once the model is loaded."""
        self._process = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True, bufsize=1)
        if self._read_line() != "ready":
            raise TestbedError(f"the model timer did not start: {self._stderr()}")
        self.quota.add(self._process.pid)
        return self

    def measure_s(self, budget_s: float, gap_s: float) -> float:
        """Median of isolated runs, each after `gap_s` idle, for at least `budget_s`."""
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.write(f"{budget_s} {gap_s}\n")
        self._process.stdin.flush()
        line = self._read_line()
        try:
            return float(line)
        except ValueError:
            raise TestbedError(f"the model timer answered {line!r}: {self._stderr()}") from None

    def _read_line(self) -> str:
        assert self._process is not None and self._process.stdout is not None
        return self._process.stdout.readline().strip()

    def _stderr(self) -> str:
        if self._process is None or self._process.stderr is None:
            return "no output"
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        return self._process.stderr.read().strip()[-400:] or "no output"

    def close(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        stop_by_closing_stdin(process)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


def calibrated_device(quota: CpuQuota, model_path: Path, predicted_s: float, threads: int, budget_s: float = 0.5,
                      tolerance: float = 0.05, seed: int = 0) -> Calibration:
    """Set `quota` so that `model_path` takes `predicted_s` per run with `threads` threads; the result
    keeps every attempt and the final measured/predicted ratio."""
    with ModelTimer(quota, model_path, threads, seed) as timer:
        # A slowed run takes longer: give each measurement at least 10 predicted runs. Each run follows
        # an idle gap of two periods, so the quota has refilled as it has when a request arrives.
        return calibrate(quota, predicted_s,
                         lambda: timer.measure_s(max(budget_s, 10 * predicted_s), 2 * quota.period_s()),
                         max_cpus=float(threads), tolerance=tolerance)
