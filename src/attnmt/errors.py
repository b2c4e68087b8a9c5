"""Errors a user can cause. The entry points print them as one line, without a traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)


class AttnmtError(Exception):
    """A problem with the user's input: a file, a config value, a checkpoint."""


class DataError(AttnmtError):
    pass


class ConfigError(AttnmtError):
    pass


class CheckpointError(AttnmtError):
    pass


class TrainingError(AttnmtError):
    """Training cannot go on (a non-finite loss): the message says where to go back to."""


def exit_on_user_error(fn: F) -> F:
    """Turn an :class:`AttnmtError` into ``error: <message>`` on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AttnmtError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]
