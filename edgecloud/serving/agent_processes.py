"""One `edgecloud agent` process per device, started together and always stopped together.

Why separate processes (the demo, one integration test): that is how a deployment runs — each agent
has its own interpreter, onnxruntime and MQTT connection — and it proves that nothing in-process is
shared by accident. Every start is paired with a stop that leaves no child behind: SIGTERM (the agent
shuts down gracefully), then SIGKILL for one that does not exit in time; and if this process is killed
before it can stop them, each agent ends by itself (`robust_training.runners.parent_death`).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from edgecloud.errors import EdgecloudError
from edgecloud.transport.mqtt_url import PASSWORD_ENV, PASSWORD_FILE_ENV, split_password
from robust_training.runners.parent_death import child_environment

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


class AgentProcesses:
    """Agents for `devices` of a plan, as child processes of this one."""

    def __init__(self, plan_path: str | Path, devices: Sequence[str], broker_url: str | Mapping[str, str],
                 deployment: str, extra_args: Sequence[str] = (), log_level: str = "WARNING") -> None:
        """`broker_url` is one URL for all, or one per device (each its own login on a broker with an ACL)."""
        self.plan_path = Path(plan_path)
        self.devices = list(devices)
        self.broker_urls = dict(broker_url) if isinstance(broker_url, Mapping) else dict.fromkeys(devices, broker_url)
        self.deployment = deployment
        self.extra_args = list(extra_args)
        self.log_level = log_level
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._folder: tempfile.TemporaryDirectory[str] | None = None

    def command(self, device: str, ready_file: Path) -> list[str]:
        """The agent's command line: the broker URL without its password (see `environment`)."""
        url, _ = split_password(self.broker_urls[device])
        return [sys.executable, "-m", "edgecloud.cli.app", "agent", "--plan", str(self.plan_path), "--device", device,
                "--broker", url, "--deployment", self.deployment, "--ready-file", str(ready_file),
                "--log-level", self.log_level, *self.extra_args]

    def environment(self, device: str) -> dict[str, str]:
        """The agent's environment: ours, plus the URL's password in PASSWORD_ENV if it had one, plus
        our pid, so that the agent ends with this process even if it is SIGKILLed (`parent_death`)."""
        _, password = split_password(self.broker_urls[device])
        if password is None:
            return child_environment(os.environ)
        return child_environment({**{k: v for k, v in os.environ.items() if k != PASSWORD_FILE_ENV},
                                  PASSWORD_ENV: password})

    def start(self, timeout_s: float = START_TIMEOUT_S) -> Self:
        """Start every agent and return once all serve; EdgecloudError (and nothing left running) if one
        exits or does not get ready within `timeout_s`."""
        self._folder = tempfile.TemporaryDirectory(prefix="edgecloud-agents-")
        try:
            for device in self.devices:
                self._launch(device)
            self._wait_ready(self.devices, timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def restart(self, device: str, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start the agent of `device` again (after `kill`), and return once it serves."""
        if self.processes[device].poll() is None:
            raise EdgecloudError(f"the {device} agent is still running")
        self._launch(device)
        self._wait_ready([device], timeout_s)

    def _launch(self, device: str) -> None:
        assert self._folder is not None
        folder = Path(self._folder.name)
        (folder / f"{device}.ready").unlink(missing_ok=True)
        with (folder / f"{device}.log").open("ab") as log:
            self.processes[device] = subprocess.Popen(self.command(device, folder / f"{device}.ready"),
                                                      env=self.environment(device), stdin=subprocess.DEVNULL,
                                                      stdout=log, stderr=subprocess.STDOUT)

    def _wait_ready(self, devices: Sequence[str], timeout_s: float) -> None:
        assert self._folder is not None
        folder = Path(self._folder.name)
        deadline_s = time.monotonic() + timeout_s
        waiting = set(devices)
        while waiting:
            for device in list(waiting):
                if (folder / f"{device}.ready").exists():
                    waiting.discard(device)
                elif self.processes[device].poll() is not None:
                    raise EdgecloudError(f"the {device} agent exited with code {self.processes[device].returncode}: "
                                         f"{self.log_text(device).strip()[-400:] or 'no output'}")
            if waiting and time.monotonic() > deadline_s:
                raise EdgecloudError(f"agent(s) {', '.join(sorted(waiting))} did not start within {timeout_s:g} s")
            time.sleep(0.05)

    def log_text(self, device: str) -> str:
        """What the agent of `device` wrote so far (its log goes to a file, not to our terminal)."""
        if self._folder is None:
            return ""
        path = Path(self._folder.name) / f"{device}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self, device: str) -> None:
        """SIGKILL one agent, as a crash would (no goodbye to the broker)."""
        process = self.processes[device]
        process.kill()
        process.wait(STOP_TIMEOUT_S)

    def stop(self) -> dict[str, int | None]:
        """SIGTERM every agent still running, SIGKILL those that outlive STOP_TIMEOUT_S; their exit codes."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for device, process in self.processes.items():
            try:
                codes[device] = process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                logger.warning("the %s agent ignored SIGTERM; killing it", device)
                process.kill()
                codes[device] = process.wait(STOP_TIMEOUT_S)
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None
        return codes

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes.values()]

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()
