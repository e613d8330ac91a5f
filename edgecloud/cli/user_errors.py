"""Turns the packages' own exceptions into one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from devices.errors import DeviceError
from edgecloud.errors import EdgecloudError
from partitioner.errors import PartitionerError
from robust_training.errors import TrainingError

USER_ERRORS: tuple[type[Exception], ...] = (
    DeviceError,
    PartitionerError,
    TrainingError,
    EdgecloudError,
    FileNotFoundError,
)

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str) -> typer.Exit:
    """Print `message` as the one error line and return the exit to raise (code 2)."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=2)


def reports_user_errors(command: F) -> F:
    """Wrap a command so that a user's mistake ends in one readable sentence and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except USER_ERRORS as error:
            raise fail(str(error)) from None

    return wrapper  # type: ignore[return-value]


def writable_output(path: Path | None, option: str, suffix: str | None = None) -> Path | None:
    """The file an output option will write (with `suffix` added when missing), refused before the
    long work rather than after it. Opening the file is the only reliable test (permissions,
    read-only mounts, root on /proc or /sys)."""
    if path is None:
        return None
    if path.is_dir():
        raise EdgecloudError(f"{option} {path} is a directory; give the file to write.")
    if suffix is not None and path.suffix.lower() != suffix:
        path = path.with_name(path.name + suffix)
    if not path.parent.is_dir():
        raise EdgecloudError(f"{option} {path}: the folder {path.parent} does not exist, cannot write there.")
    existed = path.exists()
    try:
        with path.open("ab"):
            pass
    except OSError as error:
        reason = (error.strerror or str(error)).lower()
        raise EdgecloudError(f"{option} {path}: cannot write there ({reason}).") from None
    if not existed:
        path.unlink()
    return path
