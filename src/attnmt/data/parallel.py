"""A user's own line-aligned corpus: ``<prefix>.<lang>`` or ``<prefix>.<lang>.gz`` per split (the
fairseq / Joey NMT convention), with optional gold alignments ``<prefix>.align``."""

from __future__ import annotations

from pathlib import Path

from attnmt.data.datamodule import SPLITS, TranslationDataModule
from attnmt.data.io import resolve_text_file
from attnmt.errors import ConfigError


class ParallelFilesDataModule(TranslationDataModule):
    def __init__(
        self,
        train_prefix: str,
        valid_prefix: str,
        test_prefix: str | None,
        src_lang: str,
        tgt_lang: str,
        cache_dir: str,
        **kwargs,
    ):
        if src_lang == tgt_lang:
            raise ConfigError(f"data.src_lang and data.tgt_lang are both {src_lang!r}: the files need two suffixes")
        super().__init__(src_lang=src_lang, tgt_lang=tgt_lang, cache_dir=cache_dir, **kwargs)
        self.prefixes = {"train": train_prefix, "valid": valid_prefix, "test": test_prefix}

    def prepare_corpus(self) -> None:
        for split in SPLITS:  # every configured file must exist before any work starts
            if self.prefixes[split]:
                self.split_files(split)

    def split_files(self, split: str) -> tuple[Path, Path]:
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
