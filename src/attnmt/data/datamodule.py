"""The LightningDataModule: raw parallel text -> sentencepiece ids -> token-budget batches.

Subclasses say where a corpus's files are (:meth:`split_files`, :meth:`train_files`) and how to
obtain them (:meth:`prepare_corpus`); everything else (checks, subwords, filtering, batching) is
shared. Training pairs are encoded once into a token store (:mod:`attnmt.data.store`) and read
from it by memory map; validation and test splits are small and encoded at each start.
"""

from __future__ import annotations

import functools
import logging
import signal
from pathlib import Path
from typing import Annotated, Literal

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader

from attnmt.data.batching import TokenBucketBatchSampler
from attnmt.data.dataset import ParallelDataset, TokenStoreDataset, encode_for_eval
from attnmt.data.io import iter_parallel, read_parallel
from attnmt.data.store import TokenStore, file_lock, open_or_build
from attnmt.data.synthetic import SRC_LANG, TGT_LANG, ensure_synthetic
from attnmt.data.tokenizer import Reservoir, Tokenizer, train_sentencepiece
from attnmt.errors import ConfigError, DataError
from attnmt.utils.schema import Ge, Gt, Le, NonNegativeInt, PositiveInt
from attnmt.utils.stored import MAX_LEN

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")


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
        max_len: PositiveInt = MAX_LEN,
        vocab_size: PositiveInt = 8000,
        joint_vocab: bool = True,
        spm_model_type: Literal["unigram", "bpe", "char", "word"] = "unigram",
        character_coverage: Annotated[float, Gt(0), Le(1)] = 1.0,
        cache_dir: str | None = None,
        num_workers: NonNegativeInt = 0,
        seed: int = 0,
        spm_model: str | None = None,
        max_len_ratio: Annotated[float, Ge(1)] | None = None,
        num_proc: NonNegativeInt | None = None,
        spm_sample_size: PositiveInt = 1_000_000,
        pin_memory: bool | None = None,
        pad_to_multiple: PositiveInt = 1,
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
        if max_len_ratio is not None and max_len_ratio < 1:
            raise ConfigError(f"data.max_len_ratio={max_len_ratio} must be at least 1 (or null: no ratio filter)")
        if num_proc is not None and num_proc < 0:
            raise ConfigError(f"data.num_proc={num_proc} must be 0 or more (null: every core)")
        if spm_sample_size < 1:
            raise ConfigError(f"data.spm_sample_size={spm_sample_size} must be positive")
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
        self.max_len_ratio = max_len_ratio
        self.num_proc = num_proc
        self.spm_sample_size = spm_sample_size
        self.pin_memory = pin_memory  # None: where the trainer runs on a CUDA device
        self.pad_to_multiple = pad_to_multiple
        self.tokenizer: Tokenizer | None = None
        self.stores: list[TokenStore] | None = None
        self.datasets: dict[str, ParallelDataset | TokenStoreDataset] = {}
        self.stats: dict[str, dict[str, int]] = {}
        self.train_sampler: TokenBucketBatchSampler | None = None
        self._resume_position: dict[str, int] | None = None

    # -- what a corpus provides ------------------------------------------------------------------
    def prepare_corpus(self) -> None:
        """Make the corpus files exist (generate, download); a no-op for files already on disk."""

    def split_files(self, split: str) -> tuple[Path, Path]:
        """(source file, target file) of a split."""
        raise NotImplementedError

    def train_files(self) -> list[tuple[Path, Path]]:
        """(source file, target file) of each training corpus, concatenated in this order."""
        return [self.split_files("train")]

    def train_upsample(self) -> list[int]:
        """How many times each training corpus is repeated in an epoch."""
        return [1] * len(self.train_files())

    def alignment_file(self, split: str) -> Path | None:
        """Gold word alignments (Pharaoh) of a split, where the corpus has them."""
        return None

    def spm_cache_dir(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else self.split_files("train")[0].parent

    # -- shared pipeline -------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Everything that writes to disk, once: corpus files, subword models, token stores. Under
        DDP, Lightning runs it on each node's first process before the others read the stores."""
        self.prepare_corpus()
        self.train_stores()

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
        files = self.train_files()
        src_files, tgt_files = [s for s, _ in files], [t for _, t in files]
        n = self.spm_sample_size

        # Generators: the corpus is streamed (and checked) only when no cached model fits.
        def side(k: int):
            return (pair[k] for src, tgt in files for pair in iter_parallel(src, tgt))

        def both():  # half the sample from each side; all source lines first, as spm always read them
            samples = Reservoir((n + 1) // 2, seed=0), Reservoir(n // 2, seed=1)
            for src, tgt in files:
                for pair in iter_parallel(src, tgt):
                    for reservoir, line in zip(samples, pair):
                        if line.strip():
                            reservoir.add(line)
            yield from samples[0].lines
            yield from samples[1].lines

        cache = self.spm_cache_dir()
        with file_lock(cache / "spm.lock"):  # concurrent runs train each model once
            if self.joint_vocab:
                proto = train_sentencepiece(both(), cache, "joint", self.spm_settings, src_files + tgt_files, n)
                self.tokenizer = Tokenizer(proto)
            else:
                self.tokenizer = Tokenizer(
                    train_sentencepiece(side(0), cache, self.src_lang, self.spm_settings, src_files, n),
                    train_sentencepiece(side(1), cache, self.tgt_lang, self.spm_settings, tgt_files, n),
                )
        return self.tokenizer

    def train_stores(self) -> list[TokenStore]:
        """The token store of each training corpus, prepared where missing (each on its own: adding
        a corpus does not prepare the others again)."""
        if self.stores is None:
            tok = self.build_tokenizer()
            self.stores = [
                open_or_build(self.spm_cache_dir(), src, tgt, tok, self.max_len, self.max_len_ratio, self.num_proc)
                for src, tgt in self.train_files()
            ]
        return self.stores

    def setup(self, stage: str | None = None) -> None:
        self.prepare_corpus()
        tok = self.build_tokenizer()
        if "train" not in self.datasets and stage in (None, "fit"):
            self.datasets["train"] = self.train_dataset(tok)
        if "valid" not in self.datasets and stage in (None, "fit", "validate"):
            self.datasets["valid"] = self.eval_dataset("valid")

    def train_dataset(self, tok: Tokenizer | None = None) -> TokenStoreDataset:
        """Training pairs, without blank pairs and pairs longer than ``max_len`` subwords (or more
        uneven than ``max_len_ratio``), counted in :attr:`stats` and the log."""
        stores = self.train_stores()
        upsample = self.train_upsample()
        totals: dict[str, int] = {}
        for (src_file, tgt_file), store, times in zip(self.train_files(), stores, upsample):
            stats = store.stats
            for key, value in stats.items():
                totals[key] = totals.get(key, 0) + value
            log.info(
                "train (%s, %s): %d pairs kept of %d%s; dropped %d blank or whitespace-only, %d longer than "
                "data.max_len=%d subwords%s",
                src_file, tgt_file, stats["kept"], stats["pairs"], f", repeated {times} times" if times > 1 else "",
                stats["blank"], stats["too_long"], self.max_len,
                f", {stats['uneven']} more uneven than data.max_len_ratio={self.max_len_ratio}"
                if "uneven" in stats else "",
            )
        if len(stores) > 1:
            totals["corpora"] = len(stores)
            totals["epoch_pairs"] = sum(store.num_pairs * times for store, times in zip(stores, upsample))
        self.stats["train"] = totals
        return TokenStoreDataset(list(zip(stores, upsample)))

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
        pin = self.pin_memory
        if pin is None:
            pin = self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"
        collate = functools.partial(dataset.collate, multiple=self.pad_to_multiple)
        return DataLoader(
            dataset, batch_sampler=sampler, collate_fn=collate,
            num_workers=self.num_workers, persistent_workers=self.num_workers > 0, pin_memory=pin,
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
        max_tokens: PositiveInt = 2048,
        vocab_size: PositiveInt = 1000,
        spm_model_type: Literal["unigram", "bpe", "char", "word"] = "bpe",
        **kwargs,
    ):
        if (src_lang, tgt_lang) not in ((SRC_LANG, TGT_LANG), (TGT_LANG, SRC_LANG)):
            raise ConfigError(
                f"data.src_lang={src_lang!r}, data.tgt_lang={tgt_lang!r}: the synthetic corpus has "
                f"languages {SRC_LANG!r} and {TGT_LANG!r}"
            )
        # A small corpus of short sentences: a small vocabulary and batches (conf/data/synthetic.yaml).
        super().__init__(src_lang=src_lang, tgt_lang=tgt_lang, max_tokens=max_tokens, vocab_size=vocab_size,
                         spm_model_type=spm_model_type, **kwargs)
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
