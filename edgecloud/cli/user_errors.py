"""Turns the packages' own exceptions into one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import functools
from collections.abc import Callable
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
