"""Exception types of `robust_training`; the core imports nothing else of the project."""


class TrainingError(ValueError):
    """Base of every training error the CLI reports as a one-line message with exit code 2."""


class DecodeError(TrainingError):
    """A code cannot recover the exact sum (too many adversaries for its redundancy)."""
