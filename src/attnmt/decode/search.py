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
from collections.abc import Callable
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


def host(x: Tensor) -> list:
    """The one way the searches read the device: each call waits for the GPU to catch up, so they
    read at start, every ``check_every`` steps (has every sentence finished?) and at the end."""
    return x.tolist()


def check_interval(device: torch.device, check_every: int | None) -> int:
    """Steps between the searches' "all finished?" reads: every step on the CPU (a read costs
    nothing there, and finished sentences leave the batch at once), every 8 on a GPU."""
    return check_every or (1 if device.type == "cpu" else 8)


def argmax(logits: Tensor) -> Tensor:
    return logits.argmax(-1)


def sampler(top_k: int = 0, top_p: float = 1.0, temperature: float = 1.0,
            generator: torch.Generator | None = None) -> Callable[[Tensor], Tensor]:
    """A next-token chooser that samples from the model's distribution, sharpened or flattened by
    ``temperature`` and cut to the ``top_k`` most probable tokens (0: no cut) and to the nucleus
    (Holtzman et al., 2020): the fewest most probable tokens whose probabilities sum to at least
    ``top_p``."""

    def choose(logits: Tensor) -> Tensor:  # (B, V) -> (B,)
        logits = logits.float() / temperature
        if top_k:
            kth = logits.topk(min(top_k, logits.size(-1)), dim=-1).values[:, -1:]  # (B, 1)
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if top_p < 1.0:
            ranked, order = logits.sort(dim=-1, descending=True)  # (B, V)
            probs = F.softmax(ranked, dim=-1)
            outside = probs.cumsum(-1) - probs >= top_p  # the mass before a token already reaches top_p
            logits = logits.scatter(-1, order, ranked.masked_fill(outside, float("-inf")))
        return torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator).squeeze(1)

    return choose


