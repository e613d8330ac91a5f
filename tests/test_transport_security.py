"""Mosquitto with TLS, per-device passwords and an ACL: identities are enforced by the broker."""

from __future__ import annotations

import logging
import queue
import time
from urllib.parse import quote

import pytest

from edgecloud.errors import TransportError
from edgecloud.transport.broker import (MQTT_PACKET_OVERHEAD_BYTES, TLS13_CIPHERSUITE, MosquittoBroker, TlsFiles,
                                        device_acl)
from edgecloud.transport.mqtt import MqttTransport, Requester, device_topic
from edgecloud.transport.topics import inbox_filter, reply_topic, sender_topic
from edgecloud.transport.wire import Message

DEPLOYMENT = "secure"
PASSWORDS = {"edge": "edge-secret", "cloud": "cloud-secret", "client": "client:secret@1"}
QUIET_PERIOD_S = 0.5


@pytest.fixture(scope="module")
def secure_broker(self_signed_tls):
    cert, key = self_signed_tls
    acl = device_acl(DEPLOYMENT, devices=["edge", "cloud"], clients=["client"])
    with MosquittoBroker(passwords=PASSWORDS, acl=acl, tls=TlsFiles(certfile=cert, keyfile=key)) as broker:
        yield broker, cert


def secure_url(broker: MosquittoBroker, cert, user: str, password: str) -> str:
    return f"mqtts://{quote(user, safe='')}:{quote(password, safe='')}@{broker.host}:{broker.port}?ca={cert}"


def test_acl_lets_each_identity_read_its_own_inbox_and_write_only_as_itself() -> None:
    acl = device_acl("dep", devices=["edge", "cloud"], clients=["client"])
    blocks = {block.splitlines()[0]: block.splitlines()[1:] for block in acl.strip().split("\n\n")}
    assert set(blocks) == {"user edge", "user cloud", "user client"}
    assert blocks["user edge"] == ["topic read edgecloud/dep/edge/in/+", "topic write edgecloud/dep/+/in/edge"]
    assert "#" not in acl


def test_tls_with_passwords_carries_messages_and_acl_hides_other_inboxes(secure_broker) -> None:
    broker, cert = secure_broker
    seen: queue.Queue[tuple[str, str]] = queue.Queue()
    with (MqttTransport(secure_url(broker, cert, "edge", PASSWORDS["edge"]), "edge") as edge,
          MqttTransport(secure_url(broker, cert, "client", PASSWORDS["client"]), "client") as client,
          MqttTransport(secure_url(broker, cert, "cloud", PASSWORDS["cloud"]), "cloud") as cloud):
        assert broker.url.startswith("mqtts://")
        edge.subscribe_messages(inbox_filter(DEPLOYMENT, "edge"), lambda m, _: seen.put(("edge", m.request_id)))
        # the edge also tries to read the cloud's inbox: the broker must not deliver that to it
        edge.subscribe_messages(inbox_filter(DEPLOYMENT, "cloud"), lambda m, _: seen.put(("edge-spy", m.request_id)))
        cloud.subscribe_messages(inbox_filter(DEPLOYMENT, "cloud"), lambda m, _: seen.put(("cloud", m.request_id)))
        client.publish_message(sender_topic(DEPLOYMENT, "edge", "client"), Message("request", "to-edge", "client"))
        client.publish_message(sender_topic(DEPLOYMENT, "cloud", "client"), Message("request", "to-cloud", "client"))
        received = {seen.get(timeout=10.0), seen.get(timeout=10.0)}
        time.sleep(QUIET_PERIOD_S)
        assert seen.empty(), f"the ACL let through {seen.get()}"
    assert received == {("edge", "to-edge"), ("cloud", "to-cloud")}


@pytest.mark.parametrize(("user", "password", "scheme"), [
    ("edge", "wrong", "mqtts"),     # bad password
    (None, None, "mqtts"),          # anonymous
    ("edge", "edge-secret", "mqtt"),  # plain MQTT to the TLS listener
])
def test_broker_refuses_bad_credentials_and_plain_connections(secure_broker, user, password, scheme) -> None:
    broker, cert = secure_broker
    credentials = f"{user}:{password}@" if user else ""
    query = f"?ca={cert}" if scheme == "mqtts" else ""
    url = f"{scheme}://{credentials}{broker.host}:{broker.port}{query}"
    with pytest.raises(TransportError, match="refused"):
        MqttTransport(url, user or "anonymous").connect()


