"""MQTT topic names of a deployment: one inbox per device (and per client).

Why one topic per device rather than per stage: a device subscribes once, the broker needs one ACL
line per device, and the stage a message is meant for travels in the wire header's `meta`.
"""

from __future__ import annotations

from edgecloud.errors import TransportError

TOPIC_ROOT = "edgecloud"
_FORBIDDEN_CHARACTERS = frozenset("/+#\0")


def _check_segment(value: str, what: str) -> None:
    """Whitespace and control characters are refused too: names are written into Mosquitto's ACL file
    one per line (`user <name>`), where a newline would smuggle in a rule of its own."""
    if (not value or _FORBIDDEN_CHARACTERS.intersection(value) or value.startswith("$")
            or not value.isprintable() or any(character.isspace() for character in value)):
        raise TransportError(f"{what} {value!r} must be non-empty, without whitespace, '/', '+' or '#', "
                             "and must not start with '$'.")


def device_topic(deployment: str, device: str) -> str:
    """The inbox topic of `device` in `deployment`: edgecloud/<deployment>/<device>/in."""
    _check_segment(deployment, "deployment name")
    _check_segment(device, "device name")
    return f"{TOPIC_ROOT}/{deployment}/{device}/in"
