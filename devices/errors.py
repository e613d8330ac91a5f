"""The one exception type of the `devices` package: a bad profile or catalogue entry."""


class DeviceError(ValueError):
    """A device or link profile is missing, malformed or inconsistent; the message is one sentence."""
