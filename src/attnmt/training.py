"""Training from a composed Hydra config: data, model, task, trainer; returns the best metric."""

from __future__ import annotations

import logging
import time

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from attnmt.data.datamodule import TranslationDataModule
from attnmt.errors import ConfigError
from attnmt.models.base import Seq2Seq
from attnmt.utils.config import build
from attnmt.utils.io import atomic_write_text

log = logging.getLogger(__name__)


def build_model(model_cfg: DictConfig | dict, datamodule: TranslationDataModule) -> Seq2Seq:
    tok = datamodule.build_tokenizer()
    model = build(
        model_cfg, "model", src_vocab_size=tok.src_vocab_size, tgt_vocab_size=tok.tgt_vocab_size,
        joint_vocab=tok.joint,
    )
    if not isinstance(model, Seq2Seq):
        raise ConfigError(f"model._target_={model_cfg['_target_']} does not build an attnmt Seq2Seq model")
    return model


def best_score(trainer: pl.Trainer, metric: str) -> float | None:
    """The best value of ``metric`` kept by a checkpoint callback monitoring it, else its last
    logged value (None if it was never logged)."""
    for cb in trainer.checkpoint_callbacks:
        if cb.monitor == metric and cb.best_model_score is not None:
            return float(cb.best_model_score)
    value = trainer.callback_metrics.get(metric)
    return None if value is None else float(value)


def train(cfg: DictConfig) -> float | None:
    pl.seed_everything(cfg.seed, workers=True)
    output_dir = cfg.paths.output_dir
    config = OmegaConf.to_container(cfg, resolve=True)
    # Under DDP, Lightning re-runs this script for ranks 1.. into the same folder: only rank 0 writes.
    if rank_zero_only.rank == 0:
        atomic_write_text(f"{output_dir}/config.yaml", OmegaConf.to_yaml(config))

    datamodule: TranslationDataModule = build(cfg.data, "data")
    datamodule.prepare_data()
    datamodule.setup("fit")
    model = build_model(cfg.model, datamodule)
    log.info("Model %s: %d parameters", cfg.model._target_, model.num_parameters())

    # Called, not instantiated with kwargs: Hydra would recurse into the config dict passed here.
    task = build(cfg.task, "task", _partial_=True)(
        model=model,
        optimizer=build(cfg.optimizer, "optimizer"),
        scheduler=build(cfg.scheduler, "scheduler") if cfg.get("scheduler") else None,
        tokenizer=datamodule.tokenizer,
        train_config=config,
    )
    callbacks = [build(c, f"callbacks.{k}") for k, c in cfg.get("callbacks", {}).items() if c is not None]
    loggers = [build(c, f"logger.{k}") for k, c in cfg.get("logger", {}).items() if c is not None]
    trainer: pl.Trainer = build(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers)

    start = time.perf_counter()
    trainer.fit(task, datamodule=datamodule)
    elapsed = time.perf_counter() - start

    best = best_score(trainer, "val/bleu")
    summary = {
        "model": cfg.model._target_,
        "num_parameters": model.num_parameters(),
        "train_seconds": round(elapsed, 1),
        "global_step": trainer.global_step,
        "best_val_bleu": best,
    }
    if trainer.is_global_zero:
        atomic_write_text(f"{output_dir}/summary.yaml", OmegaConf.to_yaml(summary))
    log.info("Finished in %.1f s; best val/bleu %s; run folder %s", elapsed, best, output_dir)
    return best_score(trainer, cfg.optimized_metric)