@torch.no_grad()
def greedy_tokens(
    model: Seq2Seq, enc: State, src_mask: Tensor, max_len_ratio: float = 1.5, max_len_extra: int = 10,
    check_every: int | None = None, choose: Callable[[Tensor], Tensor] = argmax,
) -> tuple[Tensor, Tensor, Tensor]:
    """One token per step, on the device: ``(tokens (B, T), lengths (B,), log_probs (B,))``; row
    ``b`` holds its tokens, then ``</s>`` and padding; ``log_probs`` (the model's, ``</s>``
    included). ``choose``: the step's token from its logits, the most probable (greedy decoding)
    or a sample (:func:`sampler`)."""
    state = model.init_state(enc)
    B, device = src_mask.size(0), src_mask.device
    limit = max_output_lengths(src_mask, max_len_ratio, max_len_extra)  # (B,)
    every = check_interval(device, check_every)
    prev = torch.full((B,), BOS_ID, dtype=torch.long, device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    lengths = torch.zeros(B, dtype=torch.long, device=device)
    log_prob = torch.zeros(B, device=device)
    steps = []
    for t in range(max(host(limit)) + 1):
        logits, state, _ = model.decode_step(enc, state, prev)
        token = torch.where(t >= limit, EOS_ID, choose(logits)).masked_fill(finished, EOS_ID)  # (B,)
        step_logp = F.log_softmax(logits.float(), dim=-1).gather(1, token.unsqueeze(1)).squeeze(1)
        log_prob += step_logp.masked_fill(finished, 0.0)
        lengths += (~finished).long()
        steps.append(token)
        finished |= token == EOS_ID
        prev = token
        if (t + 1) % every == 0 and host(finished.all()):
            break
    return torch.stack(steps, dim=1), lengths - 1, log_prob  # lengths without </s>


def hypotheses(tokens: Tensor, lengths: Tensor, log_probs: Tensor, alpha: float) -> list[Hypothesis]:
    """:func:`greedy_tokens`' rows as hypotheses, scored with the GNMT penalty ``alpha``."""
    return [Hypothesis(row[:n], lp / length_penalty(n + 1, alpha), lp)
            for row, n, lp in zip(host(tokens), host(lengths), host(log_probs))]


@torch.no_grad()
def greedy_search(
    model: Seq2Seq, src: Tensor, src_mask: Tensor, max_len_ratio: float = 1.5, max_len_extra: int = 10,
    alpha: float = 0.0, enc: State | None = None, check_every: int | None = None,
) -> list[Hypothesis]:
    """Batched greedy decoding: the fast path of beam size 1 (the tests check they agree).
    ``enc``: the sources already encoded, if the caller has them; ``check_every``: steps between
    reads of "all finished?" (:func:`check_interval`)."""
    enc = model.encode(src, src_mask) if enc is None else enc
    return hypotheses(*greedy_tokens(model, enc, src_mask, max_len_ratio, max_len_extra, check_every), alpha)


@torch.no_grad()
def sample_search(
    model: Seq2Seq, src: Tensor, src_mask: Tensor, max_len_ratio: float = 1.5, max_len_extra: int = 10,
    alpha: float = 0.0, top_k: int = 0, top_p: float = 1.0, temperature: float = 1.0,
    generator: torch.Generator | None = None, check_every: int | None = None,
) -> list[Hypothesis]:
    """Batched sampling (the decoding of back-translation, Edunov et al., 2018): each step's token
    drawn from the model's distribution as :func:`sampler` shapes it, with ``generator`` (seeded:
    the same seed and batches give the same outputs). Scores are the model's own log-probabilities
    of the drawn tokens, length-normalised with ``alpha`` as the other searches'."""
    enc = model.encode(src, src_mask)
    choose = sampler(top_k, top_p, temperature, generator)
    return hypotheses(*greedy_tokens(model, enc, src_mask, max_len_ratio, max_len_extra, check_every, choose), alpha)


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
    check_every: int | None = None,
) -> list[list[Hypothesis]]:
    """Batched beam search: returns, per sentence, its ``n_best`` hypotheses, best first.

    Each step scores ``K x V`` extensions of every sentence's ``K`` live beams and keeps the top
    ``2K``: those ending in ``</s>`` among the first ``K`` are finished (scored with the GNMT length
    penalty ``alpha``), the best ``K`` others live on. A sentence is done at its length cap (where
    ``</s>`` is forced) or once it has ``n_best`` finished hypotheses and the best of them
    outscores every live beam ended now. With ``alpha = 0`` that test is exact: log-probabilities
    only fall as a hypothesis grows, so no live beam could still win.

    Pruning can lose the greedy path (a weak model's beams may all go astray after it left them),
    so with ``greedy_floor`` the greedy hypothesis (a fifth of a 5-beam search's work) joins the
    finished ones: the best hypothesis never scores below greedy decoding's, and its score is a
    bound that lets sentences stop early.

    Everything stays on the device: the finished hypotheses are a table of the best ``n_best``
    (+1 for the greedy one, which a beam may repeat) per sentence, merged each step. The host
    reads whether every sentence is done every ``check_every`` steps (:func:`check_interval`);
    then done sentences leave the batch. Until then a done sentence's beams run on, but nothing
    they find is kept, so the result does not depend on ``check_every``.
    """
    if beam_size < 1 or not 1 <= n_best <= beam_size:
        raise ValueError(f"need beam_size >= 1 and 1 <= n_best <= beam_size, got {beam_size}, {n_best}")
    K, device = beam_size, src.device
    B = src.size(0)
    every = check_interval(device, check_every)
    encoded = model.encode(src, src_mask)
    limit = max_output_lengths(src_mask, max_len_ratio, max_len_extra)  # (B,)
    limit_host = host(limit)
    T = max(limit_host) + 1  # the longest hypothesis has max(limit) tokens; </s> comes at step max(limit)
    neg_inf = float("-inf")

    # The finished table, per original sentence: F slots of tokens, length, log-prob and ranking score.
    floor = greedy_floor and K > 1
    Fn = n_best + int(floor)
    fin_tokens = torch.zeros(B, Fn, T, dtype=torch.long, device=device)
    fin_len = torch.zeros(B, Fn, dtype=torch.long, device=device)
    fin_logp = torch.zeros(B, Fn, device=device)
    fin_score = torch.full((B, Fn), neg_inf, device=device)
    n_finished = torch.zeros(B, dtype=torch.long, device=device)
    best_finished = torch.full((B,), neg_inf, device=device)  # (B,) best normalised score
    if floor:
        tokens, lengths, log_prob = greedy_tokens(model, encoded, src_mask, max_len_ratio, max_len_extra, every)
        fin_tokens[:, 0, : tokens.size(1)] = tokens  # (B, <= T): read up to its length
        fin_len[:, 0], fin_logp[:, 0] = lengths, log_prob
        fin_score[:, 0] = best_finished = log_prob / length_penalty(lengths + 1, alpha)  # not counted in n_finished

    rows = torch.arange(B, device=device).repeat_interleave(K)  # (B*K,) beam k of sentence b at b*K+k
    enc = select_batch(encoded, rows)
    state = model.init_state(enc)
    live_host = list(range(B))  # original index of each live sentence, on the host ...
    sentence = torch.arange(B, device=device)  # (n,) ... and on the device
    scores = torch.full((B, K), neg_inf, device=device)  # (n, K) summed log-probs of live beams
    scores[:, 0] = 0.0  # all beams start as <s>; only one may expand at first
    prefix = torch.zeros(B * K, T, dtype=torch.long, device=device)  # (n*K, T): t tokens at step t
    prev = torch.full((B * K,), BOS_ID, dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)  # (n,)
    forced = torch.full((model.tgt_vocab_size,), neg_inf, device=device)  # (V,): only </s> at the cap
    forced[EOS_ID] = 0.0

    for t in range(T):
        n = len(live_host)
        logits, state, _ = model.decode_step(enc, state, prev)
        logp = F.log_softmax(logits.float(), dim=-1)  # (n*K, V)
        V = logp.size(-1)
        logp = logp.view(n, K, V)
        at_limit = t >= limit[sentence]  # (n,)
        if t >= min(limit_host[b] for b in live_host):  # known on the host: no read
            logp = torch.where(at_limit.view(n, 1, 1), forced + logp[..., EOS_ID : EOS_ID + 1], logp)
        candidates = (scores.unsqueeze(-1) + logp).view(n, K * V)
        top_scores, top_index = candidates.topk(2 * K, dim=1)  # (n, 2K)
        top_beam, top_token = top_index // V, top_index % V

        # Candidates among the first K that end in </s> join the finished table (not a done sentence's).
        lp = length_penalty(t + 1, alpha)  # t tokens and </s>
        ends = (top_token[:, :K] == EOS_ID) & torch.isfinite(top_scores[:, :K]) & ~done.unsqueeze(1)  # (n, K)
        new_score = (top_scores[:, :K] / lp).masked_fill(~ends, neg_inf)  # (n, K)
        table = torch.cat([fin_score[sentence], new_score], 1).topk(Fn, dim=1).indices  # (n, F) of F + K
        new_tokens = prefix.view(n, K, T).gather(1, top_beam[:, :K, None].expand(n, K, T))  # (n, K, T)
        pick = table.unsqueeze(-1).expand(n, Fn, T)
        fin_tokens[sentence] = torch.cat([fin_tokens[sentence], new_tokens], 1).gather(1, pick)
        t_len = torch.full((n, K), t, dtype=torch.long, device=device)
        fin_len[sentence] = torch.cat([fin_len[sentence], t_len], 1).gather(1, table)
        fin_logp[sentence] = torch.cat([fin_logp[sentence], top_scores[:, :K]], 1).gather(1, table)
        fin_score[sentence] = torch.cat([fin_score[sentence], new_score], 1).gather(1, table)
        n_finished[sentence] += ends.sum(1)
        best_finished[sentence] = torch.maximum(best_finished[sentence], new_score.max(1).values)

        # The best K candidates that did not end live on (there are always K: at most K end).
        rank = torch.arange(2 * K, device=device).expand(n, 2 * K).masked_fill(top_token == EOS_ID, 4 * K)
        keep = rank.topk(K, dim=1, largest=False).values.clamp(max=2 * K - 1)  # (n, K) positions
        scores = top_scores.gather(1, keep)
        beam_rows = (torch.arange(n, device=device).unsqueeze(1) * K + top_beam.gather(1, keep)).view(-1)
        prev = top_token.gather(1, keep).view(-1)  # (n*K,)

        # Live beams now hold t + 1 tokens; ending them next would give length t + 2.
        best_live = scores.max(1).values / length_penalty(t + 2, alpha)  # (n,)
        done |= at_limit | ((n_finished[sentence] >= n_best) & (best_finished[sentence] >= best_live))  # (n,)
        state = select_batch(state, beam_rows)
        prefix = prefix.index_select(0, beam_rows)
        prefix[:, t] = prev
        if (t + 1) % every and t + 1 < T:
            continue
        flags = host(done)
        if all(flags):
            break
        if any(flags):  # done sentences leave the batch
            kept = [i for i, f in enumerate(flags) if not f]
            live_host = [live_host[i] for i in kept]
            live = torch.tensor(kept, device=device)  # (n',)
            live_rows = (live.unsqueeze(1) * K + torch.arange(K, device=device)).view(-1)
            state, enc = select_batch(state, live_rows), select_batch(enc, live_rows)
            prefix, prev = prefix[live_rows], prev[live_rows]
            scores, sentence, done = scores[live], sentence[live], done[live]

    out = []
    table = zip(host(fin_tokens), host(fin_len), host(fin_logp), host(fin_score))
    for tokens, lengths, log_probs, ranked in table:
        hyps = [Hypothesis(row[:n], lp / length_penalty(n + 1, alpha), lp)
                for row, n, lp, s in zip(tokens, lengths, log_probs, ranked) if s > neg_inf]
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
    model: Seq2Seq, dataset: ParallelDataset, settings: DecodeSettings, progress: bool = True,
    compute_type: str = "float32",
) -> list[list[Hypothesis]]:
    """Decode every source of ``dataset`` in length-sorted token-budget batches: per sentence, in
    the dataset's order, its ``n_best`` hypotheses, best first. ``compute_type``: float32, or
    bfloat16/float16 under autocast (the weights stay float32; scores are summed in float32)."""
    from tqdm import tqdm

    batches = TokenBucketBatchSampler(dataset.lengths(), settings.batch_tokens, shuffle=False)
    out: list[list[Hypothesis] | None] = [None] * len(dataset)
    device = next(model.parameters()).device  # decode.device: where the caller put the model
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(compute_type)
    strategy = settings.strategy_used
    generator = torch.Generator(device).manual_seed(settings.seed) if strategy == "sample" else None
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        for indices in tqdm(list(batches), desc="decoding", unit="batch", disable=not progress, file=sys.stderr):
            batch = dataset.collate(indices)
            src = batch["src"].to(device, non_blocking=True)  # (B, S)
            src_mask = batch["src_mask"].to(device, non_blocking=True)
            if strategy == "greedy":
                hyps = [[h] for h in greedy_search(model, src, src_mask, settings.max_len_ratio, alpha=settings.alpha)]
            elif strategy == "sample":  # n_best samples per sentence, independently drawn
                n = settings.n_best
                found = sample_search(
                    model, src.repeat_interleave(n, 0), src_mask.repeat_interleave(n, 0), settings.max_len_ratio,
                    alpha=settings.alpha, top_k=settings.top_k, top_p=settings.top_p,
                    temperature=settings.temperature, generator=generator,
                )
                hyps = [sorted(found[i * n : (i + 1) * n], key=lambda h: -h.score) for i in range(len(indices))]
            else:
                hyps = beam_search(
                    model, src, src_mask, settings.beam_size, settings.alpha, settings.max_len_ratio,
                    n_best=settings.n_best,
                )
            for i, h in zip(indices, hyps):
                out[i] = h
    return out  # type: ignore[return-value]
