"""Brokers for the tests: which kinds the transport suites run against, and how to make one.

The fixtures built on this (`broker`, `broker_factory`, `self_signed_tls`) live in conftest.py, so that
every module shares one session-scoped broker of each kind instead of importing the fixture and getting
a broker per module.
"""

from __future__ import annotations

from collections.abc import Callable

from edgecloud.transport.broker import EmbeddedBrokerProcess, MosquittoBroker

BROKER_KINDS = ("embedded", "mosquitto")
BrokerFactory = Callable[..., EmbeddedBrokerProcess | MosquittoBroker]


def make_broker(kind: str, port: int = 0, **options: object) -> EmbeddedBrokerProcess | MosquittoBroker:
    """An unstarted broker of `kind`; `options` go to MosquittoBroker (passwords, acl, tls...)."""
    if kind == "embedded":
        return EmbeddedBrokerProcess(port=port)
    return MosquittoBroker(port=port, **options)  # type: ignore[arg-type]
