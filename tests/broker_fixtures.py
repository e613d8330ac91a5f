"""Broker fixtures shared by the transport conformance suite and the serving integration tests.

Import what you need into a test module: `from broker_fixtures import broker, broker_factory`
(pytest puts tests/ on sys.path). `broker` is session-scoped and parametrized over BROKER_KINDS, so
every test that takes it runs once against the embedded amqtt broker and once against Mosquitto.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edgecloud.broker import EmbeddedBrokerProcess, MosquittoBroker

BROKER_KINDS = ("embedded", "mosquitto")
BrokerFactory = Callable[..., EmbeddedBrokerProcess | MosquittoBroker]


def make_broker(kind: str, port: int = 0, **options: object) -> EmbeddedBrokerProcess | MosquittoBroker:
    """An unstarted broker of `kind`; `options` go to MosquittoBroker (passwords, acl, tls...)."""
    if kind == "embedded":
        return EmbeddedBrokerProcess(port=port)
    return MosquittoBroker(port=port, **options)  # type: ignore[arg-type]


@pytest.fixture(scope="session", params=BROKER_KINDS)
def broker(request: pytest.FixtureRequest) -> Iterator[EmbeddedBrokerProcess | MosquittoBroker]:
    """A running broker of each kind, shared by the whole session."""
    with make_broker(request.param) as running:
        yield running


@pytest.fixture()
def broker_factory() -> Iterator[BrokerFactory]:
    """Start extra brokers (e.g. to restart one); every broker it made is stopped at teardown."""
    made: list[EmbeddedBrokerProcess | MosquittoBroker] = []

    def factory(kind: str, port: int = 0, **options: object) -> EmbeddedBrokerProcess | MosquittoBroker:
        instance = make_broker(kind, port, **options)
        made.append(instance)
        return instance.start()

    yield factory
    for instance in made:
        instance.stop()


@pytest.fixture(scope="session")
def self_signed_tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(certificate, key) for 127.0.0.1, self-signed, so it is also the CA clients trust."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "server.crt", folder / "server.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key
