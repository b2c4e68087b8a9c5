"""Seq2seq models behind one interface (:class:`Seq2Seq`), built from a ``model`` config node."""

from __future__ import annotations

import inspect
from typing import Any

from attnmt.models.base import Seq2Seq


def build_model(node: Any, src_vocab_size: int, tgt_vocab_size: int, joint_vocab: bool) -> Seq2Seq:
    """The model a ``model`` config node describes, for these vocabularies. ``joint_vocab`` (one
    sentencepiece model for both sides) goes to the constructors that ask for it (a Transformer's
    tied embeddings need it)."""
    from hydra.utils import get_object

    from attnmt.errors import ConfigError
    from attnmt.utils.config import build

    target = node["_target_"]
    try:
        params = inspect.signature(get_object(target)).parameters
    except Exception:  # an unknown target: build() names it
        params = {}
    extra = {"joint_vocab": joint_vocab} if "joint_vocab" in params else {}
    model = build(node, "model", src_vocab_size=src_vocab_size, tgt_vocab_size=tgt_vocab_size, **extra)
    if not isinstance(model, Seq2Seq):
        raise ConfigError(f"model._target_={target} does not build an attnmt Seq2Seq model")
    return model


__all__ = ["Seq2Seq", "build_model"]
