"""Sentencepiece subwords, trained on the training split and cached by a key of its inputs.

Ids 0-3 are fixed for every model: padding, unknown, begin and end of sentence.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import tempfile
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

from attnmt.errors import DataError
from attnmt.utils.io import atomic_write_bytes

log = logging.getLogger(__name__)

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


class Tokenizer:
    """Source and target sentencepiece models (the same object when the vocabulary is joint)."""

    def __init__(self, src_proto: bytes, tgt_proto: bytes | None = None):
        self.src_proto = src_proto
        self.tgt_proto = tgt_proto if tgt_proto is not None else src_proto
        self.joint = tgt_proto is None or tgt_proto == src_proto
        self.src = spm.SentencePieceProcessor(model_proto=self.src_proto)
        self.tgt = self.src if self.joint else spm.SentencePieceProcessor(model_proto=self.tgt_proto)
        # Models trained elsewhere (Joey NMT, fairseq scripts) often have <unk>=0, <pad>=1: their
        # ids 0 and 1 are swapped on the way in and out.
        self.src_swap, self.tgt_swap = _needs_swap(self.src), _needs_swap(self.tgt)

    @property
    def src_vocab_size(self) -> int:
        return self.src.get_piece_size()

    @property
    def tgt_vocab_size(self) -> int:
        return self.tgt.get_piece_size()

    def encode_src(self, lines: list[str], num_threads: int | None = None) -> list[list[int]]:
        return _swapped(self.src.encode(lines, num_threads=num_threads), self.src_swap)

    def encode_tgt(self, lines: list[str], num_threads: int | None = None) -> list[list[int]]:
        return _swapped(self.tgt.encode(lines, num_threads=num_threads), self.tgt_swap)

    def decode_tgt(self, ids: list[list[int]]) -> list[str]:
        return self.tgt.decode(_swapped(ids, self.tgt_swap))

    def src_pieces(self, ids: list[int]) -> list[str]:
        return [self.src.id_to_piece(i) for i in _swapped([ids], self.src_swap)[0]]

    def tgt_pieces(self, ids: list[int]) -> list[str]:
        return [self.tgt.id_to_piece(i) for i in _swapped([ids], self.tgt_swap)[0]]

    def state(self) -> dict:
        """What a checkpoint stores to rebuild this tokenizer without the data."""
        return {"src_proto": self.src_proto, "tgt_proto": None if self.joint else self.tgt_proto}

    @classmethod
    def from_state(cls, state: dict) -> Tokenizer:
        return cls(state["src_proto"], state["tgt_proto"])


def _needs_swap(processor: spm.SentencePieceProcessor) -> bool:
    ids = (processor.pad_id(), processor.unk_id(), processor.bos_id(), processor.eos_id())
    if ids == (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
        return False
    if ids == (UNK_ID, PAD_ID, BOS_ID, EOS_ID):
        return True
    raise DataError(
        f"a sentencepiece model with <pad>, <unk>, <s>, </s> = {ids}: attnmt needs ids "
        f"{(PAD_ID, UNK_ID, BOS_ID, EOS_ID)} (or <pad> and <unk> swapped)"
    )


def _swapped(ids: list[list[int]], swap: bool) -> list[list[int]]:
    if not swap:
        return ids
    return [[i ^ 1 if i < 2 else i for i in seq] for seq in ids]  # 0 <-> 1


class Reservoir:
    """A uniform random sample of at most ``size`` of the lines added, in one pass (Vitter's
    algorithm R). While no more than ``size`` lines were added: all of them, in their order."""

    def __init__(self, size: int, seed: int = 0):
        self.size, self.seen, self.lines = size, 0, []
        self.rng = random.Random(seed)

    def add(self, line: str) -> None:
        if self.seen < self.size:
            self.lines.append(line)
        else:
            j = int(self.rng.random() * (self.seen + 1))
            if j < self.size:
                self.lines[j] = line
        self.seen += 1


def reservoir_sample(lines: Iterable[str], size: int, seed: int = 0) -> list[str]:
    reservoir = Reservoir(size, seed)
    for line in lines:
        reservoir.add(line)
    return reservoir.lines


def train_sentencepiece(
    lines: Iterable[str], cache_dir: Path, name: str, settings: dict, source_files: list[Path],
    sample_size: int = 1_000_000,
) -> bytes:
    """Train (or load from ``cache_dir``) a sentencepiece model; returns its serialized proto.

    The cache key covers the content of ``source_files`` and every setting, so a changed corpus or
    setting trains a new model while an unchanged one is reused. ``lines`` (any iterable: a
    stream is read only when no cached model fits) are sampled down to ``sample_size`` non-blank
    lines, so the corpus is never held in memory.
    """
    from attnmt.data.io import file_digest

    digests = Path(cache_dir) / "digests.json"
    key_material = json.dumps(
        {"files": [file_digest(p, digests) for p in source_files], "settings": settings, "name": name,
         **({"sample_size": sample_size} if sample_size != 1_000_000 else {})},
        sort_keys=True,
    )
    key = hashlib.sha256(key_material.encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"spm-{name}-{key}.model"
    if path.is_file():
        log.info("Reusing sentencepiece model %s", path)
        return path.read_bytes()
    log.info("Training sentencepiece model %s (%s)", path, settings)
    sample = reservoir_sample((line for line in lines if line.strip()), sample_size)
    if not sample:
        raise DataError(f"{', '.join(map(str, source_files))}: no non-blank line to train sentencepiece on")
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "input.txt"
        text.write_text("".join(line + "\n" for line in sample), encoding="utf-8")
        del sample
        spm.SentencePieceTrainer.train(
            input=str(text),
            model_prefix=str(Path(tmp) / "spm"),
            vocab_size=settings["vocab_size"],
            model_type=settings["model_type"],
            character_coverage=settings["character_coverage"],
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
            hard_vocab_limit=False,
            input_sentence_size=sample_size,
            shuffle_input_sentence=True,
            num_threads=2,
            minloglevel=2,
        )
        proto = (Path(tmp) / "spm.model").read_bytes()
    atomic_write_bytes(path, proto)
    return proto
