"""Several trained models decoding as one (``ckpt=A,B``): at every step the next-token
distribution is the mean of the members' probabilities, ``log (1/n) sum_i p_i(y | x, y_<t)``, as
fairseq and OpenNMT-py ensemble. Members may be of different kinds (an RNN beside a Transformer)
when they share one tokenizer. Attention (heatmaps, alignments, the server's picture) is one
named member's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnmt.models.base import Seq2Seq, State


def _join(parts: list[State]) -> State:
    """The members' states as one flat state (``"<i>.<key>"``): beam search reorders it whole."""
    return {f"{i}.{key}": value for i, part in enumerate(parts) for key, value in part.items()}


def _part(state: State, i: int) -> State:
    prefix = f"{i}."
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


def mean_log_probs(logits: list[Tensor]) -> Tensor:
    """``log`` of the mean of ``softmax(logits_i)`` over the members, in float32."""
    logps = torch.stack([F.log_softmax(x.float(), dim=-1) for x in logits])  # (n, ..., V)
    return torch.logsumexp(logps, dim=0) - math.log(len(logits))


class Ensemble(Seq2Seq):
    """``members`` behind the one seq2seq interface; ``attention_member`` (an index) supplies the
    attention weights. Its "logits" are the averaged log-probabilities (a softmax leaves them as
    they are)."""

    def __init__(self, members: list[Seq2Seq], attention_member: int = 0):
        super().__init__()
        if not 0 <= attention_member < len(members):
            raise ValueError(f"attention_member={attention_member}: the ensemble has {len(members)} members")
        self.members = nn.ModuleList(members)
        self.attention_member = attention_member
        self.src_vocab_size, self.tgt_vocab_size = members[0].src_vocab_size, members[0].tgt_vocab_size
        self.has_full_context = members[attention_member].has_full_context

    def encode(self, src: Tensor, src_mask: Tensor, need_attention: bool = False) -> State:
        parts = [m.encode(src, src_mask, need_attention and i == self.attention_member)
                 for i, m in enumerate(self.members)]
        enc = _join(parts) | {"src_mask": src_mask}
        if "encoder_self" in parts[self.attention_member]:
            enc["encoder_self"] = parts[self.attention_member]["encoder_self"]  # (B, L, H, S, S)
        return enc

    def decode(self, enc: State, tgt_in: Tensor, need_attention: bool = False, **options) -> tuple[Tensor, dict]:
        """``options`` (``full_context``) go to the attention member only: they change how the
        target is read for alignment, not the scores."""
        logits, attention = [], {}
        for i, m in enumerate(self.members):
            mine = i == self.attention_member
            out, attn = m.decode(_part(enc, i), tgt_in, need_attention and mine, **(options if mine else {}))
            logits.append(out)  # (B, T, V)
            attention = attn if mine else attention
        return mean_log_probs(logits), attention

    def init_state(self, enc: State) -> State:
        return _join([m.init_state(_part(enc, i)) for i, m in enumerate(self.members)])

    def decode_step(self, enc: State, state: State, prev: Tensor, need_attention: bool = False):
        logits, parts, attention = [], [], {}
        for i, m in enumerate(self.members):
            mine = i == self.attention_member
            out, new, attn = m.decode_step(_part(enc, i), _part(state, i), prev, need_attention and mine)
            logits.append(out)  # (B, V)
            parts.append(new)
            attention = attn if mine else attention
        return mean_log_probs(logits), _join(parts), attention
