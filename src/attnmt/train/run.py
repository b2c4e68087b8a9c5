"""Training from a composed Hydra config: data, model, task, trainer; returns the best metric."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import pytorch_lightning as pl
import yaml
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import ProgressBar
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException

from attnmt.data.datamodule import TranslationDataModule
from attnmt.data.tokenizer import Tokenizer
from attnmt.decode.checkpoint import CHECKPOINT_KEY, trusted
from attnmt.errors import ConfigError
from attnmt.models import Seq2Seq, build_model
from attnmt.train.init import Source, load_source_weights, read_source
from attnmt.train.interrupt import StopOnCtrlC
from attnmt.train.loggers import check_logger_packages
from attnmt.train.resume import check_unchanged, find_checkpoints, requeued, resume_checkpoint, save_overrides
from attnmt.train.task import TranslationTask
from attnmt.utils.allocator import keep_freed_memory
from attnmt.utils.config import build, check_config
from attnmt.utils.io import atomic_write_text
from attnmt.utils.precision import choose_precision
from attnmt.utils.provenance import hardware, provenance

log = logging.getLogger(__name__)


def build_model_for(model_cfg: DictConfig | dict, datamodule: TranslationDataModule) -> Seq2Seq:
    """The configured model for the datamodule's vocabularies (its tokenizer is trained or loaded)."""
    tok = datamodule.build_tokenizer()
    return build_model(model_cfg, tok.src_vocab_size, tok.tgt_vocab_size, tok.joint)


def best_score(trainer: pl.Trainer, metric: str) -> float | None:
    """The best value of ``metric`` kept by a checkpoint callback monitoring it, else its last
    logged value (None if it was never logged)."""
    for cb in trainer.checkpoint_callbacks:
        if cb.monitor == metric and cb.best_model_score is not None:
            return float(cb.best_model_score)
    value = trainer.callback_metrics.get(metric)
    return None if value is None else float(value)


def record_start(output_dir: Path, resumed_from: Path | None, step: int, trainer: pl.Trainer, precision: dict,
                 initialized_from: Path | None = None) -> None:
    """Append this start (time, command line, versions, git commit, hardware and the precision
    chosen, with why; the checkpoint whose weights a new ``init=`` run started from) to
    ``run_info.yaml``."""
    path = output_dir / "run_info.yaml"
    starts = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    starts = starts if isinstance(starts, list) else []
    starts.append({
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv,
        "resumed_from": None if resumed_from is None else str(resumed_from),
        **({"initialized_from": str(initialized_from)} if initialized_from is not None else {}),
        "global_step": step,
        **provenance(),
        "hardware": hardware(trainer),
        "precision": precision,
    })
    atomic_write_text(path, yaml.safe_dump(starts, sort_keys=False))


def resolve_precision(trainer_cfg: DictConfig) -> dict:
    """``trainer.precision`` as asked and as used: ``auto`` becomes what suits the hardware."""
    asked = str(trainer_cfg.get("precision", "32"))
    if asked != "auto":
        return {"asked": asked, "used": asked, "why": "set by trainer.precision"}
    used, why = choose_precision(str(trainer_cfg.get("accelerator", "auto")))
    return {"asked": asked, "used": used, "why": why}


def check_train_config(cfg: DictConfig) -> None:
    """Every value of a training config against its constructor's annotations, before any work;
    ``trainer.precision=auto`` (ours, not Lightning's) is checked as what it stands for here."""
    checked = cfg.copy()
    with open_dict(checked):
        checked.trainer.precision = resolve_precision(cfg.trainer)["used"]
    check_config(checked)
    check_logger_packages(cfg.get("logger"))
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(
                f"trainer.accelerator={accelerator}: no CUDA GPU is visible here; "
                "train on the CPU with trainer=cpu (or trainer.accelerator=cpu)"
            )


def build_run(
    cfg: DictConfig, callbacks: list[pl.Callback] = (), precision: str | None = None,
    source: Source | None = None, tokenizer: Tokenizer | None = None,
) -> tuple[TranslationDataModule, TranslationTask, pl.Trainer]:
    """What a training config describes: the datamodule (prepared and set up), the task around the
    model, and the trainer with the configured callbacks and loggers, plus ``callbacks``.
    ``precision`` replaces ``trainer.precision`` (train() passes what ``auto`` resolved to).
    ``source`` (``init=``): the model starts from its weights and the data is encoded with its
    tokenizer; ``tokenizer``: the data is encoded with this one (a resumed ``init=`` run's)."""
    datamodule: TranslationDataModule = build(cfg.data, "data")
    datamodule.tokenizer = source.tokenizer if source is not None else tokenizer  # None: its own
    datamodule.prepare_data()
    datamodule.setup("fit")
    model = build_model_for(cfg.model, datamodule)
    if source is not None:
        load_source_weights(model, source, OmegaConf.to_container(cfg.model, resolve=True))
    log.info("Model %s: %d parameters", cfg.model._target_, model.num_parameters())

    # Called, not instantiated with kwargs: Hydra would recurse into the config dict passed here.
    task = build(cfg.task, "task", _partial_=True)(
        model=model,
        optimizer=build(cfg.optimizer, "optimizer"),
        scheduler=build(cfg.scheduler, "scheduler") if cfg.get("scheduler") else None,
        tokenizer=datamodule.tokenizer,
        train_config=OmegaConf.to_container(cfg, resolve=True),
    )
    configured = [build(c, f"callbacks.{k}") for k, c in (cfg.get("callbacks") or {}).items() if c is not None]
    if not cfg.trainer.get("enable_progress_bar", True):  # a configured bar (trainer=gpu) goes with it
        configured = [c for c in configured if not isinstance(c, ProgressBar)]
    loggers = [build(c, f"logger.{k}") for k, c in (cfg.get("logger") or {}).items() if c is not None]
    trainer: pl.Trainer = build(
        cfg.trainer, "trainer", callbacks=[*configured, *callbacks], logger=loggers,
        precision=precision or resolve_precision(cfg.trainer)["used"],
    )
    return datamodule, task, trainer


