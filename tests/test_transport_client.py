"""The transport client and the embedded brokers in isolation (the conformance suite covers the rest)."""

from __future__ import annotations

import queue
import socket
import subprocess
import sys
import threading
import time

import pytest

from edgecloud.errors import TransportError
from edgecloud.transport.broker import EmbeddedBroker, EmbeddedBrokerProcess
from edgecloud.transport.mqtt import MqttTransport, TransportOptions


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


def test_a_port_in_use_is_one_error_line_from_the_broker_and_its_command() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(TransportError, match="cannot listen on 127.0.0.1:.*address already in use"):
            EmbeddedBroker(port=port).start()
        result = subprocess.run([sys.executable, "-m", "edgecloud.cli.app", "broker", "--port", str(port)],
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("error: the MQTT broker cannot listen") and result.stderr.count("\n") == 1


def test_socket_has_nodelay_and_the_outgoing_queue_is_bounded() -> None:
    broker = EmbeddedBroker().start()
    try:
        with MqttTransport(broker.url, "bounded", TransportOptions(max_queued_messages=5)) as transport:
            sock = transport._client.socket()  # white-box: the option is invisible from outside on loopback
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            broker.stop()
            deadline = time.monotonic() + 10.0
            while transport.is_connected and time.monotonic() < deadline:
                time.sleep(0.02)
            assert not transport.is_connected
            with pytest.raises(TransportError, match="queue .* is full"):
                for _ in range(10):  # while the broker is gone, QoS 1 messages wait in the bounded queue
                    transport.publish("bounded/topic", b"x")
    finally:
        broker.stop()
