"""Training over MQTT: the parameter server, the workers and a local fleet of both (docs/architecture.md §2, §5)."""
