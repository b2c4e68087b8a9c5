"""Instantiating config nodes so that a user's mistake surfaces as one line naming the key."""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate

from attnmt.errors import AttnmtError, ConfigError


def build(node: Any, key: str, **kwargs) -> Any:
    """``hydra.utils.instantiate(node, **kwargs)``; an :class:`AttnmtError` raised by the
    constructor comes out as itself (not wrapped), a bad argument as a :class:`ConfigError` that
    names ``key`` (the config node, e.g. ``model``)."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, AttnmtError):
            raise cause from None
        if isinstance(cause, TypeError):
            raise ConfigError(f"{key}: {cause}") from None
        target = node.get("_target_") if hasattr(node, "get") else None
        raise ConfigError(f"{key}: cannot build {target} ({str(e).splitlines()[0]})") from None
