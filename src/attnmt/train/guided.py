"""Guided alignment training (Garg et al., 2019, section 4.2): one cross-attention (a layer, the
mean of its first ``heads`` heads) is pulled toward a statistical aligner's links by a term added
to the translation loss,

    loss = CE(translation) + weight * mean_t KL(p*_t || a_t)

where ``a_t`` ``(S,)`` is the supervised attention of the step that emits target piece ``t`` and
``p*_t`` the aligner's links of that piece spread uniformly over the source pieces they hit. KL
differs from Garg's cross-entropy only by the target's entropy, a constant: same gradient, and
zero when the attention equals the target. Rows without any link (unaligned target words, ``</s>``)
are not supervised.

The links are eflomal's (:mod:`attnmt.align.eflomal`) for the training corpus, computed once and cached
beside it: by default on the model's own subword pieces, which gives piece positions directly and
lets a fused target word's pieces follow different source words; with ``units: words`` on
whitespace words, mapped to pieces (every piece of the target word to every piece of its source
words). A batch's pairs are found by their token
ids, so the data pipeline needs no change: the token store drops and reorders pairs freely.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import Tensor

from attnmt.align.eflomal import UNITS, eflomal_links, piece_links, require_eflomal
from attnmt.align.links import Link, layer_index
from attnmt.data.io import iter_parallel
from attnmt.data.subwords import word_ids
from attnmt.data.tokenizer import EOS_ID, PAD_ID, Tokenizer
from attnmt.errors import ConfigError
from attnmt.models.base import Seq2Seq
from attnmt.utils.schema import NonNegativeFloat, PositiveInt

log = logging.getLogger(__name__)

TINY = 1e-9  # floor under attention weights inside the log: a weight can underflow to 0


def guided_alignment_loss(attention: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Summed ``KL(target_t || attention_t)`` over the rows ``t`` that have a target, and the
    number of such rows. ``attention``, ``target``: ``(B, T, S)``, rows of ``target`` summing to 1
    (supervised) or 0 (not)."""
    rows = target.sum(-1) > 0  # (B, T)
    p, q = target[rows], attention[rows].float()  # (N, S)
    kl = torch.where(p > 0, p * (p.clamp_min(TINY).log() - q.clamp_min(TINY).log()), torch.zeros_like(p))
    return kl.sum(), rows.sum()


def subword_links(links: set[Link], src_pieces: list[str], tgt_pieces: list[str]) -> np.ndarray:
    """Word links ``(source word, target word)`` as subword position pairs ``(N, 2)`` of
    ``(target piece, source piece)``: every piece of the target word with every piece of its
    source word."""
    src_pos: dict[int, list[int]] = {}
    tgt_pos: dict[int, list[int]] = {}
    for k, w in enumerate(word_ids(src_pieces)):
        if w is not None:
            src_pos.setdefault(w, []).append(k)
    for k, w in enumerate(word_ids(tgt_pieces)):
        if w is not None:
            tgt_pos.setdefault(w, []).append(k)
    # A link past the pieces' words (a normalisation that merged words) is dropped.
    pairs = [(t, s) for i, j in links for t in tgt_pos.get(j, ()) for s in src_pos.get(i, ())]
    return np.asarray(sorted(pairs), dtype=np.int32).reshape(-1, 2)


def _key(src_ids: list[int], tgt_ids: list[int]) -> bytes:
    """A pair's token ids as one dictionary key (the source length first: unambiguous)."""
    return np.asarray([len(src_ids), *src_ids, *tgt_ids], dtype=np.int32).tobytes()


