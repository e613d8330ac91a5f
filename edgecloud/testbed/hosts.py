"""Where a deployment's processes run: all on this host (`LocalHosts`), or on the emulated edge and
cloud hosts (`EmulatedHosts`). `edgecloud.cli.demo_steps.serve_requests` serves through either.

On the emulated hosts, Mosquitto and the cloud agent run in the cloud namespace, the edge agent (held
to its CPU group) and the client in the edge namespace, so every message between edge and cloud
crosses the shaped link. The edge agent joins its CPU group once it serves (it boots at full speed).
A message from the client to the edge agent goes through the broker, i.e. across the link and back, as
it would with the broker in the cloud (`broker_side="edge"` puts the broker at the edge instead, where
the cloud agent's messages cross the link and the client's do not).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

from edgecloud.serving.agent_processes import AgentProcesses
from edgecloud.testbed.cpu_quota import CpuQuota
from edgecloud.testbed.host_commands import TestbedError
from edgecloud.testbed.netns import ADDRESSES, SIDES, EmulatedLink, Side
from edgecloud.transport.broker import EmbeddedBrokerProcess, MosquittoBroker


class PlacedAgentProcesses(AgentProcesses):
    """Agent processes whose command lines start with a per-device prefix (a namespace, a CPU group)
    and end with per-device arguments (a thread count)."""

    def __init__(self, plan_path: str | Path, devices: Sequence[str], broker_url: str, deployment: str,
                 prefixes: Mapping[str, Sequence[str]], device_args: Mapping[str, Sequence[str]],
                 extra_args: Sequence[str] = ()) -> None:
        super().__init__(plan_path, devices, broker_url, deployment, extra_args=extra_args)
        self.prefixes = {device: list(prefix) for device, prefix in prefixes.items()}
        self.device_args = {device: list(args) for device, args in device_args.items()}

    def command(self, device: str, ready_file: Path) -> list[str]:
        return [*self.prefixes.get(device, []), *super().command(device, ready_file), *self.device_args.get(device, [])]


class Hosts(Protocol):
    """What serving needs to know about where things run."""

    description: str

    def broker_url(self, stack: ExitStack) -> str:
        """The broker's URL, starting one on `stack` if this placement starts its own per deployment."""

    def start_agents(self, stack: ExitStack, plan_path: Path, devices: Sequence[str], broker_url: str,
                     deployment: str, extra_args: Sequence[str]) -> AgentProcesses:
        """One agent per device, stopped when `stack` closes."""

    def client_side(self) -> contextlib.AbstractContextManager[None]:
        """Where the client's connection is opened."""


class LocalHosts:
    """Everything on this host: the given broker, or an embedded one per deployment."""

    def __init__(self, broker_url: str | None = None) -> None:
        self._broker_url = broker_url
        self.description = f"one host, broker {broker_url or 'embedded'}"

    def broker_url(self, stack: ExitStack) -> str:
        return self._broker_url or stack.enter_context(EmbeddedBrokerProcess()).url

    def start_agents(self, stack: ExitStack, plan_path: Path, devices: Sequence[str], broker_url: str,
                     deployment: str, extra_args: Sequence[str]) -> AgentProcesses:
        return stack.enter_context(AgentProcesses(plan_path, devices, broker_url, deployment, extra_args=extra_args))

    def client_side(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


class EmulatedHosts:
    """The plan's "edge" and "cloud" devices on the emulated link's hosts; Mosquitto on `broker_side`.

    A context manager: the broker runs from `__enter__` to `__exit__`, across every deployment served."""

    def __init__(self, link: EmulatedLink, edge_quota: CpuQuota | None = None,
                 threads: Mapping[str, int] | None = None, broker_side: Side = "cloud") -> None:
        if broker_side not in SIDES:
            raise TestbedError(f"the broker runs on the edge or the cloud host, not {broker_side!r}.")
        self.link = link
        self.edge_quota = edge_quota
        self.threads = dict(threads or {})
        self.broker_side = broker_side
        self._broker: MosquittoBroker | None = None
        self.description = (f"namespaces {link.namespaces['edge']} / {link.namespaces['cloud']}, Mosquitto on the "
                            f"{broker_side} host")

    def __enter__(self) -> Self:
        with self.link.entered(self.broker_side):  # its process and its readiness probe live there
            self._broker = MosquittoBroker(host=ADDRESSES[self.broker_side]).start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        broker, self._broker = self._broker, None
        if broker is not None:
            broker.stop()

    def broker_url(self, stack: ExitStack) -> str:
        if self._broker is None:
            raise TestbedError("the emulated hosts' broker is not running; use EmulatedHosts as a context manager.")
        return self._broker.url

    def start_agents(self, stack: ExitStack, plan_path: Path, devices: Sequence[str], broker_url: str,
                     deployment: str, extra_args: Sequence[str]) -> AgentProcesses:
        unknown = sorted(set(devices) - set(SIDES))
        if unknown:
            raise TestbedError(f"the emulated link joins an edge and a cloud host; the plan also has {', '.join(unknown)}.")
        prefixes = {side: self.link.exec_prefix(side) for side in SIDES}
        device_args = {device: ["--threads", str(count)] for device, count in self.threads.items()}
        agents = stack.enter_context(PlacedAgentProcesses(plan_path, devices, broker_url, deployment, prefixes,
                                                          device_args, extra_args))
        if self.edge_quota is not None and "edge" in agents.processes:  # `ip netns exec` execs: the pid is the agent's
            self.edge_quota.add(agents.processes["edge"].pid)
        return agents

    @contextmanager
    def client_side(self) -> Iterator[None]:
        with self.link.entered("edge"):
            yield
