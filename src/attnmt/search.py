"""Decoding through the common incremental interface (:class:`attnmt.models.base.Seq2Seq`)."""

from __future__ import annotations

import torch
from torch import Tensor

from attnmt.data.datamodule import pad
from attnmt.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from attnmt.models.base import Seq2Seq


def max_output_lengths(src_mask: Tensor, max_len_ratio: float, max_len_extra: int = 10) -> Tensor:
    """Per-sentence cap on output length: ``ratio * source length + extra`` tokens, ``(B,)``."""
    return (src_mask.sum(1).float() * max_len_ratio).long() + max_len_extra


@torch.no_grad()
def greedy_search(
    model: Seq2Seq, src: Tensor, src_mask: Tensor, max_len_ratio: float = 1.5, max_len_extra: int = 10
) -> list[list[int]]:
    """Batched greedy decoding. Returns each sentence's token ids, without ``</s>``."""
    enc = model.encode(src, src_mask)
    state = model.init_state(enc)
    B = src.size(0)
    limit = max_output_lengths(src_mask, max_len_ratio, max_len_extra)  # (B,)
    prev = torch.full((B,), BOS_ID, dtype=torch.long, device=src.device)
    finished = torch.zeros(B, dtype=torch.bool, device=src.device)
    steps = []
    for t in range(int(limit.max())):
        logits, state, _ = model.decode_step(enc, state, prev)
        token = logits.argmax(-1).masked_fill(finished, PAD_ID)  # (B,)
        steps.append(token)
        finished |= (token == EOS_ID) | (t + 1 >= limit)
        prev = token
        if bool(finished.all()):
            break
    out = torch.stack(steps, dim=1).tolist()  # (B, T)
    hyps = []
    for row, cap in zip(out, limit.tolist()):
        row = row[:cap]
        hyps.append(row[: row.index(EOS_ID)] if EOS_ID in row else [i for i in row if i != PAD_ID])
    return hyps


@torch.no_grad()
def forced_attention(model: Seq2Seq, src: Tensor, src_mask: Tensor, hyps: list[list[int]]) -> tuple[dict, Tensor]:
    """Attention weights of the model reading ``hyps`` (teacher-forced), as during decoding.

    Returns the attention dict (``cross`` ``(B, L, H, T, S)``, plus ``encoder_self`` /
    ``decoder_self`` where the model has them) and the target ids ``(B, T)`` that were read
    (``<s>`` + hypothesis; row ``t`` of the weights is the step that produced token ``t``).
    """
    tgt_in = pad([[BOS_ID] + h for h in hyps]).to(src.device)
    enc = model.encode(src, src_mask, need_attention=True)
    _, attn = model.decode(enc, tgt_in, need_attention=True)
    if "encoder_self" in enc:
        attn["encoder_self"] = enc["encoder_self"]
    return attn, tgt_in
