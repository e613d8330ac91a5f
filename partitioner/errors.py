"""Exception types of the `partitioner` package, each carrying one readable sentence."""


class PartitionerError(ValueError):
    """Base of every planning error the CLI reports as a one-line message with exit code 2."""


class ModelLoadError(PartitionerError):
    """The model file is missing, unreadable or not valid ONNX."""


class InfeasiblePlanError(PartitionerError):
    """No placement satisfies the constraints; the message names the constraint."""
