"""Word alignments read from a model's cross-attention while it reads given targets
(teacher-forced): the model side of :mod:`attnmt.align.links`."""

from __future__ import annotations

import torch

from attnmt.align.links import Link, layer_index, sentence_links
from attnmt.data.batching import TokenBucketBatchSampler
from attnmt.data.dataset import ParallelDataset, pad
from attnmt.data.tokenizer import PAD_ID, Tokenizer
from attnmt.decode.search import forced_attention
from attnmt.models.base import Seq2Seq


def attention_links(
    model: Seq2Seq, tokenizer: Tokenizer, dataset: ParallelDataset, pairs: list[tuple[int, list[int]]],
    batch_tokens: int = 8000, layers: list[int] | None = None, method: str = "argmax", threshold: float = 0.5,
    heads: int | None = None, full_context: bool = False, word_links: str = "merged",
) -> list[list[set[Link]]]:
    """Word alignments of (source ``dataset.src[i]``, target ids) pairs from the model's
    cross-attention while it reads the target (rows chosen by ``method``, see
    :func:`sentence_links`): per layer in ``layers`` (all when ``None``), one
    link set per pair. The first ``heads`` heads (all when ``None``) are averaged; pieces become
    words as ``word_links`` says (:func:`sentence_links`). ``full_context``: the decoder reads the
    whole target at every position (a Transformer trained so, see :mod:`attnmt.train.guided`)."""
    lengths = [max(len(dataset.src[i]), len(t) + 1) for i, t in pairs]
    sampler = TokenBucketBatchSampler(lengths, batch_tokens, shuffle=False)
    out: list[list[set[Link]]] | None = None
    device = next(model.parameters()).device
    with torch.inference_mode():
        for batch in sampler:
            src = pad([dataset.src[pairs[k][0]] for k in batch]).to(device)
            targets = [pairs[k][1] for k in batch]
            attn, _ = forced_attention(model, src, src != PAD_ID, targets, full_context)
            cross = attn["cross"][:, :, :heads].float().mean(2).cpu().numpy()  # (B, L, T, S), averaged over heads
            L = cross.shape[1]
            chosen = list(range(L)) if layers is None else [layer_index(x, L) for x in layers]
            if out is None:
                out = [[set() for _ in pairs] for _ in chosen]
            for b, k in enumerate(batch):
                src_ids, tgt = dataset.src[pairs[k][0]], pairs[k][1]
                tgt_pieces, src_pieces = tokenizer.tgt_pieces(tgt), tokenizer.src_pieces(src_ids)
                for n, layer in enumerate(chosen):
                    out[n][k] = sentence_links(
                        cross[b, layer, : len(tgt) + 1], tgt_pieces, src_pieces, method, threshold, word_links
                    )
    return out or [[] for _ in (layers or [0])]
