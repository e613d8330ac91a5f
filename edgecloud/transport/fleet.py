"""`edgecloud fleet init`: everything a locked-down deployment needs, written into one folder.

    from edgecloud.transport.fleet import init_fleet, fleet_broker, load_fleet
    fleet = init_fleet("factory", devices=["edge", "cloud"], clients=["app"], output_dir=Path("fleet"), tls=True)
    fleet.identity("app").url            # "mqtts://app@127.0.0.1:8883?ca=/abs/fleet/ca.crt" (no password)
    fleet.identity("app").password_file  # fleet/credentials/app.password, mode 0600
    with fleet_broker(Path("fleet")) as broker:   # Mosquitto from the folder (`edgecloud broker --mosquitto --config`)
        ...

What the folder holds, and why:
- `mosquitto.conf`: the generated config of `edgecloud.transport.broker.MosquittoBroker` (TCP_NODELAY, packet
  limit, bounded queues, no anonymous access, `use_username_as_clientid` so a login is an identity);
  `mosquitto -c fleet/mosquitto.conf` runs it as it is.
- `passwords`: hashed by `mosquitto_passwd` (the broker never holds a plain password); `acl`: the
  per-identity rules of `edgecloud.transport.broker.device_acl` (X reads only its inbox, writes only as X).
- with TLS: `ca.crt`/`ca.key` (a CA made here with openssl) and `server.crt`/`server.key` signed by it
  for the broker's host; clients verify the broker with `ca.crt`.
- `credentials/<identity>.password` (0600): one per device and client, for `--broker-password-file`,
  so that no password is ever typed into a command line.
- `fleet.json`: deployment, broker address and each identity's URL (without password) and files.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgecloud.errors import EdgecloudError
from edgecloud.transport.broker import LOOPBACK, MosquittoBroker, TlsFiles, device_acl, hash_passwords
from edgecloud.transport.topics import device_topic
from edgecloud.transport.wire import DEFAULT_LIMITS

FLEET_FORMAT = "edgecloud.fleet/1"
PASSWORD_BYTES = 24  # of randomness per generated password (32 URL-safe characters)
CERT_DAYS = 825  # the longest validity clients such as Apple's still accept for a server certificate
SECRET_MODE = 0o600


class FleetError(EdgecloudError):
    """A fleet folder cannot be written or read."""


@dataclass(frozen=True)
class Identity:
    """One login of the fleet: a device (runs an agent) or a client (sends requests)."""

    name: str
    kind: str  # "device" or "client"
    url: str  # broker URL with this user and no password
    password_file: Path


@dataclass(frozen=True)
class Fleet:
    deployment: str
    directory: Path
    host: str
    port: int
    tls: bool
    max_message_bytes: int
    identities: tuple[Identity, ...]

    def identity(self, name: str) -> Identity:
        for identity in self.identities:
            if identity.name == name:
                return identity
        raise FleetError(f"the fleet in {self.directory} has no identity {name!r}; "
                         f"it has {', '.join(identity.name for identity in self.identities)}.")


def _openssl(*arguments: str) -> None:
    try:
        subprocess.run(["openssl", *arguments], check=True, capture_output=True)
    except FileNotFoundError:
        raise FleetError("openssl is not installed; on Debian run `apt-get install openssl`.") from None
    except subprocess.CalledProcessError as error:
        raise FleetError(f"openssl {arguments[0]} failed: {error.stderr.decode(errors='replace').strip()[-300:]}") from None


def _subject_alt_name(host: str) -> str:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return f"DNS:{host}"
    return f"IP:{host}"


def write_tls_material(directory: Path, host: str, deployment: str) -> TlsFiles:
    """A CA and a server certificate for `host` signed by it (RSA 2048, SHA-256); keys 0600."""
    ca_key, ca_cert = directory / "ca.key", directory / "ca.crt"
    server_key, server_csr, server_cert = directory / "server.key", directory / "server.csr", directory / "server.crt"
    for key in (ca_key, server_key):
        key.touch(mode=SECRET_MODE)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", str(CERT_DAYS),
             "-subj", f"/CN=edgecloud {deployment} CA", "-keyout", str(ca_key), "-out", str(ca_cert))
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-sha256", "-subj", f"/CN={host}",
             "-keyout", str(server_key), "-out", str(server_csr))
    extensions = directory / "server.ext"
    extensions.write_text(f"subjectAltName={_subject_alt_name(host)}\nextendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", str(server_csr), "-CA", str(ca_cert), "-CAkey", str(ca_key), "-CAcreateserial",
             "-days", str(CERT_DAYS), "-sha256", "-extfile", str(extensions), "-out", str(server_cert))
    for leftover in (server_csr, extensions, directory / "ca.srl"):
        leftover.unlink(missing_ok=True)
    return TlsFiles(certfile=server_cert, keyfile=server_key)


def _identity_url(name: str, host: str, port: int, tls: bool, directory: Path) -> str:
    scheme = "mqtts" if tls else "mqtt"
    query = f"?ca={directory / 'ca.crt'}" if tls else ""
    return f"{scheme}://{name}@{host}:{port}{query}"


def init_fleet(deployment: str, devices: Sequence[str], clients: Sequence[str], output_dir: Path, *,
               tls: bool = False, host: str = LOOPBACK, port: int | None = None,
               max_message_bytes: int = DEFAULT_LIMITS.max_message_bytes) -> Fleet:
    """Write the fleet folder (see the module docstring) and return what it holds.

    Refuses a folder that already holds a fleet (regenerating would lock every device out) and
    names that could not be topics or ACL lines. Passwords come from `secrets`, never from a seed.
    """
    names = [*devices, *clients]
    if not devices:
        raise FleetError("a fleet needs at least one --device.")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise FleetError(f"identity names must be unique; repeated: {', '.join(duplicates)}.")
    for name in names:
        device_topic(deployment, name)  # TransportError for a name that cannot be a topic level or an ACL user
    directory = output_dir.resolve()
    if (directory / "fleet.json").exists():
        raise FleetError(f"{directory} already holds a fleet; remove it or choose another folder.")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "credentials").mkdir(mode=0o700, exist_ok=True)
    except OSError as error:
        raise FleetError(f"cannot create the fleet folder {directory}: {error.strerror}.") from None
    port = port or (8883 if tls else 1883)
    passwords = {name: secrets.token_urlsafe(PASSWORD_BYTES) for name in names}
    identities = []
    for name in names:
        password_file = directory / "credentials" / f"{name}.password"
        password_file.touch(mode=SECRET_MODE)
        password_file.write_text(passwords[name] + "\n")
        identities.append(Identity(name, "device" if name in devices else "client",
                                   _identity_url(name, host, port, tls, directory), password_file))
    hash_passwords(directory / "passwords", passwords)
    fleet = Fleet(deployment, directory, host, port, tls, max_message_bytes, tuple(identities))
    acl = device_acl(deployment, devices, clients)
    _fleet_broker(fleet, acl, write_tls_material(directory, host, deployment) if tls else None).write_files(directory)
    manifest = {
        "format": FLEET_FORMAT, "deployment": deployment, "host": host, "port": port, "tls": tls,
        "max_message_bytes": max_message_bytes,
        "identities": [{"name": identity.name, "kind": identity.kind, "url": identity.url,
                        "password_file": str(identity.password_file)} for identity in identities],
    }
    (directory / "fleet.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return fleet


def _fleet_broker(fleet: Fleet, acl: str, tls: TlsFiles | None) -> MosquittoBroker:
    return MosquittoBroker(fleet.host, fleet.port, max_message_bytes=fleet.max_message_bytes,
                           password_file=fleet.directory / "passwords", acl=acl, tls=tls)


def load_fleet(directory: Path) -> Fleet:
    """Read `directory/fleet.json` as `init_fleet` wrote it; FleetError with the reason otherwise."""
    path = directory.resolve() / "fleet.json"
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FLEET_FORMAT:
            raise FleetError(f"{path} is not a fleet file (format {FLEET_FORMAT}).")
        identities = tuple(Identity(str(item["name"]), str(item["kind"]), str(item["url"]), Path(item["password_file"]))
                           for item in data["identities"])
        return Fleet(str(data["deployment"]), path.parent, str(data["host"]), int(data["port"]), bool(data["tls"]),
                     int(data["max_message_bytes"]), identities)
    except FileNotFoundError:
        raise FleetError(f"{directory} holds no fleet.json; create it with `edgecloud fleet init`.") from None
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
        raise FleetError(f"cannot read the fleet file {path}: {error!r}.") from None


def fleet_broker(directory: Path) -> MosquittoBroker:
    """Mosquitto configured from a fleet folder (unstarted; a context manager like every broker)."""
    fleet = load_fleet(directory)
    tls = TlsFiles(fleet.directory / "server.crt", fleet.directory / "server.key") if fleet.tls else None
    try:
        acl = (fleet.directory / "acl").read_text()  # as the user may have edited it
    except OSError as error:
        raise FleetError(f"cannot read the fleet's ACL {fleet.directory / 'acl'}: {error.strerror}.") from None
    return _fleet_broker(fleet, acl, tls)
