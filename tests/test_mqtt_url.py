"""Broker URLs and topic names."""

from __future__ import annotations

import pytest

from edgecloud.errors import TransportError
from edgecloud.transport.mqtt_url import BrokerAddress, parse_broker_url
from edgecloud.transport.topics import device_topic, parse_sender_topic, reply_topic, sender_topic


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


@pytest.mark.parametrize("url", ["mqtt://edge:s3cret@h:99999", "mqtt://edge:s3cret@h/path", "mqtt://edge:s3cr@et@h?ca=x",
                                 "http://edge:s3cret@h"])
def test_errors_about_a_broker_url_do_not_show_its_password(url: str) -> None:
    with pytest.raises(TransportError, match="edge:\\*\\*\\*@") as error:
        parse_broker_url(url)
    assert "s3cr" not in str(error.value)


def test_device_topics_are_one_inbox_per_device() -> None:
    assert device_topic("demo", "edge") == "edgecloud/demo/edge/in"
    for deployment, device in [("a/b", "edge"), ("demo", "+"), ("demo", "#"), ("", "edge"), ("$SYS", "x"),
                               ("demo", "a\ntopic readwrite x"), ("demo", "two words"), ("demo", "tab\t")]:
        with pytest.raises(TransportError):
            device_topic(deployment, device)


def test_sender_topics_put_the_sender_last_and_parse_back() -> None:
    assert sender_topic("demo", "cloud", "edge") == "edgecloud/demo/cloud/in/edge"
    assert parse_sender_topic("edgecloud/demo/cloud/in/edge") == ("demo", "cloud", "edge")
    assert reply_topic("edgecloud/demo/client/in", "cloud") == "edgecloud/demo/client/in/cloud"
    for bad_sender in ["+", "#", "a/b", "", "new\nline"]:
        with pytest.raises(TransportError):
            sender_topic("demo", "cloud", bad_sender)
    for bad_topic in ["edgecloud/demo/cloud/in", "edgecloud/demo/cloud/out/edge", "other/demo/cloud/in/edge",
                      "edgecloud/demo/cloud/in/edge/extra", "edgecloud/demo/+/in/edge"]:
        with pytest.raises(TransportError):
            parse_sender_topic(bad_topic)
    for bad_reply_to in ["edgecloud/demo/client/in/cloud", "edgecloud/demo/client", "elsewhere"]:
        with pytest.raises(TransportError):
            reply_topic(bad_reply_to, "cloud")