def train(cfg: DictConfig) -> float | None:
    keep_freed_memory()
    output_dir = Path(cfg.paths.output_dir)
    config = OmegaConf.to_container(cfg, resolve=True)
    ckpt_path, step, tokenizer, source = None, 0, None, None
    run_dir = Path(cfg.resume) if cfg.get("resume") else None
    if run_dir is None and requeued() and find_checkpoints(output_dir):
        log.info("SLURM requeued this job (SLURM_RESTART_COUNT=%s): resuming its run",
                 os.environ["SLURM_RESTART_COUNT"])
        run_dir = output_dir
    if run_dir is not None:
        if run_dir.resolve() != output_dir.resolve():
            raise ConfigError(f"resume={run_dir}: the run would continue in {output_dir}; use train.py resume=RUN_DIR")
        check_unchanged(run_dir, config)
        ckpt_path, ckpt = resume_checkpoint(run_dir)
        if cfg.get("init"):  # its data was encoded with the source's tokenizer, which the run keeps
            tokenizer = Tokenizer.from_state(ckpt[CHECKPOINT_KEY]["tokenizer"])
        step = ckpt.get("global_step", 0)
        log.info("Resuming %s from %s (step %d, epoch %d)", run_dir, ckpt_path, step, ckpt.get("epoch", 0))
        del ckpt
    if cfg.get("init") and ckpt_path is None:  # a new run from a trained model
        source = read_source(cfg.init)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    log.info("Seed %d", cfg.seed)
    # Under DDP, Lightning re-runs this script for ranks 1.. into the same folder: only rank 0 writes.
    if rank_zero_only.rank == 0:
        atomic_write_text(output_dir / "config.yaml", OmegaConf.to_yaml(config))
        if run_dir is not None:
            save_overrides(run_dir)
    precision = resolve_precision(cfg.trainer)
    if precision["asked"] == "auto":
        log.info("Precision %s (trainer.precision=auto: %s)", precision["used"], precision["why"])

    datamodule, task, trainer = build_run(cfg, precision=precision["used"], source=source, tokenizer=tokenizer)
    model = task.model
    if trainer.is_global_zero:
        record_start(output_dir, ckpt_path, step, trainer, precision, source.path if source else None)

    # The datamodule restores the sampler's position itself (its state_dict), which Lightning
    # cannot see: its warning about a non-resumable dataloader does not apply.
    warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")
    start = time.perf_counter()
    interrupted = None
    with StopOnCtrlC(trainer) as ctrl_c:
        try:
            # A checkpoint of this run (read_checkpoint above refused anything but data unless trusted).
            trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=not trusted())
        except SIGTERMException:  # SIGTERM, or a first Ctrl-C: stopped between two steps, saved
            interrupted = signal.SIGINT if ctrl_c.received else signal.SIGTERM
    elapsed = time.perf_counter() - start

    best = best_score(trainer, "val/bleu")
    summary = {
        "model": cfg.model._target_,
        "num_parameters": model.num_parameters(),
        "train_seconds": round(elapsed, 1),
        "global_step": trainer.global_step,
        "best_val_bleu": best,
        "interrupted": interrupted is not None,
        "skipped_batches": task.skipped_batches,
        "data": datamodule.stats,
    }
    if trainer.is_global_zero:
        atomic_write_text(output_dir / "summary.yaml", OmegaConf.to_yaml(summary))
    if interrupted is not None:
        why = "Ctrl-C" if interrupted == signal.SIGINT else "SIGTERM"
        log.warning(
            "Stopped by %s after step %d; continue with: python train.py resume=%s",
            why, trainer.global_step, output_dir,
        )
        sys.exit(128 + interrupted)
    log.info("Finished in %.1f s; best val/bleu %s; run folder %s", elapsed, best, output_dir)
    return best_score(trainer, cfg.optimized_metric)
