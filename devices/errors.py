"""The exception type of the `devices` package, and how every package quotes a library's failure in one line."""


class DeviceError(ValueError):
    """A device or link profile is missing, malformed or inconsistent; the message is one sentence."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (onnx and onnxruntime write pages), or its type:
    what our one-sentence errors quote of a library's failure."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
