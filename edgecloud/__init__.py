"""edgecloud: the runtime (wire format, MQTT, agents, client) and the `edgecloud` command."""

__version__ = "0.1.0"
