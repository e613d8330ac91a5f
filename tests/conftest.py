"""Shared fixtures.

Bundled models: exporting one takes 1-6 s (torch's dynamo exporter), so every test gets them from one
on-disk cache. Unless EDGECLOUD_CACHE is already set, it points at `.pytest_cache/d/edgecloud-cache`
for the whole session, so `partitioner.models.zoo.cached_model_path(name)` called anywhere in a test (or in a
subprocess that inherits the environment) re-uses the files across tests and runs. Use either

    def test_x(bundled_models):            # lazy mapping: a model is exported on first access only
        path = bundled_models["resnet18"]

or `cached_model_path("resnet18")` directly.

Brokers: `broker` is session-scoped and parametrized over BROKER_KINDS, so every test that takes it
runs once against the embedded amqtt broker and once against Mosquitto, all sharing one broker of each
kind; `broker_factory` starts extra ones (to restart or configure them) and stops them at teardown.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from broker_fixtures import BROKER_KINDS, BrokerFactory, make_broker

from edgecloud.transport.broker import EmbeddedBrokerProcess, MosquittoBroker
from partitioner.models.zoo import MODEL_NAMES, cached_model_path


class BundledModels(Mapping[str, Path]):
    """Model name -> path of its exported ONNX file, exported on first access."""

    def __getitem__(self, name: str) -> Path:
        if name not in MODEL_NAMES:
            raise KeyError(name)
        return cached_model_path(name)

    def __iter__(self) -> Iterator[str]:
        return iter(MODEL_NAMES)

    def __len__(self) -> int:
        return len(MODEL_NAMES)


@pytest.fixture(scope="session", autouse=True)
def model_cache_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The session's edgecloud cache root (EDGECLOUD_CACHE): exported models go to its `models` folder."""
    if os.environ.get("EDGECLOUD_CACHE"):
        yield Path(os.environ["EDGECLOUD_CACHE"])
        return
    cache = getattr(request.config, "cache", None)
    directory = cache.mkdir("edgecloud-cache") if cache is not None else tmp_path_factory.mktemp("models")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGECLOUD_CACHE", str(directory))
        yield Path(directory)


@pytest.fixture(scope="session")
def bundled_models(model_cache_dir: Path) -> BundledModels:
    """Lazy mapping of every bundled model name to its exported ONNX file."""
    return BundledModels()


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
