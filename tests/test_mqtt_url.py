"""Broker URLs, topic names and the in-thread embedded broker."""

from __future__ import annotations

import queue
import threading

import pytest

from edgecloud.broker import EmbeddedBroker
from edgecloud.errors import TransportError
from edgecloud.mqtt import MqttTransport
from edgecloud.mqtt_url import BrokerAddress, parse_broker_url
from edgecloud.topics import device_topic


@pytest.mark.parametrize(("url", "expected"), [
    ("mqtt://localhost", BrokerAddress("localhost", 1883)),
    ("mqtt://10.0.0.2:1999", BrokerAddress("10.0.0.2", 1999)),
    ("mqtts://broker.example", BrokerAddress("broker.example", 8883, tls=True)),
    ("mqtt://edge:s%3Acret%40x@h:1", BrokerAddress("h", 1, username="edge", password="s:cret@x")),
    ("mqtt://edge@h", BrokerAddress("h", 1883, username="edge")),
    ("mqtts://u:p@h:8884?ca=/c.pem&cert=/me.pem&key=/me.key&insecure=1",
     BrokerAddress("h", 8884, tls=True, username="u", password="p", ca_file="/c.pem", cert_file="/me.pem",
                   key_file="/me.key", insecure=True)),
])
def test_broker_urls_parse(url: str, expected: BrokerAddress) -> None:
    assert parse_broker_url(url) == expected


@pytest.mark.parametrize(("url", "reason"), [
    ("http://h", "mqtt:// or mqtts://"),
    ("h:1883", "mqtt:// or mqtts://"),
    ("mqtt://", "no host"),
    ("mqtt://h:99999", "malformed"),
    ("mqtt://h/path", "path"),
    ("mqtt://h?ca=/x", "TLS options"),
    ("mqtts://h?verify=0", "unknown options"),
    ("mqtts://h?insecure=maybe", "insecure"),
    ("mqtts://h?cert=/me.pem", "both cert and key"),
])
def test_bad_broker_urls_are_refused_with_a_reason(url: str, reason: str) -> None:
    with pytest.raises(TransportError, match=reason):
        parse_broker_url(url)


def test_device_topics_are_one_inbox_per_device() -> None:
    assert device_topic("demo", "edge") == "edgecloud/demo/edge/in"
    for deployment, device in [("a/b", "edge"), ("demo", "+"), ("demo", "#"), ("", "edge"), ("$SYS", "x")]:
        with pytest.raises(TransportError):
            device_topic(deployment, device)


def test_embedded_broker_thread_serves_and_stops_cleanly() -> None:
    threads_before = set(threading.enumerate())
    with EmbeddedBroker() as broker, MqttTransport(broker.url, "solo") as transport:
        assert transport.protocol == "3.1.1"  # amqtt refuses MQTT 5; the client fell back
        seen: queue.Queue[bytes] = queue.Queue()
        transport.subscribe("loop/back", lambda payload, _: seen.put(payload))
        transport.publish("loop/back", b"hello")
        assert seen.get(timeout=10.0) == b"hello"
    assert not [thread for thread in set(threading.enumerate()) - threads_before if thread.is_alive()]
    with pytest.raises(TransportError, match="cannot reach"):
        MqttTransport(broker.url, "late").connect()


def test_embedded_broker_process_runs_the_cli_and_stops_gracefully() -> None:
    from edgecloud.broker import EmbeddedBrokerProcess

    broker = EmbeddedBrokerProcess().start()
    with MqttTransport(broker.url, "cli-check") as transport:
        assert transport.protocol == "3.1.1"
    log_text = broker.log_text()
    broker.stop()
    assert broker.exit_code == 0  # SIGTERM ends it through its own shutdown, not by SIGKILL
    assert "listening on mqtt://127.0.0.1" in log_text
    assert "WARNING" not in log_text and "ERROR" not in log_text  # the expected MQTT 5 refusal is not logged


def test_broker_command_is_registered() -> None:
    from typer.testing import CliRunner

    from edgecloud.cli.app import app

    result = CliRunner().invoke(app, ["broker", "--help"])
    assert result.exit_code == 0 and "--port" in result.output
