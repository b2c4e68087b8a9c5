"""The LightningModule: label-smoothed cross-entropy training and validation sacreBLEU.

It speaks to the model only through :class:`attnmt.models.base.Seq2Seq`, so every model trains
and validates the same way.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from attnmt import ops
from attnmt.data.tokenizer import PAD_ID, Tokenizer
from attnmt.decode.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_KEY
from attnmt.decode.search import greedy_search
from attnmt.errors import ConfigError
from attnmt.eval.metrics import bleu
from attnmt.models.base import Seq2Seq
from attnmt.train.guided import GuidedAlignment
from attnmt.train.nonfinite import POLICIES, NonFiniteGuard, gradient_norm, skips_on_device
from attnmt.train.optim import Schedule, prefer_fused
from attnmt.utils.compiling import MODES as COMPILE_MODES
from attnmt.utils.compiling import compile_options
from attnmt.utils.provenance import hardware, provenance
from attnmt.utils.rng import get_rng_state, set_rng_state
from attnmt.utils.schema import Fraction, PositiveFloat

log = logging.getLogger(__name__)



class TranslationTask(pl.LightningModule):
    def __init__(
        self,
        model: Seq2Seq,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        tokenizer: Tokenizer | None = None,
        train_config: dict | None = None,
        label_smoothing: Fraction = 0.1,
        max_len_ratio: PositiveFloat = 1.5,
        nonfinite: Literal["stop", "skip"] = "stop",
        guided_alignment: GuidedAlignment | None = None,
        compile: bool | Literal[COMPILE_MODES] = False,
    ):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"task.label_smoothing={label_smoothing} must be in [0, 1)")
        if nonfinite not in POLICIES:
            raise ConfigError(f"task.nonfinite={nonfinite!r} is not one of {', '.join(POLICIES)}")
        self.model = model
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.tokenizer = tokenizer
        self.train_config = train_config or {}
        self.label_smoothing = label_smoothing
        self.max_len_ratio = max_len_ratio
        self.guard = NonFiniteGuard(nonfinite)
        self.guided = guided_alignment if guided_alignment is not None and guided_alignment.active else None
        if self.guided is not None:
            self.guided.check(model)
        self._rng_to_restore: dict | None = None
        self._grad_norm: Tensor | None = None  # this update's gradient norm, for clipping
        # This update's loss (a non-finite one of its micro-batches, if any), on the device;
        # judged in on_before_optimizer_step with the gradient norm.
        self._judged_loss: Tensor | None = None
        self._sentences = 0
        self._val_outputs: list[tuple[list[int], list[list[int]]]] = []
        self._token_loss = token_loss
        options = compile_options(compile)
        if options is not None:  # compiled lazily, at the first step
            self.compile_step(options)
            log.info("Training step compiled (task.compile=%s)", compile)

    def loss(self, batch: dict[str, Tensor], label_smoothing: float) -> tuple[Tensor, Tensor]:
        """Summed token cross-entropy over non-padding targets, and the number of those tokens."""
        if self.guided is not None and self.training:  # also the supervised attention's loss
            logits, self._align_loss = self.guided.forward(self.model, batch)
        else:
            logits = self.model(batch["src"], batch["src_mask"], batch["tgt_in"])  # (B, T, V)
        return self._token_loss(logits, batch["tgt_out"], label_smoothing)

    def compile_step(self, options: dict) -> None:
        """Run the model's training forward pass and the loss through ``torch.compile(**options)``
        (``task.compile``; see :mod:`attnmt.utils.compiling`)."""
        self.model.compile_training(**options)
        self._token_loss = torch.compile(token_loss, **options)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss_sum, ntokens = self.loss(batch, self.label_smoothing)
        loss = loss_sum / ntokens
        # The batch size for averaging is a Python number the batch carries: nothing is read back
        # from the device. Logged also when not finite (Lightning would repeat the last value).
        size = batch_tokens(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        if self.guided is not None:
            self.log("train/align_loss", self._align_loss, batch_size=size)
            loss = loss + self.guided.weight * self._align_loss
        # A non-finite loss is judged with the gradient norm, on the device, before the update
        # (on_before_optimizer_step); with gradient accumulation any bad micro-batch counts.
        judged = loss.detach()
        if self._judged_loss is not None:  # keep a non-finite one: it spoils the whole update
            judged = torch.where(torch.isfinite(judged), self._judged_loss, judged)
        self._judged_loss = judged
        return loss

    def setup(self, stage: str) -> None:
        if self.guided is not None and stage == "fit":  # every rank; the first one runs eflomal
            dm = self.trainer.datamodule
            self.guided.prepare(dm.train_files(), self.tokenizer, dm.spm_cache_dir())

    def on_train_batch_start(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.guard.poll(self.trainer)  # verdicts of earlier updates that have reached the host
        scheduler = self.lr_schedulers()
        if isinstance(scheduler, Schedule) and scheduler.follows_clock:
            # Rank 0's clock for every process, so that all of them apply the same learning rate.
            scheduler.tick(self.trainer.strategy.broadcast(scheduler.elapsed(), src=0))
        self._sentences = batch["src"].size(0)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """The non-finite guard, decided on the device. A finite loss can still overflow in the
        backward pass; an update with such a gradient would spoil the weights (and every
        checkpoint after it). With 16-mixed the gradient scaler skips overflowing steps itself
        (an overflow is routine there), so only the loss is judged."""
        loss, self._judged_loss = self._judged_loss, None
        if loss is None:  # no training_step ran (nothing to judge)
            return
        scaled = str(self.trainer.precision).startswith("16")
        norm = None if scaled else gradient_norm(self.parameters())
        if norm is not None:
            self.log("train/grad_norm", norm)
        self._grad_norm = norm  # reused by configure_gradient_clipping, which Lightning calls next
        bad = self.guard.record(self.trainer.global_step, self._sentences, loss, norm)
        if self.guard.policy == "skip":
            self.log("train/skipped_batches", self.guard.device_count() + self.guard.resumed_skips)
        if scaled:  # the scaler skips the update; the guard acts when it next polls
            return
        if skips_on_device(optimizer):
            optimizer.found_inf = bad.to(torch.float32)  # the fused step skips itself on the device
        elif self.guard.settle(self.trainer, bad):  # nonfinite=skip: no parameter has a gradient
            optimizer.zero_grad(set_to_none=True)

    def on_train_epoch_end(self) -> None:
        self.guard.poll(self.trainer, wait=True)

    def on_train_end(self) -> None:
        self.guard.poll(self.trainer, wait=True)

    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """``trainer.gradient_clip_val`` by global norm, with the norm already computed above.

        Under 32 and bf16-mixed no gradient scaler is involved, so the gradients hold their true
        values and clipping works with a fused optimizer too; Lightning's own clipping refuses any
        optimizer that unscales gradients itself, whatever the precision. With 16-mixed (a scaler:
        the optimizer is never fused there, see :func:`attnmt.train.optim.prefer_fused`) Lightning clips.
        """
        if not gradient_clip_val:
            return
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        params = [p for p in self.parameters() if p.grad is not None]
        norm, self._grad_norm = self._grad_norm, None
        if not params:
            return
        if gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
        elif norm is not None:
            torch.nn.utils.clip_grads_with_norm_(params, gradient_clip_val, norm)
        else:
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)

    @property
    def skipped_batches(self) -> int:
        return self.guard.skipped_batches

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        nll, ntokens = self.loss(batch, label_smoothing=0.0)
        self.log("val/loss", nll / ntokens, batch_size=int(ntokens), reduce_fx="mean", sync_dist=True)
        if not self.trainer.sanity_checking:
            hyps = [h.tokens for h in greedy_search(self.model, batch["src"], batch["src_mask"], self.max_len_ratio)]
            self._val_outputs.append((batch["idx"].tolist(), hyps))

    def on_validation_epoch_end(self) -> None:
        loss = self.trainer.callback_metrics.get("val/loss")
        if loss is not None:
            self.log("val/ppl", math.exp(min(float(loss), 50.0)), sync_dist=True)
        if self.trainer.sanity_checking:
            return
        outputs, self._val_outputs = self._val_outputs, []
        if self.trainer.world_size > 1:  # every rank decoded its own share: gather them all
            shares = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(shares, outputs)
            outputs = [batch for share in shares for batch in share]
        if not outputs:
            return
        order = {i: h for idx, hyps in outputs for i, h in zip(idx, hyps)}
        references = self.trainer.datamodule.references("valid")
        decoded = sum(len(idx) for idx, _ in outputs)
        if decoded != len(references) or len(order) != len(references):
            raise RuntimeError(
                f"validation decoded {decoded} sentences ({len(order)} distinct) of {len(references)}"
            )
        hyp_ids = [order[i] for i in range(len(references))]
        score = bleu(self.tokenizer.decode_tgt(hyp_ids), references)
        self.log("val/bleu", score, prog_bar=True, sync_dist=True)  # equal on every rank
        scheduler = self.lr_schedulers()
        if isinstance(scheduler, Schedule):
            scheduler.observe(score)

    def configure_optimizers(self):
        factory = self.optimizer_factory
        if self._trainer is not None:
            factory = prefer_fused(factory, str(self.trainer.precision), self.device.type)
        optimizer = factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer=optimizer), "interval": "step"},
        }

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.guard.poll(self.trainer, wait=True)  # a stopping run writes no checkpoint past its fault
        checkpoint[CHECKPOINT_KEY] = checkpoint_metadata(self)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        meta = checkpoint.get(CHECKPOINT_KEY, {})
        self.guard.resumed_skips = meta.get("skipped_batches", 0)
        # Applied when training starts, after everything else that restoring does.
        self._rng_to_restore = meta.get("rng")

    def on_train_start(self) -> None:
        if self._rng_to_restore is not None:
            set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None


def checkpoint_metadata(task: TranslationTask) -> dict:
    """attnmt's entry in a checkpoint: everything needed to decode without the training data (the
    resolved config and the sentencepiece models themselves), where and with what it was trained,
    and the state a resume restores (RNG streams, skipped batches)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "config": task.train_config,
        "tokenizer": task.tokenizer.state() if task.tokenizer is not None else None,
        "num_parameters": task.model.num_parameters(),
        "provenance": {**provenance(), "hardware": hardware(task.trainer)},
        "rng": get_rng_state(),
        "skipped_batches": task.skipped_batches,
    }


def token_loss(logits: Tensor, target: Tensor, label_smoothing: float) -> tuple[Tensor, Tensor]:
    """Summed label-smoothed cross-entropy of ``logits`` ``(B, T, V)`` against ``target`` ``(B, T)``
    over non-padding positions, and the number of those positions."""
    logits, target = logits.reshape(-1, logits.size(-1)), target.reshape(-1)  # (B*T, V), (B*T,)
    if ops.enabled():
        loss = ops.smoothed_cross_entropy(logits, target, label_smoothing, PAD_ID)  # one (B*T, V) buffer
    else:
        loss = F.cross_entropy(logits, target, ignore_index=PAD_ID, label_smoothing=label_smoothing, reduction="sum")
    return loss, (target != PAD_ID).sum()


def batch_tokens(batch: dict) -> int:
    """Target tokens of a batch without padding (a Python number the collate function counted)."""
    return batch["num_tgt_tokens"]
