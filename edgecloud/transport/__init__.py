"""Transport: the wire format, MQTT connections and topics, the brokers, the fleet file."""
