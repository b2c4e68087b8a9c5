"""A user's own line-aligned corpus: ``<prefix>.<lang>`` or ``<prefix>.<lang>.gz`` per split (the
fairseq / Joey NMT convention), with optional gold alignments ``<prefix>.align``. The training
split may be several corpora (a list of prefixes), each repeated an integer number of times."""

from __future__ import annotations

from pathlib import Path

from attnmt.data.datamodule import SPLITS, TranslationDataModule
from attnmt.data.io import resolve_text_file
from attnmt.errors import ConfigError


class ParallelFilesDataModule(TranslationDataModule):
    def __init__(
        self,
        train_prefix: list[str] | str,
        valid_prefix: str,
        test_prefix: str | None,
        src_lang: str,
        tgt_lang: str,
        cache_dir: str,
        train_upsample: list[int] | int | None = None,
        **kwargs,
    ):
        if src_lang == tgt_lang:
            raise ConfigError(f"data.src_lang and data.tgt_lang are both {src_lang!r}: the files need two suffixes")
        super().__init__(src_lang=src_lang, tgt_lang=tgt_lang, cache_dir=cache_dir, **kwargs)
        self.train_prefixes = [train_prefix] if isinstance(train_prefix, (str, Path)) else list(train_prefix)
        if not self.train_prefixes:
            raise ConfigError("data.train_prefix is an empty list: give at least one corpus prefix")
        if train_upsample is None:
            upsample = [1] * len(self.train_prefixes)
        elif isinstance(train_upsample, int):
            upsample = [train_upsample] * len(self.train_prefixes)
        else:
            upsample = list(train_upsample)
        if len(upsample) != len(self.train_prefixes) or not all(isinstance(u, int) and u >= 1 for u in upsample):
            raise ConfigError(
                f"data.train_upsample={train_upsample}: give one positive integer per data.train_prefix "
                f"({len(self.train_prefixes)}), or one for all"
            )
        self.upsample = upsample
        self.prefixes = {"train": self.train_prefixes[0], "valid": valid_prefix, "test": test_prefix}

    def prepare_corpus(self) -> None:
        self.train_files()  # every configured file must exist before any work starts
        for split in SPLITS:
            if self.prefixes[split]:
                self.split_files(split)

    def train_files(self) -> list[tuple[Path, Path]]:
        return [(resolve_text_file(p, self.src_lang), resolve_text_file(p, self.tgt_lang)) for p in self.train_prefixes]

    def train_upsample(self) -> list[int]:
        return list(self.upsample)

    def split_files(self, split: str) -> tuple[Path, Path]:
        """A split's files; for ``train``, the first corpus's (:meth:`train_files` gives them all)."""
        if split not in SPLITS:
            raise ConfigError(f"split={split!r} is not one of {', '.join(SPLITS)}")
        prefix = self.prefixes[split]
        if not prefix:
            raise ConfigError(f"data.{split}_prefix is not set: give the files' prefix (PREFIX.{self.src_lang})")
        return resolve_text_file(prefix, self.src_lang), resolve_text_file(prefix, self.tgt_lang)

    def alignment_file(self, split: str) -> Path | None:
        prefix = self.prefixes.get(split)
        path = Path(f"{prefix}.align") if prefix else None
        return path if path is not None and path.is_file() else None
