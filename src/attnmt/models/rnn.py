"""RNN encoder-decoders with attention.

* :class:`BahdanauRNN` -- Bahdanau, Cho & Bengio (2015), "Neural Machine Translation by Jointly
  Learning to Align and Translate", appendix A: the score uses the *previous* decoder state
  ``s_{t-1}``; the context ``c_t`` is an input of the recurrent step.
* :class:`LuongRNN` -- Luong, Pham & Manning (2015), "Effective Approaches to Attention-based
  Neural Machine Translation", section 3.1 (global attention): the score uses the *current* state
  ``h_t``; the attentional state ``h~_t = tanh(W_c [c_t; h_t])`` (eq. 5) predicts the word and,
  with input feeding (section 3.3), is fed to the next step.

Both share the bidirectional encoder, the initial state (a projection of the masked mean of the
encoder states) and the attention module (:mod:`attnmt.models.attention`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from attnmt import ops
from attnmt.errors import ConfigError
from attnmt.models.attention import Attention
from attnmt.models.base import Seq2Seq, State
from attnmt.utils.schema import Fraction, PositiveInt

RNN_TYPES = {"gru": nn.GRU, "lstm": nn.LSTM}


def rnn_class(rnn_type: str) -> type[nn.RNNBase]:
    if rnn_type not in RNN_TYPES:
        raise ConfigError(f"model.rnn_type={rnn_type!r} is not one of {', '.join(RNN_TYPES)}")
    return RNN_TYPES[rnn_type]


class RNNEncoder(nn.Module):
    """Bidirectional multi-layer GRU/LSTM whose states at real tokens never see padding."""

    def __init__(self, emb_size: int, hidden_size: int, num_layers: int, rnn_type: str, dropout: float):
        super().__init__()
        self.rnn = rnn_class(rnn_type)(
            emb_size, hidden_size, num_layers, batch_first=True, bidirectional=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )

    def forward(self, emb: Tensor, lengths: Tensor) -> Tensor:
        """``emb`` ``(B, S, E)``, ``lengths`` ``(B,)`` -> states ``h_j = [h_fwd; h_bwd]`` ``(B, S, 2H)``,
        zero at padding."""
        if ops.enabled():
            return ops.bidirectional_rnn(self.rnn, emb, lengths)  # the same states, cheaper backward on CPU
        packed = pack_padded_sequence(emb, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        return pad_packed_sequence(out, batch_first=True, total_length=emb.size(1))[0]


class RNNSeq2Seq(Seq2Seq):
    """Shared parts of the RNN models. Layer 0 of the decoder RNN reads ``[E y_{t-1}; extra_t]``,
    where ``extra_t`` is the context ``c_t`` (Bahdanau), the previous attentional state ``h~_{t-1}``
    (Luong, input feeding) or nothing; subclasses define the step around it."""

    def __init__(
        self,
        src_vocab_size: int,
        tgt_vocab_size: int,
        attention: Callable[..., Attention],
        emb_size: PositiveInt = 128,
        hidden_size: PositiveInt = 256,
        encoder_hidden_size: PositiveInt | None = None,
        encoder_layers: PositiveInt = 1,
        decoder_layers: PositiveInt = 1,
        rnn_type: Literal["gru", "lstm"] = "gru",
        dropout: Fraction = 0.1,
        *,
        extra_input: Literal["context", "feed", "none"],
    ):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"model.dropout={dropout} must be in [0, 1)")
        self.src_vocab_size, self.tgt_vocab_size = src_vocab_size, tgt_vocab_size
        self.hidden_size, self.decoder_layers = hidden_size, decoder_layers
        self.is_lstm = rnn_type == "lstm"
        # Per direction; by default the memory (both directions) has the decoder's size, so that
        # Luong's dot score needs no projection.
        encoder_hidden_size = encoder_hidden_size or hidden_size // 2
        memory_size = 2 * encoder_hidden_size
        extra_size = {"context": memory_size, "feed": hidden_size, "none": 0}[extra_input]

        self.src_embed = nn.Embedding(src_vocab_size, emb_size, padding_idx=0)
        self.tgt_embed = nn.Embedding(tgt_vocab_size, emb_size, padding_idx=0)
        self.encoder = RNNEncoder(emb_size, encoder_hidden_size, encoder_layers, rnn_type, dropout)
        self.bridge = nn.Linear(memory_size, decoder_layers * hidden_size)
        self.rnn = rnn_class(rnn_type)(
            emb_size + extra_size, hidden_size, decoder_layers,
            batch_first=True, dropout=dropout if decoder_layers > 1 else 0.0,
        )
        self.attention = attention(query_size=hidden_size, key_size=memory_size)
        self.dropout = ops.Dropout(dropout)

    # -- encoder ---------------------------------------------------------------------------------
    def encode(self, src: Tensor, src_mask: Tensor, need_attention: bool = False) -> State:
        emb = self.dropout(self.src_embed(src))  # (B, S, E)
        memory = self.encoder(emb, src_mask.sum(1))  # (B, S, M)
        return {"memory": memory, "keys": self.attention.project_keys(memory), "src_mask": src_mask}

    def init_state(self, enc: State) -> State:
        mask = enc["src_mask"].unsqueeze(-1).to(enc["memory"].dtype)  # (B, S, 1)
        mean = (enc["memory"] * mask).sum(1) / mask.sum(1)  # (B, M)
        h = torch.tanh(self.bridge(mean)).view(-1, self.decoder_layers, self.hidden_size)  # (B, L, H)
        state = {"h": h}
        if self.is_lstm:
            state["c"] = torch.zeros_like(h)
        return state

    # -- decoder ---------------------------------------------------------------------------------
    def rnn_step(self) -> ops.RNNStep:
        """The decoder RNN one step at a time: ``step(x_t, extra_t, state)`` for ``x_t`` in
        ``step.inputs(embeddings)``."""
        if ops.enabled():  # the embeddings' input projection for all steps at once, gates written out
            return ops.FusedRNNStep(self.rnn, self.tgt_embed.embedding_dim)
        return ops.RNNStep(self.rnn)

    def recur(self, enc: State, state: State, x: Tensor, step: ops.RNNStep) -> tuple[dict[str, Tensor], Tensor, State]:
        """One recurrent step from the previous token's input ``x`` (an item of ``step.inputs``):
        the per-step tensors the readout needs ``(B, 1, .)``, the attention weights ``(B, 1, S)``
        and the new state."""
        raise NotImplementedError

    def compile_training(self, **options) -> None:
        """The recurrence is a Python loop over target positions: compiled whole it would be
        unrolled, and compiled again for every target length. One step (attention and cell, a few
        fused kernels instead of dozens of small ones) is compiled instead; the loop, the encoder
        (cuDNN on a GPU) and the readout (one large product) run as they are."""
        self.recur = torch.compile(self.recur, **options)

    def readout(self, emb: Tensor, **step: Tensor) -> Tensor:
        """Logits ``(B, T, V)`` from the embedded inputs ``(B, T, E)`` and the stacked step tensors."""
        raise NotImplementedError

    def decode_step(self, enc: State, state: State, prev: Tensor, need_attention: bool = False):
        emb = self.dropout(self.tgt_embed(prev))  # (B, E)
        step = self.rnn_step()
        (x,) = step.inputs(emb.unsqueeze(1))
        out, weights, state = self.recur(enc, state, x, step)
        logits = self.readout(emb.unsqueeze(1), **out).squeeze(1)  # (B, V)
        attn = {"cross": weights[:, None, None, 0]} if need_attention else {}  # (B, 1, 1, S)
        return logits, state, attn

    def decode(self, enc: State, tgt_in: Tensor, need_attention: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
        emb = self.dropout(self.tgt_embed(tgt_in))  # (B, T, E)
        state = self.init_state(enc)
        step = self.rnn_step()
        outs: dict[str, list[Tensor]] = {}
        weights = []
        for x in step.inputs(emb):  # the recurrence, step by step
            out, w, state = self.recur(enc, state, x, step)
            for k, v in out.items():
                outs.setdefault(k, []).append(v)
            weights.append(w)
        # what does not recur, once over all steps
        logits = self.readout(emb, **{k: torch.cat(v, dim=1) for k, v in outs.items()})  # (B, T, V)
        attention = {"cross": torch.cat(weights, dim=1)[:, None, None]} if need_attention else {}  # (B, 1, 1, T, S)
        return logits, attention


class BahdanauRNN(RNNSeq2Seq):
    """``e_tj = score(s_{t-1}, h_j)``, ``c_t = sum_j a_tj h_j``, ``s_t = RNN([E y_{t-1}; c_t], s_{t-1})``,
    ``p(y_t) = softmax(W_o tanh(W_t [s_t; c_t; E y_{t-1}]))`` (Bahdanau et al. 2015, A.2.2, with a
    tanh layer in place of the maxout)."""

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, attention: Callable[..., Attention], **kwargs):
        super().__init__(src_vocab_size, tgt_vocab_size, attention, extra_input="context", **kwargs)
        emb_size = self.tgt_embed.embedding_dim
        memory_size = self.bridge.in_features
        self.pre_output = nn.Linear(self.hidden_size + memory_size + emb_size, self.hidden_size)
        self.generator = nn.Linear(self.hidden_size, tgt_vocab_size)

    def recur(self, enc: State, state: State, x: Tensor, step: ops.RNNStep):
        query = state["h"][:, -1:]  # (B, 1, H): s_{t-1}, top layer
        context, attn = self.attention(query, enc["keys"], enc["memory"], enc["src_mask"])  # (B, 1, M), (B, 1, S)
        out, state = step(x, context.squeeze(1), state)  # (B, H): s_t from [E y_{t-1}; c_t]
        return {"out": out.unsqueeze(1), "context": context}, attn, state

    def readout(self, emb: Tensor, out: Tensor, context: Tensor) -> Tensor:
        hidden = torch.tanh(self.pre_output(torch.cat([out, context, emb], dim=-1)))  # (B, T, H)
        return self.generator(self.dropout(hidden))  # (B, T, V)


class LuongRNN(RNNSeq2Seq):
    """``h_t = RNN([E y_{t-1}; h~_{t-1}], h_{t-1})`` (input feeding) or ``RNN(E y_{t-1}, h_{t-1})``,
    ``a_t = softmax(score(h_t, h_s))``, ``h~_t = tanh(W_c [c_t; h_t])``, ``p(y_t) = softmax(W_s h~_t)``
    (Luong et al. 2015, eqs. 5-8)."""

    def __init__(
        self,
        src_vocab_size: int,
        tgt_vocab_size: int,
        attention: Callable[..., Attention],
        input_feeding: bool = True,
        **kwargs,
    ):
        super().__init__(
            src_vocab_size, tgt_vocab_size, attention, extra_input="feed" if input_feeding else "none", **kwargs
        )
        self.input_feeding = input_feeding
        memory_size = self.bridge.in_features
        self.W_c = nn.Linear(memory_size + self.hidden_size, self.hidden_size, bias=False)
        self.generator = nn.Linear(self.hidden_size, tgt_vocab_size)

    def init_state(self, enc: State) -> State:
        state = super().init_state(enc)
        if self.input_feeding:
            state["feed"] = state["h"].new_zeros(state["h"].size(0), self.hidden_size)  # h~_0 = 0
        return state

    def attend(self, enc: State, out: Tensor) -> tuple[Tensor, Tensor]:
        """``out`` ``(B, T, H)`` -> attentional states ``h~`` ``(B, T, H)`` and weights ``(B, T, S)``."""
        context, weights = self.attention(out, enc["keys"], enc["memory"], enc["src_mask"])
        return torch.tanh(self.W_c(torch.cat([context, out], dim=-1))), weights

    def recur(self, enc: State, state: State, x: Tensor, step: ops.RNNStep):
        out, new_state = step(x, state["feed"] if self.input_feeding else None, state)  # (B, H): h_t
        h_tilde, attn = self.attend(enc, out.unsqueeze(1))  # (B, 1, H), (B, 1, S)
        if self.input_feeding:
            new_state["feed"] = h_tilde.squeeze(1)
        return {"h_tilde": h_tilde}, attn, new_state

    def readout(self, emb: Tensor, h_tilde: Tensor) -> Tensor:
        return self.generator(self.dropout(h_tilde))  # (B, T, V)

    def decode(self, enc: State, tgt_in: Tensor, need_attention: bool = False):
        if self.input_feeding:
            return super().decode(enc, tgt_in, need_attention)
        # Without input feeding the recurrence does not depend on attention: run it in one call.
        emb = self.dropout(self.tgt_embed(tgt_in))  # (B, T, E)
        h0 = self.init_state(enc)["h"].transpose(0, 1).contiguous()  # (L, B, H)
        out, _ = self.rnn(emb, (h0, torch.zeros_like(h0)) if self.is_lstm else h0)  # (B, T, H)
        h_tilde, weights = self.attend(enc, out)  # (B, T, H), (B, T, S)
        return self.readout(emb, h_tilde), ({"cross": weights[:, None, None]} if need_attention else {})
