"""edgecloud: the runtime (transport: wire format, MQTT, brokers; serving: agents, client) and the
application on top of it (cli: the `edgecloud` command and the demo)."""

__version__ = "0.1.0"
