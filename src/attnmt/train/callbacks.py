"""The checkpoint a run resumes from: ``last.ckpt``, kept fresh, with the one before it kept too.

Lightning's ``ModelCheckpoint`` keeps the best model (``best.ckpt``); this callback keeps the newest
training state: every ``every_n_train_steps`` optimizer steps and/or ``every_n_minutes`` of
training, after every validation, at the end of training, and when the process gets SIGTERM
(pre-emption, ``scancel``, ``kill``) or a first Ctrl-C. Before a newer step is written, the previous ``last.ckpt``
becomes ``last.prev.ckpt``, so a damaged newest file still leaves a valid one to resume from.
Files are written through the trainer's checkpoint IO (atomic: temporary file, then rename).

A checkpoint becomes ``last.ckpt`` only once the loggers have written everything logged up to its
step: Lightning logs a step's training metrics after ``on_train_batch_end``, so a checkpoint taken
there is written as ``last.next.ckpt`` and published when the next batch starts. A run killed in
between resumes from the checkpoint before, and its metrics history has no hole.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Checkpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

from attnmt.errors import ConfigError
from attnmt.utils.schema import PositiveFloat, PositiveInt

log = logging.getLogger(__name__)

LAST, PREVIOUS, NEXT = "last.ckpt", "last.prev.ckpt", "last.next.ckpt"


class LastCheckpoint(Checkpoint):
    monitor = None  # watches no metric (code that looks for the best checkpoint skips it)

    def __init__(self, dirpath: str, every_n_train_steps: PositiveInt | None = None,
                 every_n_minutes: PositiveFloat | None = 10.0):
        if every_n_train_steps is not None and every_n_train_steps <= 0:
            raise ConfigError(
                f"callbacks.last_checkpoint.every_n_train_steps={every_n_train_steps} must be positive or null"
            )
        if every_n_minutes is not None and every_n_minutes <= 0:
            raise ConfigError(f"callbacks.last_checkpoint.every_n_minutes={every_n_minutes} must be positive or null")
        self.dirpath = Path(dirpath)
        self.every_n_train_steps = every_n_train_steps
        self.every_n_seconds = None if every_n_minutes is None else 60.0 * every_n_minutes
        self.last_saved_step: int | None = None
        self._unpublished = False  # last.next.ckpt written, waiting for the loggers
        self._rotate = False  # publishing it moves last.ckpt (an older step) to last.prev.ckpt
        self._last_time = time.monotonic()

    @property
    def path(self) -> Path:
        return self.dirpath / LAST

    def _due(self, trainer: pl.Trainer) -> bool:
        due = bool(self.every_n_train_steps) and trainer.global_step % self.every_n_train_steps == 0
        if self.every_n_seconds is not None and not due:
            # Decided on rank 0 and broadcast: every rank must take part in a save.
            due = trainer.strategy.broadcast(time.monotonic() - self._last_time >= self.every_n_seconds)
        return due

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._due(trainer) and trainer.global_step != self.last_saved_step:
            self.write(trainer)  # this step's metrics are not logged yet: published at the next batch

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module, batch, batch_idx) -> None:
        if self._unpublished:
            self.publish(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.save(trainer)  # also when this step was just saved: best/early-stopping state changed

    def on_train_end(self, trainer: pl.Trainer, pl_module) -> None:
        if trainer.global_step != self.last_saved_step:
            self.write(trainer)
        if self._unpublished:
            self.publish(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module, exception: BaseException) -> None:
        # Lightning raises SIGTERMException between two batches, so the state is consistent; a
        # first Ctrl-C raises it too (attnmt.train.interrupt).
        if isinstance(exception, SIGTERMException):
            self.save(trainer)
            log.warning("Interrupted after step %d: saved %s", trainer.global_step, self.path)

    def save(self, trainer: pl.Trainer) -> None:
        """Write the training state now and make it ``last.ckpt`` (all hooks but batch end)."""
        self.write(trainer)
        self.publish(trainer)

    def write(self, trainer: pl.Trainer) -> None:
        # Written in full first; renamed by publish(): at any moment a valid newest checkpoint exists.
        trainer.save_checkpoint(self.dirpath / NEXT, weights_only=False)
        self._unpublished = True
        self._last_time = time.monotonic()
        if trainer.global_step != self.last_saved_step:
            self._rotate = True
        self.last_saved_step = trainer.global_step

    def publish(self, trainer: pl.Trainer) -> None:
        for logger in trainer.loggers:  # the metrics logged up to this checkpoint reach the disk first
            logger.save()
        if trainer.is_global_zero:
            if self.path.exists() and self._rotate:
                os.replace(self.path, self.dirpath / PREVIOUS)
            os.replace(self.dirpath / NEXT, self.path)
        self._unpublished = self._rotate = False

    def state_dict(self) -> dict:
        return {"last_saved_step": self.last_saved_step}

    def load_state_dict(self, state_dict: dict) -> None:
        self.last_saved_step = state_dict.get("last_saved_step")