def test_mosquitto_drops_packets_above_the_configured_limit(broker_factory) -> None:
    broker = broker_factory("mosquitto", max_message_bytes=1024)
    seen: queue.Queue[bytes] = queue.Queue()
    with MqttTransport(broker.url, "receiver") as receiver:
        receiver.subscribe("limit/test", lambda payload, _: seen.put(payload))
        with MqttTransport(broker.url, "sender") as sender:
            sender.publish("limit/test", b"x" * (broker.max_message_bytes + MQTT_PACKET_OVERHEAD_BYTES + 1))
            time.sleep(QUIET_PERIOD_S)
        assert seen.empty()
        with MqttTransport(broker.url, "sender2") as sender:
            sender.publish("limit/test", b"small")
            assert seen.get(timeout=10.0) == b"small"



def test_a_device_cannot_take_over_another_identity_by_its_client_id(secure_broker) -> None:
    """MQTT drops the older of two sessions with one client id; `use_username_as_clientid` must make
    the edge's credential connect as "edge" whatever id it asks for, so the cloud stays connected."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    broker, cert = secure_broker
    dropped: queue.Queue[object] = queue.Queue()
    victim = paho.Client(CallbackAPIVersion.VERSION2, client_id="cloud", protocol=paho.MQTTv311)
    victim.tls_set(ca_certs=str(cert))
    victim.username_pw_set("cloud", PASSWORDS["cloud"])
    victim.on_disconnect = lambda *args: dropped.put(args[3])
    victim.connect(broker.host, broker.port)
    victim.loop_start()
    try:
        deadline = time.monotonic() + 10.0
        while not victim.is_connected() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert victim.is_connected()
        with MqttTransport(secure_url(broker, cert, "edge", PASSWORDS["edge"]), "cloud"):
            time.sleep(QUIET_PERIOD_S)
        assert dropped.empty() and victim.is_connected()
    finally:
        victim.disconnect()
        victim.loop_stop()


def test_a_device_cannot_speak_as_another_one(secure_broker, caplog: pytest.LogCaptureFixture) -> None:
    """The edge forges the cloud's answer to the client's request, first on the cloud's topic (the
    broker's ACL drops it), then on its own topic with "cloud" in the header (the client's listener
    drops it): only the cloud's real answer may resolve the request."""
    broker, cert = secure_broker
    arrived: queue.Queue[tuple[Message, str]] = queue.Queue()
    with (caplog.at_level(logging.WARNING, logger="edgecloud.transport.mqtt"),
          MqttTransport(secure_url(broker, cert, "edge", PASSWORDS["edge"]), "edge") as edge,
          MqttTransport(secure_url(broker, cert, "client", PASSWORDS["client"]), "client") as client,
          MqttTransport(secure_url(broker, cert, "cloud", PASSWORDS["cloud"]), "cloud") as cloud):
        cloud.subscribe_messages(inbox_filter(DEPLOYMENT, "cloud"), lambda m, topic: arrived.put((m, topic)))
        requester = Requester(client, reply_topic=device_topic(DEPLOYMENT, "client"))
        answer = requester.submit(sender_topic(DEPLOYMENT, "cloud", "client"), Message("request", "r-1", "client"))
        request, topic = arrived.get(timeout=10.0)
        assert topic == sender_topic(DEPLOYMENT, "cloud", "client")
        assert request.reply_to == device_topic(DEPLOYMENT, "client")
        forged = Message("result", "r-1", "cloud", meta={"forged": True})
        edge.publish_message(reply_topic(request.reply_to, "cloud"), forged)
        edge.publish_message(reply_topic(request.reply_to, "edge"), forged)
        # and to the cloud, as the client: the ACL drops that as well
        edge.publish_message(sender_topic(DEPLOYMENT, "cloud", "client"), Message("request", "r-forged", "client"))
        time.sleep(QUIET_PERIOD_S)
        assert not answer.done() and arrived.empty()
        real = Message("result", "r-1", "cloud", meta={"real": True})
        cloud.publish_message(reply_topic(request.reply_to, "cloud"), real)
        reply = answer.result(timeout=10.0)
    assert (reply.sender, reply.meta) == ("cloud", {"real": True})
    assert "claiming sender 'cloud'; dropped" in caplog.text


