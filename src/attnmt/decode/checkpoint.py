"""Finding and loading checkpoints for decoding, with one-line errors for bad paths or files."""

from __future__ import annotations

import logging
import os
import pickle
import re
from pathlib import Path

import torch

from attnmt.data.tokenizer import Tokenizer
from attnmt.errors import CheckpointError
from attnmt.models import Seq2Seq, build_model
from attnmt.utils.legacy import upgrade_targets
from attnmt.utils.trust import check_stored_targets

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "attnmt"  # attnmt's entry in a Lightning checkpoint (attnmt.train.task.checkpoint_metadata)
CHECKPOINT_FORMAT = 1


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a training run's folder (then its best checkpoint, else its last)."""
    path = Path(path)
    if path.is_dir():
        for candidate in (path / "checkpoints" / "best.ckpt", path / "checkpoints" / "last.ckpt"):
            if candidate.is_file():
                return candidate
        raise CheckpointError(
            f"{path}: a folder without checkpoints/best.ckpt or checkpoints/last.ckpt; "
            "give a .ckpt file or a training run's output folder"
        )
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file or run folder")
    return path


TRUST_ENV = "ATTNMT_TRUST_CHECKPOINTS"


def trusted() -> bool:
    """Whether the user said the checkpoints they load are theirs (``ATTNMT_TRUST_CHECKPOINTS=1``):
    then files holding more than tensors and plain data (checkpoints written before attnmt stored
    its random states as plain lists) load as pickles, which can run code."""
    return os.environ.get(TRUST_ENV, "") == "1"


def read_checkpoint(path: Path) -> dict:
    """A checkpoint's contents, unpickled as data only (``weights_only=True``: tensors, numbers,
    strings, lists, dicts) unless :func:`trusted`; a file that holds anything else is refused in
    one line, before any of it runs."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=not trusted())
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found is None:  # not a pickle it could read at all: garbage, truncated, another format
            raise CheckpointError(f"{path}: not a readable checkpoint (UnpicklingError)") from None
        raise CheckpointError(
            f"{path}: holds more than tensors and plain data (it names {found.group(1)[:100]}); attnmt does "
            "not unpickle that, since loading it could run code. If the file is yours (checkpoints written "
            "before attnmt kept its random states as plain lists hold numpy arrays), load it with "
            f"{TRUST_ENV}=1"
        ) from None
    except Exception as e:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(ckpt, dict) or CHECKPOINT_KEY not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not an attnmt checkpoint (no '{CHECKPOINT_KEY}' entry)")
    return ckpt


def check_weights(path: Path, expected: dict, found: dict, tokenizer: Tokenizer) -> None:
    """One line naming the first difference between the weights a config builds and a file's."""
    missing, unexpected = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise CheckpointError(
            f"{path}: weights do not match its model config ({what}; {len(missing)} missing, "
            f"{len(unexpected)} unexpected): a checkpoint of another model?"
        )
    for key, tensor in expected.items():
        want, got = tuple(tensor.shape), tuple(found[key].shape)
        if want == got:
            continue
        vocab = {tokenizer.src_vocab_size, tokenizer.tgt_vocab_size}
        if want and got and want[0] != got[0] and want[0] in vocab:
            raise CheckpointError(
                f"{path}: its vocabulary has {want[0]} pieces but {key} was trained with {got[0]}: "
                "sentencepiece model and weights come from different runs"
            )
        raise CheckpointError(
            f"{path}: weights do not match its model config ({key} is {got}, the config builds {want})"
        )


def load_for_decoding(path: str | Path) -> tuple[Seq2Seq, Tokenizer, dict, Path]:
    """Rebuild the model (in eval mode), its tokenizer and its training config from a checkpoint."""
    path = resolve_checkpoint(path)
    ckpt = read_checkpoint(path)
    meta = ckpt[CHECKPOINT_KEY]
    try:
        config, tokenizer = meta["config"], Tokenizer.from_state(meta["tokenizer"])
        config["model"]["_target_"]
    except Exception as e:  # a hand-edited or foreign 'attnmt' entry
        raise CheckpointError(
            f"{path}: damaged '{CHECKPOINT_KEY}' entry ({type(e).__name__}: {str(e)[:120]})"
        ) from None
    upgrade_targets(config)  # a checkpoint of an older layout names moved classes by their old paths
    check_stored_targets(config["model"], "model", str(path))  # before anything it names is imported
    if "data" in config:
        check_stored_targets(config["data"], "data", str(path))
    model = build_model(config["model"], tokenizer.src_vocab_size, tokenizer.tgt_vocab_size, tokenizer.joint)
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    check_weights(path, model.state_dict(), state, tokenizer)
    model.load_state_dict(state)
    model.eval()
    log.info("Loaded %s (%s, %d parameters)", path, config["model"]["_target_"], model.num_parameters())
    return model, tokenizer, config, path
