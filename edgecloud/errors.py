"""Exception types of the runtime (wire format, MQTT transport, agents, client)."""


class EdgecloudError(ValueError):
    """Base of every runtime error the CLI reports as a one-line message with exit code 2."""


class WireFormatError(EdgecloudError):
    """A message violates the wire format or its configured limits; it is rejected before allocation."""


class TransportError(EdgecloudError):
    """The MQTT transport failed: a bad broker URL, a broker that cannot be reached or started, a request that timed out."""


class IdentityInUseError(TransportError):
    """Another client is connected to the broker with our identity; connecting would knock it off.

    A distinct type because a supervisor should not simply retry it: two agents for one device take
    each other's session over and over (the broker drops the older connection each time).
    """
