"""Broker credentials outside the URL (file, environment), masked in logs; TLS files named when missing.

Every password these tests use is registered for masking for the rest of the test process, so each is
a string no other test's log could contain."""

from __future__ import annotations

import logging
import queue

import pytest

from edgecloud.errors import TransportError
from edgecloud.transport.mqtt import MqttTransport
from edgecloud.transport.mqtt_url import PASSWORD_ENV, PASSWORD_FILE_ENV, parse_broker_url, resolve_credentials

SECRET = "s3cret:with@odd/chars"


@pytest.mark.parametrize("option", ["ca", "cert", "key"])
def test_a_missing_tls_file_is_named_in_the_error(tmp_path, option: str) -> None:
    existing = tmp_path / "present.pem"
    existing.write_text("not a certificate")
    files = {"ca": existing, "cert": existing, "key": existing} | {option: tmp_path / "missing.pem"}
    query = f"ca={files['ca']}" if option == "ca" else f"cert={files['cert']}&key={files['key']}"
    with pytest.raises(TransportError, match=f"{option}=.*missing.pem"):
        MqttTransport(f"mqtts://127.0.0.1:1?{query}", "x").connect()


def test_an_unreadable_ca_file_is_named_with_the_reason(tmp_path) -> None:
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("not a certificate")
    with pytest.raises(TransportError, match="bogus.pem"):
        MqttTransport(f"mqtts://127.0.0.1:1?ca={bogus}", "x").connect()


def test_the_password_comes_from_the_url_then_a_file_then_the_environment(tmp_path) -> None:
    password_file = tmp_path / "edge.password"
    password_file.write_text(SECRET + "\n")
    address = parse_broker_url("mqtt://edge@h")
    assert resolve_credentials(address, {}).password is None
    assert resolve_credentials(address, {PASSWORD_ENV: "pw-from-env-3f9"}).password == "pw-from-env-3f9"
    both = {PASSWORD_ENV: "pw-from-env-3f9", PASSWORD_FILE_ENV: str(password_file)}
    assert resolve_credentials(address, both).password == SECRET  # one trailing newline is not part of it
    assert resolve_credentials(parse_broker_url("mqtt://edge:pw-in-url-3f9@h"), both).password == "pw-in-url-3f9"
    with pytest.raises(TransportError, match="missing.password"):
        resolve_credentials(address, {PASSWORD_FILE_ENV: str(tmp_path / "missing.password")})
    with pytest.raises(TransportError, match="names no user"):
        resolve_credentials(parse_broker_url("mqtt://h"), {PASSWORD_ENV: "pw-no-user-3f9"})


def test_a_password_file_logs_in_to_mosquitto_and_no_log_line_shows_the_password(
        broker_factory, tmp_path, monkeypatch, caplog: pytest.LogCaptureFixture) -> None:
    broker = broker_factory("mosquitto", passwords={"edge": SECRET})
    password_file = tmp_path / "edge.password"
    password_file.write_text(SECRET)
    monkeypatch.setenv(PASSWORD_FILE_ENV, str(password_file))
    seen: queue.Queue[bytes] = queue.Queue()
    with caplog.at_level(logging.INFO), MqttTransport(f"mqtt://edge@{broker.host}:{broker.port}", "edge") as edge:
        edge.subscribe("t/x", lambda payload, _: seen.put(payload))
        edge.publish("t/x", b"hi")
        assert seen.get(timeout=10.0) == b"hi"
        # any library or application line that quotes the secret, directly or inside a URL
        logging.getLogger("some.app").warning("connecting to mqtt://edge:%s@host", SECRET)
        logging.getLogger("some.app").info(f"password is {SECRET}")
    assert "connecting to mqtt://edge:***@host" in caplog.text
    assert SECRET not in caplog.text
    monkeypatch.delenv(PASSWORD_FILE_ENV)
    with pytest.raises(TransportError, match="refused"):
        MqttTransport(f"mqtt://edge@{broker.host}:{broker.port}", "edge2").connect()


def test_masking_never_makes_a_bad_log_call_raise(caplog: pytest.LogCaptureFixture) -> None:
    """Logging reports its own format errors; the masking factory must not turn them into exceptions."""
    from edgecloud.transport.secret_masking import register_secret

    register_secret("hunter2-mask-test")
    with caplog.at_level(logging.WARNING):
        logging.getLogger("edgecloud.test").warning("bad %s %s", "hunter2-mask-test")  # one argument short
    assert "hunter2-mask-test" not in caplog.text
