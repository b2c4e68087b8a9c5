"""What training does about a non-finite loss or gradient: stop, naming the step and the last good
checkpoint (``task.nonfinite=stop``, the default), or skip the batch and count it (``skip``)."""

from __future__ import annotations

import logging

import pytorch_lightning as pl
import torch
from torch import Tensor

from attnmt.errors import TrainingError

log = logging.getLogger(__name__)

POLICIES = ("stop", "skip")


class NonFiniteGuard:
    def __init__(self, policy: str):
        self.policy = policy
        self.skipped_batches = 0  # batches skipped for a non-finite loss or gradient (policy skip)

    def gradient_norm(self, parameters) -> Tensor | None:
        """The global L2 norm of the gradients (None when no parameter has one: a skipped batch)."""
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return None
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))

    def trip(self, trainer: pl.Trainer, what: str, batch: dict[str, Tensor] | None) -> None:
        """A non-finite ``what`` at this step: raise :class:`TrainingError` (stop) or count the batch
        as skipped; the caller then skips the update."""
        step = trainer.global_step
        size = "" if batch is None else f" (batch of {batch['src'].size(0)} sentences)"
        if self.policy == "stop":
            raise TrainingError(
                f"step {step}: {what}{size}; training stopped. Last good checkpoint: {last_checkpoint(trainer)}. "
                "Lower optimizer.lr, or set task.nonfinite=skip to skip such batches"
            )
        self.skipped_batches += 1
        log.warning("step %d: %s%s; skipped (%d so far)", step, what, size, self.skipped_batches)


def last_checkpoint(trainer: pl.Trainer) -> str:
    """The newest checkpoint written by a callback that records its step (``last.ckpt``)."""
    saved = [
        (cb.last_saved_step, str(cb.path)) for cb in trainer.checkpoint_callbacks
        if getattr(cb, "last_saved_step", None) is not None
    ]
    if not saved:
        return "none written yet"
    step, path = max(saved)
    return f"{path} (step {step})"