class GuidedAlignment:
    """``task.guided_alignment``: ``weight`` of the alignment term (0 = off), which decoder
    ``layer``'s cross-attention is supervised (-1 = last; an RNN has one), how many of its
    ``heads`` (the first ones, averaged; an RNN has one), and whether that attention is taken from
    a second decoder pass without the future mask (``full_context``, Transformer only: Garg et al.
    2019, section 4.3; the translation loss keeps the causal pass), and what eflomal aligns
    (``units``: the model's ``subwords`` or whitespace ``words``)."""

    def __init__(
        self, weight: NonNegativeFloat = 0.0, layer: int = -1, heads: PositiveInt = 1, full_context: bool = False,
        units: str = "subwords",
    ):
        if weight < 0:
            raise ConfigError(f"task.guided_alignment.weight={weight} must be 0 (off) or more")
        if heads < 1:
            raise ConfigError(f"task.guided_alignment.heads={heads} must be at least 1")
        if units not in UNITS:
            raise ConfigError(f"task.guided_alignment.units={units!r} must be one of {', '.join(UNITS)}")
        self.weight, self.layer, self.heads, self.full_context = weight, layer, heads, full_context
        self.units = units
        if weight > 0:
            require_eflomal(f"task.guided_alignment.weight={weight}")
        self.links: dict[bytes, np.ndarray] | None = None  # token ids of a pair -> (N, 2) positions

    @property
    def active(self) -> bool:
        return self.weight > 0

    def prepare(self, train_files: list[tuple], tokenizer: Tokenizer, cache_dir) -> None:
        """eflomal's links for every training pair (cached), as subword positions."""
        sources: list[str] = []
        targets: list[str] = []
        for src_file, tgt_file in train_files:
            for s, t in iter_parallel(src_file, tgt_file):
                sources.append(s)
                targets.append(t)
        src_ids, tgt_ids = tokenizer.encode_src(sources), tokenizer.encode_tgt(targets)
        src_pieces = [tokenizer.src_pieces(ids) for ids in src_ids]
        tgt_pieces = [tokenizer.tgt_pieces(ids) for ids in tgt_ids]
        self.links = {}
        if self.units == "subwords":
            for s_ids, t_ids, links in zip(src_ids, tgt_ids, piece_links(src_pieces, tgt_pieces, cache_dir)):
                self.links[_key(s_ids, t_ids)] = np.asarray(sorted((j, i) for i, j in links), np.int32).reshape(-1, 2)
        else:
            word_links = eflomal_links(sources, targets, cache_dir)
            for s_ids, t_ids, sp, tp, links in zip(src_ids, tgt_ids, src_pieces, tgt_pieces, word_links):
                self.links[_key(s_ids, t_ids)] = subword_links(links, sp, tp)
        log.info("Guided alignment: eflomal links (%s) for %d training pairs, weight %g",
                 self.units, len(self.links), self.weight)

    def target(self, batch: dict[str, Tensor]) -> Tensor:
        """The batch's target attention ``(B, T, S)``, aligned with ``tgt_out`` and ``src``."""
        assert self.links is not None, "GuidedAlignment.prepare() has not run"
        src, tgt = batch["src"], batch["tgt_out"]  # (B, S), (B, T); both end in </s> then padding
        target = torch.zeros(src.size(0), tgt.size(1), src.size(1))
        found = 0
        for b, (s, t) in enumerate(zip(src.tolist(), tgt.tolist())):
            s = s[: s.index(EOS_ID)] if EOS_ID in s else [x for x in s if x != PAD_ID]
            t = t[: t.index(EOS_ID)] if EOS_ID in t else [x for x in t if x != PAD_ID]
            pairs = self.links.get(_key(s, t))
            if pairs is None or not len(pairs):
                continue
            found += 1
            target[b, torch.from_numpy(pairs[:, 0]).long(), torch.from_numpy(pairs[:, 1]).long()] = 1.0
        target /= target.sum(-1, keepdim=True).clamp_min(1.0)  # rows sum to 1 or stay 0
        return target.to(src.device)

    def check(self, model: Seq2Seq) -> None:
        """A one-line error, before any aligning or training, for settings ``model`` cannot take."""
        if self.full_context and not model.has_full_context:
            raise ConfigError(f"task.guided_alignment.full_context=true needs a Transformer: "
                              f"{type(model).__name__} reads the target left to right only (set it to false)")

    def forward(self, model: Seq2Seq, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Teacher-forced logits ``(B, T, V)`` and the mean alignment KL over supervised rows."""
        enc = model.encode(batch["src"], batch["src_mask"])
        if self.full_context:
            self.check(model)
            logits, _ = model.decode(enc, batch["tgt_in"])
            _, attn = model.decode(enc, batch["tgt_in"], need_attention=True, full_context=True)
        else:
            logits, attn = model.decode(enc, batch["tgt_in"], need_attention=True)
        cross = attn["cross"]  # (B, L, H, T, S)
        layer = layer_index(self.layer, cross.size(1), "task.guided_alignment.layer")
        if self.heads > cross.size(2):
            raise ConfigError(
                f"task.guided_alignment.heads={self.heads}: the model's attention has {cross.size(2)} heads"
            )
        supervised = cross[:, layer, : self.heads].mean(1)  # (B, T, S)
        kl, rows = guided_alignment_loss(supervised, self.target(batch))
        return logits, kl / rows.clamp_min(1)
