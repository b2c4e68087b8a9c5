"""``train.py init=RUN_OR_CKPT``: a new run that starts from a trained model's weights and
sentencepiece model (fine-tuning, domain adaptation), with its own data, optimizer, schedule and
seed, as fairseq's ``--restore-file --reset-optimizer`` or OpenNMT-py's ``train_from`` with
``reset_optim``. Nothing but the weights and the tokenizer is taken from the source."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from attnmt.data.tokenizer import Tokenizer
from attnmt.decode.checkpoint import load_for_decoding
from attnmt.errors import CheckpointError, ConfigError
from attnmt.models import Seq2Seq

log = logging.getLogger(__name__)


@dataclass
class Source:
    """What a new run takes from a trained one."""

    path: Path  # the checkpoint file
    weights: dict[str, Tensor]  # the model's state dict
    tokenizer: Tokenizer
    model_config: dict


def read_source(path: str | Path) -> Source:
    """The checkpoint at ``path`` (a file, or a run folder: its best checkpoint), loaded as
    decoding loads it (data only, its stored classes checked, its weights against its config)."""
    try:
        model, tokenizer, config, ckpt_path = load_for_decoding(path)
    except CheckpointError as e:  # its message starts with the path
        raise ConfigError(f"init={e}") from None
    return Source(ckpt_path, model.state_dict(), tokenizer, dict(config["model"]))


def first_difference(ours: dict, theirs: dict, prefix: str = "model") -> str | None:
    """``model.key=ours (the source has theirs)`` for the first key whose value differs, else None."""
    for key in [*ours, *(k for k in theirs if k not in ours)]:
        if ours.get(key) != theirs.get(key):
            return f"{prefix}.{key}={ours.get(key)} (the source has {theirs.get(key)})"
    return None


def load_source_weights(model: Seq2Seq, source: Source, model_config: dict) -> None:
    """Put the source's weights into ``model`` (built from this run's ``model_config`` and the
    source's tokenizer); a one-line error naming the first model key that differs where they do
    not fit. Keys that change no weight (dropout) may differ."""
    expected = model.state_dict()
    fits = expected.keys() == source.weights.keys() and all(
        expected[k].shape == source.weights[k].shape for k in expected)
    if not fits:  # name a key that can hold weights: dropout rates differ harmlessly
        differs = first_difference({k: v for k, v in model_config.items() if "dropout" not in k},
                                   {k: v for k, v in source.model_config.items() if "dropout" not in k})
        raise ConfigError(
            f"init={source.path}: its weights do not fit this run's model: "
            f"{differs or 'the configs agree, but the weights do not (a checkpoint of another attnmt version?)'}; "
            "give the source's model settings")
    model.load_state_dict(source.weights)
    changed = first_difference(model_config, source.model_config)
    log.info("Weights and sentencepiece model from %s%s", source.path,
             f" (this run differs in {changed}, which holds no weights)" if changed else "")
