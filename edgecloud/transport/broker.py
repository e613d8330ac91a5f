"""MQTT brokers on this machine: the embedded amqtt broker and a Mosquitto launcher.

API (stable):

    from edgecloud.transport.broker import EmbeddedBroker, EmbeddedBrokerProcess, MosquittoBroker
    with EmbeddedBroker() as broker:            # amqtt in a background thread, free port
        url = broker.url                        # "mqtt://127.0.0.1:<port>"
    with EmbeddedBrokerProcess() as broker:     # same broker as a child process (`edgecloud broker`)
        ...
    with MosquittoBroker() as broker:           # Debian's mosquitto from a generated config
        ...

Every broker has `.host`, `.port`, `.url`, `.start()` (returns self once the port accepts
connections), `.stop()` (idempotent, leaves no process behind) and works as a context manager.
`port=0` picks a free port. Why two embedded flavours: the thread needs nothing but Python and
suits tests and one-process tools; the process keeps broker work off the caller's GIL, as a real
deployment would (the demo and the benchmark use it).

Mosquitto is the real broker: the generated config turns on `set_tcp_nodelay` (without it a 10 KB
message stalls ~20 ms on Nagle vs delayed ACK, measured here) and caps packets at our wire limit
plus MQTT framing (`max_packet_size`; mosquitto 2.0 prefers it to `message_size_limit`).
For security tests it takes per-device passwords, an ACL (see `device_acl`) and a TLS listener.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from edgecloud.errors import TransportError
from edgecloud.transport.topics import INBOX_LEVEL, TOPIC_ROOT, inbox_filter
from edgecloud.transport.wire import DEFAULT_LIMITS
from robust_training.runners.parent_death import child_environment

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0
SYSTEM_BINARY_DIRS = "/usr/sbin:/usr/local/sbin:/sbin"
# A PUBLISH packet carries the topic and a few header bytes besides our payload.
MQTT_PACKET_OVERHEAD_BYTES = 64 * 2**10
MAX_QUEUED_BYTES_PER_CLIENT = 256 * 2**20
AMQTT_PROTOCOL_LEVEL = 4  # MQTT 3.1.1, the only one amqtt 0.12.1 speaks


def ready_banner(host: str, port: int) -> str:
    """The line `edgecloud broker` prints once it accepts connections."""
    return f"edgecloud broker: listening on mqtt://{host}:{port}"


def free_tcp_port(host: str = LOOPBACK) -> int:
    """A port that was free a moment ago (the OS picks it); the caller binds it right away."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def wait_for_port(host: str, port: int, timeout_s: float, alive: Callable[[], bool] = lambda: True) -> None:
    """Block until `host:port` accepts TCP connections; TransportError after `timeout_s` or if `alive()` turns false."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive():
            raise TransportError(f"the broker on port {port} exited before it accepted connections.")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TransportError(f"no broker accepted connections on {host}:{port} within {timeout_s:g} s.")


def amqtt_config(host: str, port: int) -> dict:
    """amqtt settings: one TCP listener and anonymous access, without the default $SYS publisher and
    event/packet logger plugins, which a transport for tensors does not need.

    amqtt has no packet size limit (a client may send up to MQTT's 256 MB), so it binds to loopback by
    default and is meant for demos and tests; put Mosquitto, capped at our wire limit, in front of
    untrusted clients.
    """
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


class _AmqttNoise(logging.Filter):
    """Drops amqtt's warnings about refused MQTT 5 connects: our clients try 5 first by design.

    The generic "Invalid connection from" line goes too; amqtt follows it with a "Failed to
    initialize client session: <reason>" line, which is kept for every other reason. So does the
    traceback amqtt logs when it cannot listen: `serve_amqtt` raises that reason as a TransportError.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("Invalid protocol" in message and message.rstrip().endswith(": 5")) and \
            "Invalid connection from" not in message and message != "Broker startup failed"


def _answer_mqtt5_connects() -> None:
    """Make amqtt refuse an MQTT 5 CONNECT that carries properties instead of hanging on it.

    amqtt 0.12.1 parses the whole CONNECT as 3.1.1 before it looks at the protocol level: an MQTT 5
    CONNECT's properties are read as the client id's length, amqtt waits for bytes that never come,
    and the client gets no CONNACK (ours sends Maximum Packet Size and a session expiry). Skipping the
    payload of any other level lets amqtt's own check answer "unacceptable protocol version" at once.
    """
    from amqtt.mqtt.connect import ConnectPayload

    if getattr(ConnectPayload.from_stream, "_edgecloud", False):
        return
    parse = ConnectPayload.from_stream.__func__  # type: ignore[attr-defined]

    async def from_stream(cls, reader, fixed_header, variable_header):  # type: ignore[no-untyped-def]
        if variable_header is not None and variable_header.proto_level != AMQTT_PROTOCOL_LEVEL:
            return cls(client_id="unread")  # amqtt checks that a client id is present before the level
        return await parse(cls, reader, fixed_header, variable_header)

    from_stream._edgecloud = True  # type: ignore[attr-defined]
    ConnectPayload.from_stream = classmethod(from_stream)  # type: ignore[method-assign,assignment]


async def serve_amqtt(host: str, port: int, stop: asyncio.Event, on_started: Callable[[], None] = lambda: None) -> None:
    """Run an amqtt broker on the running loop until `stop` is set; `on_started` runs once it listens."""
    from amqtt.broker import Broker  # imported here: amqtt pulls in websockets and transitions
    from amqtt.errors import BrokerError

    amqtt_logger = logging.getLogger("amqtt.broker")
    if not any(isinstance(existing, _AmqttNoise) for existing in amqtt_logger.filters):
        amqtt_logger.addFilter(_AmqttNoise())
    _answer_mqtt5_connects()
    broker = Broker(amqtt_config(host, port))
    try:
        await broker.start()
    except BrokerError as error:  # a port in use or out of range, an unknown host: the user's to fix
        raise TransportError(f"the MQTT broker cannot listen on {host}:{port}: {error.__cause__ or error}.") from None
    logger.info("embedded MQTT broker listening on %s:%d", host, port)
    on_started()
    try:
        await stop.wait()
    finally:
        await broker.shutdown()
        logger.info("embedded MQTT broker on %s:%d stopped", host, port)


class _Broker(ABC):
    """Shared surface of every broker: address, url, context manager."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port or free_tcp_port(host)

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @abstractmethod
    def start(self) -> Self:
        """Start serving; returns once clients can connect."""

    @abstractmethod
    def stop(self) -> None:
        """Stop serving (idempotent)."""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()


class EmbeddedBroker(_Broker):
    """amqtt (MQTT 3.1.1 only) on its own event loop in a daemon thread of this process."""

    def __init__(self, host: str = LOOPBACK, port: int = 0) -> None:
        super().__init__(host, port)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    def start(self) -> Self:
        started = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._stop = asyncio.Event()
            try:
                loop.run_until_complete(serve_amqtt(self.host, self.port, self._stop, started.set))
            except BaseException as error:  # reported to start(); the thread must not die silently
                self._error = error
                started.set()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name=f"amqtt-{self.port}", daemon=True)
        self._thread.start()
        if not started.wait(START_TIMEOUT_S) or self._error is not None:
            self.stop()
            reason = self._error or f"no answer within {START_TIMEOUT_S:g} s"
            raise TransportError(f"the embedded broker did not start on {self.host}:{self.port}: {reason}.")
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:  # the loop closed between the check and the call
                pass
        self._thread.join(STOP_TIMEOUT_S)
        self._thread = None


class _BrokerProcess(_Broker):
    """A broker in a child process: started, awaited on its port, stopped by SIGTERM then SIGKILL."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: Path | None = None
        self.exit_code: int | None = None  # of the last stop(): 0 or -15 (SIGTERM) is a clean stop

    @abstractmethod
    def _command(self) -> list[str]:
        """The broker's command line."""

    def _popen_options(self) -> dict:
        return {}

    def _wait_ready(self, process: subprocess.Popen[bytes]) -> None:
        wait_for_port(self.host, self.port, START_TIMEOUT_S, alive=lambda: process.poll() is None)

    def start(self) -> Self:
        log_dir = Path(tempfile.mkdtemp(prefix="edgecloud-broker-log-"))
        self._log_file = log_dir / "broker.log"
        with self._log_file.open("wb") as log:
            self._process = subprocess.Popen(self._command(), stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=subprocess.STDOUT, **self._popen_options())
        process = self._process
        try:
            self._wait_ready(process)
        except TransportError as error:
            output = self.log_text()
            self.stop()
            raise TransportError(f"{str(error).rstrip('.')}; its log says: {output.strip()[-500:] or 'nothing'}") from None
        logger.info("%s listening on %s:%d (pid %d)", type(self).__name__, self.host, self.port, process.pid)
        return self

    def log_text(self) -> str:
        """What the broker wrote to stdout/stderr so far (for error messages and debugging)."""
        if self._log_file is None or not self._log_file.exists():
            return ""
        return self._log_file.read_text(errors="replace")

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def exited(self) -> bool:
        """True once the broker process has ended (or was never started)."""
        return self._process is None or self._process.poll() is not None

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                logger.warning("%s (pid %d) ignored SIGTERM; killing it", type(self).__name__, process.pid)
                process.kill()
                process.wait(STOP_TIMEOUT_S)
        self.exit_code = process.returncode
        if self._log_file is not None:
            shutil.rmtree(self._log_file.parent, ignore_errors=True)
            self._log_file = None


class EmbeddedBrokerProcess(_BrokerProcess):
    """The amqtt broker as a child process running `edgecloud broker`."""

    def __init__(self, host: str = LOOPBACK, port: int = 0) -> None:
        super().__init__(host, port)

    def _command(self) -> list[str]:
        return [sys.executable, "-m", "edgecloud.cli.broker", "--host", self.host, "--port", str(self.port)]

    def _popen_options(self) -> dict:
        return {"env": child_environment(os.environ)}  # it ends with us, even if we are SIGKILLed

    def _wait_ready(self, process: subprocess.Popen[bytes]) -> None:
        """Wait for the command's ready line rather than probing the port, which amqtt logs as an error."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if ready_banner(self.host, self.port) in self.log_text():
                return
            if process.poll() is not None:
                raise TransportError(f"the broker on port {self.port} exited before it accepted connections.")
            time.sleep(0.05)
        raise TransportError(f"no broker accepted connections on {self.host}:{self.port} within {START_TIMEOUT_S:g} s.")


# The one TLS 1.3 suite our Mosquitto listeners offer. Why: OpenSSL's default order puts AES-256-GCM
# first, and Python 3.11's ssl cannot reorder a client's TLS 1.3 suites; AES-128-GCM does 10 rounds per
# block instead of 14, and every message is encrypted and decrypted twice on its way through the broker.
TLS13_CIPHERSUITE = "TLS_AES_128_GCM_SHA256"


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for a TLS listener: the server's certificate and key, and the CA clients are checked against."""

    certfile: Path
    keyfile: Path
    cafile: Path | None = None


def device_acl(deployment: str, devices: Sequence[str], clients: Sequence[str] = ()) -> str:
    """Mosquitto ACL text that makes the topic name the authenticated sender (see `edgecloud.transport.topics`).

    Identity X may read only its own inbox, `edgecloud/<deployment>/X/in/<any sender>`, and write only
    as itself, `edgecloud/<deployment>/<any receiver>/in/X`. With `use_username_as_clientid` in the
    config the username is also the MQTT client id, so one credential is one identity; the broker cannot
    check the `sender` inside our header, so receivers compare it with the topic's last level.
    """
    blocks: list[str] = []
    for identity in [*devices, *clients]:
        own_inbox = inbox_filter(deployment, identity)  # also refuses names that could inject ACL lines
        as_sender = f"{TOPIC_ROOT}/{deployment}/+/{INBOX_LEVEL}/{identity}"
        blocks.append("\n".join([f"user {identity}", f"topic read {own_inbox}", f"topic write {as_sender}"]))
    return "\n\n".join(blocks) + "\n"


def bridge_config(name: str, remote_host: str, remote_port: int, topic: str = f"{TOPIC_ROOT}/#", qos: int = 0) -> str:
    """Mosquitto config lines that bridge this broker to another, `topic` both ways.

    Why this shape: a real IoT site runs its own broker bridged to the cloud's; our topics all live under
    `edgecloud/`, so one pattern carries every deployment. Mosquitto marks bridge connections
    (`try_private`), so a message is not sent back over the bridge it came by. `name` must be unique
    per broker.
    Why QoS 0 on the bridge by default: Mosquitto 2.0.11 sets no TCP_NODELAY on the bridge's own
    socket (`set_tcp_nodelay` covers accepted clients only, and there is no bridge option for it), so
    at QoS 1 every PUBACK it writes holds the next message back until the peer's delayed ACK (Nagle):
    23 ms per small message measured here, against 0.07 ms at QoS 0. A message lost while the bridge
    reconnects is covered as any lost message is: the source's fallback and the client's deadline.
    """
    _check_config_word(name, "bridge name")
    _check_config_word(remote_host, "bridge host")
    if qos not in (0, 1, 2):
        raise TransportError(f"bridge QoS must be 0, 1 or 2, got {qos!r}.")
    return "\n".join([f"connection {name}", f"address {remote_host}:{int(remote_port)}", f"topic {topic} both {qos}",
                      "cleansession true", "notifications false", "start_type automatic",
                      "restart_timeout 1 5", ""]) + "\n"


def _check_config_word(value: str, what: str) -> None:
    """A value written into a config line: one printable word, or it could smuggle in a directive."""
    if not value or not value.isprintable() or any(character.isspace() for character in value):
        raise TransportError(f"{what} {value!r} must be one word without whitespace.")


def hash_passwords(path: Path, passwords: Mapping[str, str]) -> None:
    """Add `passwords` (user -> password) to the Mosquitto password file `path` (created 0600), hashed."""
    path.touch(mode=0o600)
    executable = shutil.which("mosquitto_passwd") or shutil.which("mosquitto_passwd", path=SYSTEM_BINARY_DIRS)
    if executable is None:
        raise TransportError("mosquitto_passwd is not installed; on Debian run `apt-get install mosquitto`.")
    # One call per user with -b: `-U` on a plain user:password file mis-splits passwords holding ':'.
    for user, password in passwords.items():
        done = subprocess.run([executable, "-b", str(path), user, password], capture_output=True, text=True)
        if done.returncode:  # CalledProcessError's text would quote the command, password included
            reason = (done.stderr or done.stdout).strip().splitlines()[:1] or [f"exit code {done.returncode}"]
            raise TransportError(f"mosquitto_passwd could not hash the password of {user!r}: {reason[0]}")


def _unprivileged_user() -> pwd.struct_passwd | None:
    """When we run as root, the account to run mosquitto as (it would otherwise drop privileges
    itself after start-up and then fail to read our temp files)."""
    if os.geteuid() != 0:
        return None
    for name in ("mosquitto", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    return None


class MosquittoBroker(_BrokerProcess):
    """Debian's `mosquitto` from a generated config in a temp dir, as an unprivileged child process.

    `passwords` maps usernames to passwords, or `password_file` is one hashed by `mosquitto_passwd`
    (anonymous access is then off); `acl` is ACL text (see `device_acl`); `tls` turns the listener
    into MQTT over TLS (mqtts://). `edgecloud.transport.fleet` writes all of these for a deployment.
    `extra_config` is appended to the generated config, e.g. a `bridge_config` to another broker.
    `max_queued_bytes` bounds what the broker holds for one slow subscriber; beyond it, it drops.
    """

    def __init__(self, host: str = LOOPBACK, port: int = 0, *, max_message_bytes: int = DEFAULT_LIMITS.max_message_bytes,
                 passwords: Mapping[str, str] | None = None, password_file: Path | None = None,
                 acl: str | None = None, tls: TlsFiles | None = None, executable: str = "mosquitto",
                 extra_config: str = "", max_queued_bytes: int = MAX_QUEUED_BYTES_PER_CLIENT) -> None:
        super().__init__(host, port)
        self.max_message_bytes = max_message_bytes
        self.max_queued_bytes = max_queued_bytes
        self.passwords = dict(passwords or {})
        self.password_file = password_file
        self.acl = acl
        self.tls = tls
        self.executable = executable
        self.extra_config = extra_config
        self._config_dir: Path | None = None

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def config_text(self, config_dir: Path) -> str:
        """The mosquitto.conf this broker runs with (files it names live in `config_dir`)."""
        lines = [
            f"listener {self.port} {self.host}",
            "set_tcp_nodelay true",
            # mosquitto 2.0 recommends max_packet_size over message_size_limit: a client that sends
            # a bigger packet is disconnected before the broker buffers or forwards it.
            f"max_packet_size {self.max_message_bytes + MQTT_PACKET_OVERHEAD_BYTES}",
            # Per slow client: enough for a burst of pipelined requests, bounded in bytes as well.
            "max_queued_messages 1000",
            f"max_queued_bytes {self.max_queued_bytes}",
            "persistence false",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
        ]
        if self.passwords or self.password_file is not None:
            lines += ["allow_anonymous false", f"password_file {config_dir / 'passwords'}", "use_username_as_clientid true"]
        else:
            lines.append("allow_anonymous true")
        if self.acl is not None:
            lines.append(f"acl_file {config_dir / 'acl'}")
        if self.tls is not None:
            lines += [f"certfile {config_dir / 'server.crt'}", f"keyfile {config_dir / 'server.key'}",
                      f"ciphers_tls1.3 {TLS13_CIPHERSUITE}"]
            if self.tls.cafile is not None:
                lines.append(f"cafile {config_dir / 'ca.crt'}")
        return "\n".join(lines) + "\n" + self.extra_config

    def write_files(self, config_dir: Path) -> Path:
        """Write mosquitto.conf and every file it names into `config_dir`; returns the config's path.

        Secrets (password hashes, the server key) are created 0600.
        """
        (config_dir / "mosquitto.conf").write_text(self.config_text(config_dir))
        if self.acl is not None:
            (config_dir / "acl").write_text(self.acl)
        copies = [] if self.password_file is None else [(self.password_file, "passwords")]
        if self.tls is not None:
            copies += [(self.tls.certfile, "server.crt"), (self.tls.keyfile, "server.key")]
            if self.tls.cafile is not None:
                copies.append((self.tls.cafile, "ca.crt"))
        for source, name in copies:
            target = config_dir / name
            if Path(source).resolve() != target.resolve():
                target.touch(mode=0o600)
                shutil.copyfile(source, target)
        if self.passwords:
            hash_passwords(config_dir / "passwords", self.passwords)
        return config_dir / "mosquitto.conf"

    def _write_config(self) -> Path:
        config_dir = Path(tempfile.mkdtemp(prefix="edgecloud-mosquitto-"))
        self._config_dir = config_dir
        # Copied so that the unprivileged broker can read them wherever the originals live.
        self.write_files(config_dir)
        account = _unprivileged_user()
        if account is not None:
            for path in [config_dir, *config_dir.iterdir()]:
                os.chown(path, account.pw_uid, account.pw_gid)
        return config_dir / "mosquitto.conf"

    def _command(self) -> list[str]:
        # Debian installs the broker in /usr/sbin, which is not on an ordinary user's PATH.
        found = shutil.which(self.executable) or shutil.which(self.executable, path=SYSTEM_BINARY_DIRS)
        if found is None:
            raise TransportError(f"{self.executable} is not installed; on Debian run `apt-get install mosquitto`.")
        return [found, "-c", str(self._write_config())]

    def _popen_options(self) -> dict:
        account = _unprivileged_user()
        return {} if account is None else {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}

    def stop(self) -> None:
        super().stop()
        if self._config_dir is not None:
            shutil.rmtree(self._config_dir, ignore_errors=True)
            self._config_dir = None
