"""The LightningModule: label-smoothed cross-entropy training and validation sacreBLEU.

It speaks to the model only through :class:`attnmt.models.base.Seq2Seq`, so every model trains
and validates the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from attnmt.data.tokenizer import PAD_ID, Tokenizer
from attnmt.errors import ConfigError
from attnmt.metrics import bleu
from attnmt.models.base import Seq2Seq
from attnmt.search import greedy_search

CHECKPOINT_KEY = "attnmt"
CHECKPOINT_FORMAT = 1


class TranslationTask(pl.LightningModule):
    def __init__(
        self,
        model: Seq2Seq,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        tokenizer: Tokenizer | None = None,
        train_config: dict | None = None,
        label_smoothing: float = 0.1,
        max_len_ratio: float = 1.5,
    ):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"task.label_smoothing={label_smoothing} must be in [0, 1)")
        self.model = model
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.tokenizer = tokenizer
        self.train_config = train_config or {}
        self.label_smoothing = label_smoothing
        self.max_len_ratio = max_len_ratio
        self._val_outputs: list[tuple[list[int], list[list[int]]]] = []

    def loss(self, batch: dict[str, Tensor], label_smoothing: float) -> tuple[Tensor, Tensor]:
        """Summed token cross-entropy over non-padding targets, and the number of those tokens."""
        logits = self.model(batch["src"], batch["src_mask"], batch["tgt_in"])  # (B, T, V)
        target = batch["tgt_out"]  # (B, T)
        loss = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)), target.reshape(-1),
            ignore_index=PAD_ID, label_smoothing=label_smoothing, reduction="sum",
        )
        return loss, (target != PAD_ID).sum()

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss_sum, ntokens = self.loss(batch, self.label_smoothing)
        loss = loss_sum / ntokens
        self.log("train/loss", loss, prog_bar=True, batch_size=int(ntokens))
        return loss

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

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer=optimizer), "interval": "step"},
        }

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Everything needed to decode without the training data: the resolved config and the
        # sentencepiece models themselves.
        checkpoint[CHECKPOINT_KEY] = {
            "format": CHECKPOINT_FORMAT,
            "config": self.train_config,
            "tokenizer": self.tokenizer.state() if self.tokenizer is not None else None,
            "num_parameters": self.model.num_parameters(),
        }
