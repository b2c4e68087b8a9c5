"""The LightningDataModule: raw parallel text -> sentencepiece ids -> token-budget batches.

Subclasses say where a corpus's files are (:meth:`split_files`) and how to obtain them
(:meth:`prepare_corpus`); everything else (checks, subwords, filtering, batching) is shared.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Annotated, Literal

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader, Dataset

from attnmt.data.batching import TokenBucketBatchSampler
from attnmt.data.io import read_parallel
from attnmt.data.synthetic import SRC_LANG, TGT_LANG, ensure_synthetic
from attnmt.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer, train_sentencepiece
from attnmt.errors import ConfigError, DataError
from attnmt.utils.schema import Gt, Le, NonNegativeInt, PositiveInt

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")


class ParallelDataset(Dataset):
    """Encoded pairs: the source ends with ``</s>``; the target is ``<s> ... </s>``."""

    def __init__(self, src_ids: list[list[int]], tgt_ids: list[list[int]] | None = None):
        self.src = [ids + [EOS_ID] for ids in src_ids]
        self.tgt = None if tgt_ids is None else [[BOS_ID] + ids + [EOS_ID] for ids in tgt_ids]

    def __len__(self) -> int:
        return len(self.src)

    def __getitem__(self, i: int) -> int:
        return i

    def lengths(self) -> list[int]:
        """Padded cost of each example: its longer side (the target counts without ``<s>``)."""
        if self.tgt is None:
            return [len(s) for s in self.src]
        return [max(len(s), len(t) - 1) for s, t in zip(self.src, self.tgt)]

    def sort_keys(self) -> list[tuple[int, ...]]:
        """Batching order: cost, then target length, then source length."""
        if self.tgt is None:
            return [(len(s),) for s in self.src]
        return [(max(len(s), len(t) - 1), len(t), len(s)) for s, t in zip(self.src, self.tgt)]

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        src = pad([self.src[i] for i in indices])
        batch = {
            "idx": torch.tensor(indices),
            "src": src,  # (B, S)
            "src_mask": src != PAD_ID,  # (B, S) True on real tokens
        }
        if self.tgt is not None:
            tgt = pad([self.tgt[i] for i in indices])
            batch["tgt_in"] = tgt[:, :-1]  # (B, T): <s> y_1 ... y_n
            batch["tgt_out"] = tgt[:, 1:]  # (B, T): y_1 ... y_n </s>
        return batch


def encode_for_eval(
    tokenizer: Tokenizer, src: list[str], tgt: list[str] | None = None, max_len: int = 128
) -> ParallelDataset:
    """Evaluation keeps every line (so scores cover the whole split); long ones are truncated."""
    src_ids = [ids[:max_len] for ids in tokenizer.encode_src(src)]
    tgt_ids = None if tgt is None else [ids[:max_len] for ids in tokenizer.encode_tgt(tgt)]
    return ParallelDataset(src_ids, tgt_ids)


def pad(seqs: list[list[int]]) -> torch.Tensor:
    out = torch.full((len(seqs), max(len(s) for s in seqs)), PAD_ID, dtype=torch.long)
    for row, s in enumerate(seqs):
        out[row, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def init_worker(worker_id: int) -> None:
    """A DataLoader worker ignores Ctrl-C: the terminal sends SIGINT to the whole process group,
    and the main process stops training at the end of the step (it still needs its workers until
    then). Seeded as Lightning seeds workers (``seed_everything(workers=True)``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    pl_worker_init_function(worker_id)


class TranslationDataModule(pl.LightningDataModule):
    """Shared pipeline. ``max_tokens`` bounds each batch's padded size; ``max_len`` (subword tokens)
    filters over-long training pairs; evaluation splits are never filtered."""

    def __init__(
        self,
        src_lang: str,
        tgt_lang: str,
        max_tokens: PositiveInt = 4096,
        max_len: PositiveInt = 128,
        vocab_size: PositiveInt = 8000,
        joint_vocab: bool = True,
        spm_model_type: Literal["unigram", "bpe", "char", "word"] = "unigram",
        character_coverage: Annotated[float, Gt(0), Le(1)] = 1.0,
        cache_dir: str | None = None,
        num_workers: NonNegativeInt = 0,
        seed: int = 0,
        spm_model: str | None = None,
    ):
        super().__init__()
        if max_len + 1 > max_tokens:
            raise ConfigError(
                f"data.max_len={max_len} does not fit in data.max_tokens={max_tokens}: "
                "max_tokens must be larger than max_len"
            )
        if spm_model_type not in ("unigram", "bpe", "char", "word"):
            raise ConfigError(
                f"data.spm_model_type={spm_model_type!r} is not one of unigram, bpe, char, word"
            )
        self.src_lang, self.tgt_lang = src_lang, tgt_lang
        self.max_tokens, self.max_len = max_tokens, max_len
        self.spm_settings = {
            "vocab_size": vocab_size,
            "model_type": spm_model_type,
            "character_coverage": character_coverage,
        }
        self.joint_vocab = joint_vocab
        self.spm_model = spm_model
        self.cache_dir = cache_dir
        self.num_workers = num_workers
        self.seed = seed
        self.tokenizer: Tokenizer | None = None
        self.datasets: dict[str, ParallelDataset] = {}
        self.stats: dict[str, dict[str, int]] = {}
        self.train_sampler: TokenBucketBatchSampler | None = None
        self._resume_position: dict[str, int] | None = None

    # -- what a corpus provides ------------------------------------------------------------------
    def prepare_corpus(self) -> None:
        """Make the corpus files exist (generate, download); a no-op for files already on disk."""

    def split_files(self, split: str) -> tuple[Path, Path]:
        """(source file, target file) of a split."""
        raise NotImplementedError

    def alignment_file(self, split: str) -> Path | None:
        """Gold word alignments (Pharaoh) of a split, where the corpus has them."""
        return None

    def spm_cache_dir(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else self.split_files("train")[0].parent

    # -- shared pipeline -------------------------------------------------------------------------
    def prepare_data(self) -> None:
        self.prepare_corpus()
        self.build_tokenizer()

    def build_tokenizer(self) -> Tokenizer:
        if self.tokenizer is not None:
            return self.tokenizer
        if self.spm_model:  # a joint model trained elsewhere, used as it is
            path = Path(self.spm_model)
            if not path.is_file():
                raise DataError(f"data.spm_model={path}: no such sentencepiece model file")
            self.tokenizer = Tokenizer(path.read_bytes())
            log.info("Using sentencepiece model %s (%d pieces)", path, self.tokenizer.src_vocab_size)
            return self.tokenizer
        src_file, tgt_file = self.split_files("train")
        src, tgt = read_parallel(src_file, tgt_file)
        cache = self.spm_cache_dir()
        if self.joint_vocab:
            proto = train_sentencepiece(src + tgt, cache, "joint", self.spm_settings, [src_file, tgt_file])
            self.tokenizer = Tokenizer(proto)
        else:
            self.tokenizer = Tokenizer(
                train_sentencepiece(src, cache, self.src_lang, self.spm_settings, [src_file]),
                train_sentencepiece(tgt, cache, self.tgt_lang, self.spm_settings, [tgt_file]),
            )
        return self.tokenizer

    def setup(self, stage: str | None = None) -> None:
        self.prepare_corpus()
        tok = self.build_tokenizer()
        if "train" not in self.datasets and stage in (None, "fit"):
            self.datasets["train"] = self.train_dataset(tok)
        if "valid" not in self.datasets and stage in (None, "fit", "validate"):
            self.datasets["valid"] = self.eval_dataset("valid")

    def train_dataset(self, tok: Tokenizer) -> ParallelDataset:
        """Training pairs, without blank pairs and pairs longer than ``max_len`` subwords (counted
        in :attr:`stats` and the log)."""
        src_file, tgt_file = self.split_files("train")
        src, tgt = read_parallel(src_file, tgt_file)
        src_ids, tgt_ids = tok.encode_src(src), tok.encode_tgt(tgt)
        blank = too_long = 0
        keep = []
        for i, (s, t) in enumerate(zip(src_ids, tgt_ids)):
            if not (s and t and src[i].strip() and tgt[i].strip()):
                blank += 1
            elif len(s) > self.max_len or len(t) > self.max_len:
                too_long += 1
            else:
                keep.append(i)
        self.stats["train"] = {"pairs": len(src), "kept": len(keep), "blank": blank, "too_long": too_long}
        log.info(
            "train (%s, %s): %d pairs kept of %d; dropped %d blank or whitespace-only, "
            "%d longer than data.max_len=%d subwords",
            src_file, tgt_file, len(keep), len(src), blank, too_long, self.max_len,
        )
        if not keep:
            raise DataError(
                f"{src_file}, {tgt_file}: no training pair left after dropping blank pairs and pairs "
                f"longer than data.max_len={self.max_len} subwords"
            )
        return ParallelDataset([src_ids[i] for i in keep], [tgt_ids[i] for i in keep])

    def eval_dataset(self, split: str) -> ParallelDataset:
        src, tgt = read_parallel(*self.split_files(split))
        blank = sum(not (s.strip() and t.strip()) for s, t in zip(src, tgt))
        if blank:  # kept: a score must cover every line of the split
            log.warning("%s: %d blank or whitespace-only lines; kept, scores cover the whole split", split, blank)
        self.stats[split] = {"pairs": len(src), "blank": blank}
        return encode_for_eval(self.build_tokenizer(), src, tgt, self.max_len)

    def references(self, split: str) -> list[str]:
        """Untouched target lines of a split: what BLEU is computed against."""
        return read_parallel(*self.split_files(split))[1]

    def loader(self, dataset: ParallelDataset, shuffle: bool, max_tokens: int | None = None) -> DataLoader:
        # Under DDP every rank gets its own disjoint batches, for training and validation alike
        # (Lightning's distributed sampler is off: trainer.use_distributed_sampler=false).
        rank, world = 0, 1
        if self.trainer is not None:
            rank, world = self.trainer.global_rank, self.trainer.world_size
        sampler = TokenBucketBatchSampler(
            dataset.lengths(), max_tokens or self.max_tokens, shuffle=shuffle,
            seed=self.seed, num_replicas=world, rank=rank, sort_keys=dataset.sort_keys(),
        )
        return DataLoader(
            dataset, batch_sampler=sampler, collate_fn=dataset.collate,
            num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
            # Its own generator: creating an iterator must not draw from the global RNG, or a
            # resumed run's dropout masks would differ from an uninterrupted run's.
            generator=torch.Generator().manual_seed(self.seed),
            worker_init_fn=init_worker if self.num_workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        loader = self.loader(self.datasets["train"], shuffle=True)
        self.train_sampler = loader.batch_sampler
        if self._resume_position is not None:
            self.train_sampler.resume_from(**self._resume_position)
            self._resume_position = None
        return loader

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.datasets["valid"], shuffle=False)

    # -- position in the data order, saved in checkpoints for an exact resume ---------------------
    def state_dict(self) -> dict[str, int]:
        if self.train_sampler is None or self.trainer is None:
            return {}
        # Batches of this epoch already taken by the training loop (Lightning's own count).
        taken = self.trainer.fit_loop.epoch_loop.batch_progress.current.ready
        return {"epoch": self.train_sampler.epoch, "batches_taken": taken}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume_position = dict(state) if state else None


class SyntheticDataModule(TranslationDataModule):
    """The embedded corpus (:mod:`attnmt.data.synthetic`), generated on first use."""

    def __init__(
        self,
        data_dir: str,
        num_train: PositiveInt = 24000,
        num_valid: PositiveInt = 1000,
        num_test: PositiveInt = 1000,
        generator_seed: int = 7,
        src_lang: str = SRC_LANG,
        tgt_lang: str = TGT_LANG,
        **kwargs,
    ):
        if (src_lang, tgt_lang) not in ((SRC_LANG, TGT_LANG), (TGT_LANG, SRC_LANG)):
            raise ConfigError(
                f"data.src_lang={src_lang!r}, data.tgt_lang={tgt_lang!r}: the synthetic corpus has "
                f"languages {SRC_LANG!r} and {TGT_LANG!r}"
            )
        super().__init__(src_lang=src_lang, tgt_lang=tgt_lang, **kwargs)
        self.data_dir = Path(data_dir)
        self.sizes = dict(num_train=num_train, num_valid=num_valid, num_test=num_test)
        self.generator_seed = generator_seed

    def prepare_corpus(self) -> None:
        ensure_synthetic(self.data_dir, seed=self.generator_seed, **self.sizes)

    def split_files(self, split: str) -> tuple[Path, Path]:
        if split not in SPLITS:
            raise ConfigError(f"split={split!r} is not one of {', '.join(SPLITS)}")
        return self.data_dir / f"{split}.{self.src_lang}", self.data_dir / f"{split}.{self.tgt_lang}"

    def alignment_file(self, split: str) -> Path | None:
        # Gold links are written source(en)-target(syn); the reverse direction would need flipping.
        path = self.data_dir / f"{split}.align"
        return path if self.src_lang == SRC_LANG and path.exists() else None