def test_tls_listener_negotiates_aes_128_gcm_with_our_client(secure_broker) -> None:
    """Our generated listener offers TLS 1.3 with AES-128-GCM only (see `TLS13_CIPHERSUITE`): OpenSSL's
    default would pick AES-256-GCM, whose 14 rounds cost every message four times on its way."""
    broker, cert = secure_broker
    with MqttTransport(secure_url(broker, cert, "edge", PASSWORDS["edge"]), "edge") as edge:
        name, version, _ = edge._require_client().socket().cipher()
    assert (name, version) == (TLS13_CIPHERSUITE, "TLSv1.3")



def test_the_bare_floor_client_round_trips_messages_over_tls(self_signed_tls) -> None:
    """bench/transport.py's TLS floor: the bare client through Mosquitto's TLS listener returns every
    payload intact, one of them larger than a TLS record."""
    import ssl
    import threading

    from edgecloud.transport import bare_mqtt

    cert, key = self_signed_tls
    tls = ssl.create_default_context(cafile=str(cert))
    payloads = [b"small", bytes(range(256)) * 800, b"right behind it"]
    with MosquittoBroker(tls=TlsFiles(certfile=cert, keyfile=key)) as broker:
        echo_end = bare_mqtt.connect(broker.host, broker.port, "floor-echo", "floor/ping", tls)
        stop = threading.Event()
        worker = threading.Thread(target=bare_mqtt.echo, args=(echo_end, "floor/pong", stop.is_set), daemon=True)
        worker.start()
        with bare_mqtt.connect(broker.host, broker.port, "floor-pinger", "floor/pong", tls) as pinger:
            assert isinstance(pinger, ssl.SSLSocket) and pinger.version() == "TLSv1.3"
            pinger.settimeout(5.0)
            echoed = []
            for payload in payloads:
                pinger.sendall(bare_mqtt.publish_header("floor/ping", len(payload)) + payload)
                body = bare_mqtt.read_packet(pinger)
                topic_bytes = int.from_bytes(body[:2], "big")
                assert bytes(body[2:2 + topic_bytes]) == b"floor/pong"
                echoed.append(bytes(body[2 + topic_bytes:]))
        stop.set()
        worker.join(5)
        echo_end.close()
    assert echoed == payloads


def test_the_bare_echo_answers_a_packet_left_in_the_tls_buffer(self_signed_tls) -> None:
    """Two PUBLISH packets in one TLS record: after the first, the second is decrypted and waiting in
    ssl's buffer, where select on the socket cannot see it. A peer we control packs them so (a broker
    may or may not)."""
    import socket
    import ssl
    import threading

    from edgecloud.transport import bare_mqtt

    cert, key = self_signed_tls
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(cert, key)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        accepted: list[ssl.SSLSocket] = []
        acceptor = threading.Thread(target=lambda: accepted.append(server_side.wrap_socket(listener.accept()[0],
                                                                                           server_side=True)))
        acceptor.start()
        echo_end = ssl.create_default_context(cafile=str(cert)).wrap_socket(
            socket.create_connection(listener.getsockname()), server_hostname="127.0.0.1")
        acceptor.join(5)
        peer = accepted[0]
        stop = threading.Event()
        worker = threading.Thread(target=bare_mqtt.echo, args=(echo_end, "pong", stop.is_set), daemon=True)
        worker.start()
        try:
            peer.settimeout(3.0)
            peer.sendall(b"".join(bare_mqtt.publish_header("ping", len(p)) + p for p in (b"first", b"second")))
            answers = [bare_mqtt.read_packet(peer)[6:] for _ in range(2)]  # 2-byte length + "pong"
        finally:
            stop.set()
            worker.join(5)
            echo_end.close()
            peer.close()
    assert answers == [b"first", b"second"]
