"""Broker URLs: `mqtt://[user[:password]@]host[:port]` and `mqtts://...?ca=PATH&cert=PATH&key=PATH&insecure=1`.

Why a URL: one string on the command line (`--broker`) carries address, user and TLS options.
User and password may be percent-encoded. Query options apply to mqtts:// only: `ca` (CA bundle to
verify the broker against; the system store when absent), `cert` and `key` (client certificate),
`insecure=1` (skip hostname checking, e.g. a self-signed cert on an IP).

Passwords: a password in the URL ends up in `/proc/<pid>/cmdline`, which every local user can read.
So `resolve_credentials` also takes it from the file named by `EDGECLOUD_BROKER_PASSWORD_FILE` (what
the CLI's `--broker-password-file` sets; child processes inherit the path, not the secret) or from
`EDGECLOUD_BROKER_PASSWORD` (`/proc/<pid>/environ` is readable by its owner only). Precedence: URL,
file, variable. Every password found is masked in all log output (`edgecloud.transport.secret_masking`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from edgecloud.errors import TransportError
from edgecloud.transport.secret_masking import register_secret

PASSWORD_ENV = "EDGECLOUD_BROKER_PASSWORD"
PASSWORD_FILE_ENV = "EDGECLOUD_BROKER_PASSWORD_FILE"

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
_TLS_OPTIONS = frozenset({"ca", "cert", "key", "insecure"})
_TRUE = {"1", "true", "yes"}
_FALSE = {"0", "false", "no"}
_PASSWORD_IN_URL = re.compile(r"^([^:/?#]+://[^/?#@:]*):[^/?#]*@")


def split_password(url: str) -> tuple[str, str | None]:
    """(the URL without its password, the password or None): to hand a child process the address on its
    command line, which every local user can read in /proc, and the secret through PASSWORD_ENV."""
    if not _PASSWORD_IN_URL.match(url):
        return url, None
    return _PASSWORD_IN_URL.sub(r"\1@", url), parse_broker_url(url).password


def _shown(url: str) -> str:
    """The URL as an error message quotes it: the password masked, since errors reach terminals and CI logs."""
    return repr(_PASSWORD_IN_URL.sub(r"\1:***@", url))


@dataclass(frozen=True)
class BrokerAddress:
    """Where and how to connect: parsed from a broker URL."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False


def parse_broker_url(url: str) -> BrokerAddress:
    """Parse `url`; TransportError with the reason when it is not a usable broker URL."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise TransportError(f"broker URL {_shown(url)} is malformed: {error}.") from None
    if parts.scheme not in DEFAULT_PORTS:
        raise TransportError(f"broker URL {_shown(url)} must start with mqtt:// or mqtts://.")
    if not parts.hostname:
        raise TransportError(f"broker URL {_shown(url)} names no host.")
    if parts.path not in ("", "/") or parts.fragment:
        raise TransportError(f"broker URL {_shown(url)} must not have a path or fragment.")
    options = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
    unknown = sorted(set(options) - _TLS_OPTIONS)
    if unknown:
        raise TransportError(f"broker URL {_shown(url)} has unknown options {', '.join(unknown)} (known: ca, cert, key, insecure).")
    tls = parts.scheme == "mqtts"
    if options and not tls:
        raise TransportError(f"broker URL {_shown(url)} has TLS options but the scheme is mqtt://, not mqtts://.")
    single = {name: values[-1] for name, values in options.items()}
    insecure_text = single.get("insecure", "0").lower()
    if insecure_text not in _TRUE | _FALSE:
        raise TransportError(f"broker URL option insecure={insecure_text!r} must be 1 or 0.")
    if ("cert" in single) != ("key" in single):
        raise TransportError(f"broker URL {_shown(url)} must give both cert and key for a client certificate, or neither.")
    return BrokerAddress(
        host=parts.hostname,
        port=port or DEFAULT_PORTS[parts.scheme],
        tls=tls,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        ca_file=single.get("ca") or None,
        cert_file=single.get("cert") or None,
        key_file=single.get("key") or None,
        insecure=insecure_text in _TRUE,
    )


def resolve_credentials(address: BrokerAddress, environ: Mapping[str, str] = os.environ) -> BrokerAddress:
    """`address` with its password from the URL, else the password file, else the environment (see module doc).

    The password found is registered for masking in log output. TransportError names an unreadable
    password file, and a password given for a URL without a user (MQTT sends none without one).
    """
    password, source = address.password, "the URL"
    if password is None and environ.get(PASSWORD_FILE_ENV):
        path = environ[PASSWORD_FILE_ENV]
        try:
            with open(path, encoding="utf-8") as handle:
                password = handle.read().removesuffix("\n").removesuffix("\r")
        except (OSError, UnicodeDecodeError) as error:
            raise TransportError(f"cannot read the broker password file {path}: {error.strerror or error}.") from None
        source = f"the password file {path}"
    elif password is None and environ.get(PASSWORD_ENV):
        password, source = environ[PASSWORD_ENV], f"${PASSWORD_ENV}"
    if password is None:
        return address
    register_secret(password)
    if address.username is None:
        raise TransportError(f"a broker password comes from {source}, but the broker URL names no user "
                             "(write mqtt://USER@host:port).")
    return dataclasses.replace(address, password=password)
