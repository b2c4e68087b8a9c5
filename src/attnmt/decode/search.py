"""Decoding through the common incremental interface (:class:`attnmt.models.base.Seq2Seq`).

Both searches run whole batches of sentences (and, for beam search, all their beams) through one
``decode_step`` per output position; the model's state (RNN hidden and input-feeding vectors, the
Transformer's key/value cache) carries the prefix, so no step recomputes it.

:func:`translate_dataset` decodes a whole dataset in length-sorted token-budget batches.

Output length: hypotheses have at most ``max_output_lengths(...)`` tokens before ``</s>``; at
that point ``</s>`` is forced, so greedy decoding and beam search with one beam agree.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from attnmt.data.batching import TokenBucketBatchSampler
from attnmt.data.dataset import ParallelDataset, pad
from attnmt.data.tokenizer import BOS_ID, EOS_ID
from attnmt.decode.hypothesis import Hypothesis, length_penalty
from attnmt.models.base import Seq2Seq, State, select_batch

if TYPE_CHECKING:
    from attnmt.decode.settings import DecodeSettings


def max_output_lengths(src_mask: Tensor, max_len_ratio: float, max_len_extra: int = 10) -> Tensor:
    """Per-sentence cap on output length: ``ratio * source length + extra`` tokens, ``(B,)``."""
    return (src_mask.sum(1).float() * max_len_ratio).long() + max_len_extra


@torch.no_grad()
def greedy_search(
    model: Seq2Seq, src: Tensor, src_mask: Tensor, max_len_ratio: float = 1.5, max_len_extra: int = 10,
    alpha: float = 0.0, enc: State | None = None,
) -> list[Hypothesis]:
    """Batched greedy decoding: the fast path of beam size 1 (the tests check they agree).
    ``enc``: the sources already encoded, if the caller has them."""
    enc = model.encode(src, src_mask) if enc is None else enc
    state = model.init_state(enc)
    B = src.size(0)
    limit = max_output_lengths(src_mask, max_len_ratio, max_len_extra)  # (B,)
    prev = torch.full((B,), BOS_ID, dtype=torch.long, device=src.device)
    finished = torch.zeros(B, dtype=torch.bool, device=src.device)
    log_prob = torch.zeros(B, device=src.device)
    steps = []
    for t in range(int(limit.max()) + 1):
        logits, state, _ = model.decode_step(enc, state, prev)
        token = torch.where(t >= limit, EOS_ID, logits.argmax(-1)).masked_fill(finished, EOS_ID)  # (B,)
        step_logp = F.log_softmax(logits.float(), dim=-1).gather(1, token.unsqueeze(1)).squeeze(1)
        log_prob += step_logp.masked_fill(finished, 0.0)
        steps.append(token)
        finished |= token == EOS_ID
        prev = token
        if bool(finished.all()):
            break
    out = torch.stack(steps, dim=1).tolist()  # (B, T): every row holds an </s>
    hyps = []
    for row, lp in zip(out, log_prob.tolist()):
        tokens = row[: row.index(EOS_ID)]
        hyps.append(Hypothesis(tokens, lp / length_penalty(len(tokens) + 1, alpha), lp))
    return hyps


@torch.no_grad()
def beam_search(
    model: Seq2Seq,
    src: Tensor,
    src_mask: Tensor,
    beam_size: int = 5,
    alpha: float = 0.0,
    max_len_ratio: float = 1.5,
    max_len_extra: int = 10,
    n_best: int = 1,
    greedy_floor: bool = True,
) -> list[list[Hypothesis]]:
    """Batched beam search: returns, per sentence, its ``n_best`` hypotheses, best first.

    Each step scores ``K x V`` extensions of every sentence's ``K`` live beams and keeps the top
    ``2K``: those ending in ``</s>`` among the first ``K`` are finished (scored with the GNMT length
    penalty ``alpha``), the best ``K`` others live on. A sentence stops, and leaves the batch, at
    its length cap (where ``</s>`` is forced) or once it has ``n_best`` finished hypotheses and the
    best of them outscores every live beam ended now. With ``alpha = 0`` that test is exact: log-
    probabilities only fall as a hypothesis grows, so no live beam could still win.

    Pruning can lose the greedy path (a weak model's beams may all go astray after it left them),
    so with ``greedy_floor`` the greedy hypothesis (a fifth of a 5-beam search's work) joins the
    finished ones: the best hypothesis never scores below greedy decoding's, and its score is a
    bound that lets sentences stop early.
    """
    if beam_size < 1 or not 1 <= n_best <= beam_size:
        raise ValueError(f"need beam_size >= 1 and 1 <= n_best <= beam_size, got {beam_size}, {n_best}")
    K, device = beam_size, src.device
    B = src.size(0)
    encoded = model.encode(src, src_mask)
    limit = max_output_lengths(src_mask, max_len_ratio, max_len_extra)  # (B,)

    rows = torch.arange(B, device=device).repeat_interleave(K)  # (B*K,) beam k of sentence b at b*K+k
    enc = select_batch(encoded, rows)
    state = model.init_state(enc)
    sentence = torch.arange(B, device=device)  # (n,) original index of each live sentence
    scores = torch.full((B, K), float("-inf"), device=device)  # (n, K) summed log-probs of live beams
    scores[:, 0] = 0.0  # all beams start as <s>; only one may expand at first
    prefix = torch.empty(B * K, 0, dtype=torch.long, device=device)  # (n*K, t)
    prev = torch.full((B * K,), BOS_ID, dtype=torch.long, device=device)
    n_finished = torch.zeros(B, dtype=torch.long, device=device)
    best_finished = torch.full((B,), float("-inf"), device=device)  # (B,) best normalised score
    finished: list[list[Hypothesis]] = [[] for _ in range(B)]
    if greedy_floor and K > 1:
        for b, h in enumerate(greedy_search(model, src, src_mask, max_len_ratio, max_len_extra, alpha, encoded)):
            finished[b].append(h)
            best_finished[b] = h.score

    for t in range(int(limit.max()) + 1):
        n = sentence.numel()
        logits, state, _ = model.decode_step(enc, state, prev)
        logp = F.log_softmax(logits.float(), dim=-1)  # (n*K, V)
        V = logp.size(-1)
        logp = logp.view(n, K, V)
        at_limit = t >= limit[sentence]  # (n,)
        if bool(at_limit.any()):
            forced = torch.full_like(logp[0, 0], float("-inf"))
            forced[EOS_ID] = 0.0
            logp = torch.where(at_limit.view(n, 1, 1), forced + logp[..., EOS_ID : EOS_ID + 1], logp)
        candidates = (scores.unsqueeze(-1) + logp).view(n, K * V)
        top_scores, top_index = candidates.topk(2 * K, dim=1)  # (n, 2K)
        top_beam, top_token = top_index // V, top_index % V
        ends = (top_token == EOS_ID) & torch.isfinite(top_scores)  # (n, 2K)
        ends[:, K:] = False  # an </s> ranked below K live candidates would not have made the beam

        if bool(ends.any()):
            lp = length_penalty(t + 1, alpha)  # t tokens and </s>
            for (i, _), s, b in zip(ends.nonzero().tolist(), top_scores[ends].tolist(), top_beam[ends].tolist()):
                finished[int(sentence[i])].append(Hypothesis(prefix[i * K + b].tolist(), s / lp, s))
            n_finished[sentence] += ends.sum(1)
            ended = top_scores.masked_fill(~ends, float("-inf")).max(1).values / lp  # (n,)
            best_finished[sentence] = torch.maximum(best_finished[sentence], ended)

        # The best K candidates that did not end live on (there are always K: at most K end).
        rank = torch.arange(2 * K, device=device).expand(n, 2 * K).masked_fill(top_token == EOS_ID, 4 * K)
        keep = rank.topk(K, dim=1, largest=False).values.clamp(max=2 * K - 1)  # (n, K) positions
        scores = top_scores.gather(1, keep)
        beam_rows = (torch.arange(n, device=device).unsqueeze(1) * K + top_beam.gather(1, keep)).view(-1)
        prev = top_token.gather(1, keep).view(-1)  # (n*K,)

        # Live beams now hold t + 1 tokens; ending them next would give length t + 2.
        best_live = scores.max(1).values / length_penalty(t + 2, alpha)  # (n,)
        done = at_limit | ((n_finished[sentence] >= n_best) & (best_finished[sentence] >= best_live))  # (n,)
        if bool(done.all()):
            break
        if bool(done.any()):
            live = (~done).nonzero().squeeze(1)  # (n',)
            live_rows = (live.unsqueeze(1) * K + torch.arange(K, device=device)).view(-1)
            beam_rows, prev = beam_rows[live_rows], prev[live_rows]
            scores, sentence = scores[live], sentence[live]
            enc = select_batch(enc, live_rows)
        state = select_batch(state, beam_rows)
        prefix = torch.cat([prefix[beam_rows], prev.unsqueeze(1)], dim=1)

    out = []
    for hyps in finished:
        unique = {tuple(h.tokens): h for h in sorted(hyps, key=lambda h: h.score)}  # best copy wins
        out.append(sorted(unique.values(), key=lambda h: -h.score)[:n_best])
    return out


@torch.no_grad()
def score_hypotheses(model: Seq2Seq, src: Tensor, src_mask: Tensor, hyps: list[list[int]]) -> list[float]:
    """The model's summed log-probability of each hypothesis followed by ``</s>`` (teacher-forced)."""
    seqs = pad([[BOS_ID] + h + [EOS_ID] for h in hyps]).to(src.device)
    logits = model(src, src_mask, seqs[:, :-1])  # (B, T, V)
    logp = F.log_softmax(logits.float(), dim=-1).gather(2, seqs[:, 1:].unsqueeze(-1)).squeeze(-1)  # (B, T)
    mask = torch.arange(seqs.size(1) - 1, device=src.device) < torch.tensor([len(h) + 1 for h in hyps]).unsqueeze(1)
    return (logp * mask).sum(1).tolist()


@torch.no_grad()
def forced_attention(
    model: Seq2Seq, src: Tensor, src_mask: Tensor, hyps: list[list[int]], full_context: bool = False,
) -> tuple[dict, Tensor]:
    """Attention weights of the model reading ``hyps`` (teacher-forced), as during decoding, or,
    with ``full_context``, with every position reading the whole target (alignment only).

    Returns the attention dict (``cross`` ``(B, L, H, T, S)``, plus ``encoder_self`` /
    ``decoder_self`` where the model has them) and the target ids ``(B, T)`` that were read
    (``<s>`` + hypothesis; row ``t`` of the weights is the step that produced token ``t``).
    """
    tgt_in = pad([[BOS_ID] + h for h in hyps]).to(src.device)
    enc = model.encode(src, src_mask, need_attention=True)
    _, attn = model.decode(enc, tgt_in, need_attention=True, **({"full_context": True} if full_context else {}))
    if "encoder_self" in enc:
        attn["encoder_self"] = enc["encoder_self"]
    return attn, tgt_in


def translate_dataset(
    model: Seq2Seq, dataset: ParallelDataset, settings: DecodeSettings, progress: bool = True
) -> list[list[Hypothesis]]:
    """Decode every source of ``dataset`` in length-sorted token-budget batches: per sentence, in
    the dataset's order, its ``n_best`` hypotheses, best first."""
    from tqdm import tqdm

    sampler = TokenBucketBatchSampler(dataset.lengths(), settings.batch_tokens, shuffle=False)
    out: list[list[Hypothesis] | None] = [None] * len(dataset)
    device = next(model.parameters()).device  # decode.device: where the caller put the model
    with torch.inference_mode():
        for indices in tqdm(list(sampler), desc="decoding", unit="batch", disable=not progress, file=sys.stderr):
            batch = dataset.collate(indices)
            src, src_mask = batch["src"].to(device), batch["src_mask"].to(device)  # (B, S)
            if settings.beam_size == 1:
                hyps = [[h] for h in greedy_search(model, src, src_mask, settings.max_len_ratio, alpha=settings.alpha)]
            else:
                hyps = beam_search(
                    model, src, src_mask, settings.beam_size, settings.alpha, settings.max_len_ratio,
                    n_best=settings.n_best,
                )
            for i, h in zip(indices, hyps):
                out[i] = h
    return out  # type: ignore[return-value]
