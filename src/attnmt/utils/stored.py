"""What a stored training config says (a checkpoint's, a run folder's ``config.yaml``, an export's
``attnmt.json``), read in one place."""

from __future__ import annotations

from typing import Any

MAX_LEN = 128  # pieces per sentence side where a config does not say (data.max_len's default)


def max_len(config: dict[str, Any]) -> int:
    """The training ``data.max_len``: sources (and references) are cut there before decoding."""
    return int((config.get("data") or {}).get("max_len", MAX_LEN))


def model_name(config: dict[str, Any]) -> str:
    """The model's class name (``Transformer``, ``BahdanauRNN``, ...) from ``model._target_``."""
    return target_name(config["model"]["_target_"])


def target_name(target: str) -> str:
    """The class name of a ``_target_`` path."""
    return str(target).rsplit(".", 1)[-1]
