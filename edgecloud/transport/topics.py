"""MQTT topic names of a deployment: one inbox per device (and per client), one sub-topic per sender.

A message from X to Y goes to `edgecloud/<deployment>/<Y>/in/<X>`. Why the sender is in the topic: the
broker can check topics against the login (see `edgecloud.transport.broker.device_acl`: X may write only to
`edgecloud/<deployment>/+/in/X`), but never the `sender` inside our wire header. Receivers subscribe to
`edgecloud/<deployment>/<self>/in/+` and refuse a message whose header `sender` differs from the topic's
last level, so with the ACL in place a device cannot speak as another one.

Why one inbox per device rather than per stage: a device subscribes once, the broker needs a fixed number
of ACL lines per device, and the stage a message is meant for travels in the wire header's `meta`.
`reply_to` in the header is the base inbox (`device_topic`) of whoever should get the answer; the replier
appends its own name (`reply_topic`).
"""

from __future__ import annotations

from edgecloud.errors import TransportError

TOPIC_ROOT = "edgecloud"
DEFAULT_DEPLOYMENT = "default"  # the deployment id agents and clients share unless told otherwise
INBOX_LEVEL = "in"
_FORBIDDEN_CHARACTERS = frozenset("/+#\0")


def _check_segment(value: str, what: str) -> None:
    """Whitespace and control characters are refused too: names are written into Mosquitto's ACL file
    one per line (`user <name>`), where a newline would smuggle in a rule of its own."""
    # isprintable() is False for every whitespace character but the ASCII space, checked apart: a
    # character-by-character isspace() scan cost ~10 % of an agent's CPU per message (bench/agent_hop.py).
    if (not value or _FORBIDDEN_CHARACTERS.intersection(value) or value.startswith("$")
            or not value.isprintable() or " " in value):
        raise TransportError(f"{what} {value!r} must be non-empty, without whitespace, '/', '+' or '#', "
                             "and must not start with '$'.")


def device_topic(deployment: str, device: str) -> str:
    """The base inbox of `device` in `deployment`: edgecloud/<deployment>/<device>/in (what `reply_to` holds)."""
    _check_segment(deployment, "deployment name")
    _check_segment(device, "device name")
    return f"{TOPIC_ROOT}/{deployment}/{device}/{INBOX_LEVEL}"


def sender_topic(deployment: str, to_device: str, from_device: str) -> str:
    """Where `from_device` publishes to `to_device`: edgecloud/<deployment>/<to_device>/in/<from_device>."""
    _check_segment(from_device, "sender name")
    return f"{device_topic(deployment, to_device)}/{from_device}"


def inbox_filter(deployment: str, device: str) -> str:
    """The subscription of `device`: its inbox from every sender, edgecloud/<deployment>/<device>/in/+."""
    return f"{device_topic(deployment, device)}/+"


def parse_device_topic(topic: str) -> tuple[str, str]:
    """(deployment, device) of a base inbox topic; TransportError for anything else (a forged `reply_to`)."""
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != TOPIC_ROOT or parts[3] != INBOX_LEVEL:
        raise TransportError(f"{topic!r} is not an inbox topic of the form "
                             f"{TOPIC_ROOT}/<deployment>/<device>/{INBOX_LEVEL}.")
    device_topic(parts[1], parts[2])  # checks both names
    return parts[1], parts[2]


def parse_sender_topic(topic: str) -> tuple[str, str, str]:
    """(deployment, to_device, from_device) of a per-sender topic; TransportError for anything else."""
    base, _, from_device = topic.rpartition("/")
    deployment, to_device = parse_device_topic(base)
    _check_segment(from_device, "sender name")
    return deployment, to_device, from_device


def reply_topic(reply_to: str, from_device: str) -> str:
    """Where `from_device` answers a message whose `reply_to` is `reply_to` (a base inbox, checked here)."""
    deployment, to_device = parse_device_topic(reply_to)
    return sender_topic(deployment, to_device, from_device)
