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

from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnmt.errors import ConfigError
from attnmt.models.attention import Attention
from attnmt.models.dropout import Dropout, dropout
from attnmt.models.base import Seq2Seq, State
from attnmt.utils.schema import Fraction, PositiveInt

RNN_TYPES = {"gru": nn.GRU, "lstm": nn.LSTM}


def rnn_class(rnn_type: str) -> type[nn.RNNBase]:
    if rnn_type not in RNN_TYPES:
        raise ConfigError(f"model.rnn_type={rnn_type!r} is not one of {', '.join(RNN_TYPES)}")
    return RNN_TYPES[rnn_type]


class RNNEncoder(nn.Module):
    """Bidirectional multi-layer GRU/LSTM whose states at real tokens never see padding.

    Each direction runs over the padded batch: the forward one reads ``x_1 .. x_len`` first (what
    follows the sentence cannot change its states there), the backward one reads each sentence
    reversed in place (``x_len .. x_1``, padding after it), and its outputs are put back in order.
    The states equal a packed ``nn.GRU``/``nn.LSTM``'s (the parameters are that module's, with
    its names), but the backward pass is cheaper on CPU: the packed path slices its precomputed
    input projection per step, and each slice's gradient is a zero-filled copy of the whole
    projection (one per direction and source position; filling and adding them up was 8% of a
    profiled RNN training step at the reference size).
    """

    def __init__(self, emb_size: int, hidden_size: int, num_layers: int, rnn_type: str, dropout: float):
        super().__init__()
        self.rnn = rnn_class(rnn_type)(
            emb_size, hidden_size, num_layers, batch_first=True, bidirectional=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.rnn_type = rnn_type

    def forward(self, emb: Tensor, lengths: Tensor) -> Tensor:
        """``emb`` ``(B, S, E)``, ``lengths`` ``(B,)`` -> states ``h_j = [h_fwd; h_bwd]`` ``(B, S, 2H)``,
        zero at padding."""
        pos = torch.arange(emb.size(1), device=emb.device)  # (S,)
        lengths = lengths.to(emb.device)[:, None]  # (B, 1)
        mask = pos < lengths  # (B, S)
        # Position t of a reversed sentence holds position len - 1 - t; padding stays where it is.
        index = torch.where(mask, lengths - 1 - pos, pos)[..., None]  # (B, S, 1)
        x = emb
        for layer in range(self.rnn.num_layers):
            if layer:
                x = dropout(x, self.rnn.dropout, self.training)  # nn.GRU's dropout between layers
            fwd = self.direction(x, layer, "")  # (B, S, H)
            bwd = self.direction(x.gather(1, index.expand_as(x)), layer, "_reverse")  # (B, S, H)
            x = torch.cat([fwd, bwd.gather(1, index.expand_as(bwd))], dim=-1)  # (B, S, 2H)
        return x * mask[..., None]

    def direction(self, x: Tensor, layer: int, suffix: str) -> Tensor:
        """One direction of one layer over ``x`` ``(B, S, I)`` from a zero state -> ``(B, S, H)``."""
        weights = [getattr(self.rnn, f"{name}_l{layer}{suffix}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        h0 = x.new_zeros(1, x.size(0), self.rnn.hidden_size)
        if self.rnn_type == "lstm":
            return torch.lstm(x, (h0, h0), weights, True, 1, 0.0, self.training, False, True)[0]
        return torch.gru(x, h0, weights, True, 1, 0.0, self.training, False, True)[0]


class RNNSeq2Seq(Seq2Seq):
    """Shared parts of the RNN models. Subclasses define the decoder step."""

    def __init__(
        self,
        src_vocab_size: int,
        tgt_vocab_size: int,
        attention: Callable[..., Attention],
        emb_size: PositiveInt = 256,
        hidden_size: PositiveInt = 256,
        encoder_hidden_size: PositiveInt | None = None,
        encoder_layers: PositiveInt = 1,
        decoder_layers: PositiveInt = 1,
        rnn_type: Literal["gru", "lstm"] = "gru",
        dropout: Fraction = 0.2,
        joint_vocab: bool = False,
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

        self.src_embed = nn.Embedding(src_vocab_size, emb_size, padding_idx=0)
        self.tgt_embed = nn.Embedding(tgt_vocab_size, emb_size, padding_idx=0)
        self.encoder = RNNEncoder(emb_size, encoder_hidden_size, encoder_layers, rnn_type, dropout)
        self.bridge = nn.Linear(memory_size, decoder_layers * hidden_size)
        self.rnn = rnn_class(rnn_type)(
            self.decoder_input_size(emb_size, memory_size), hidden_size, decoder_layers,
            batch_first=True, dropout=dropout if decoder_layers > 1 else 0.0,
        )
        self.attention = attention(query_size=hidden_size, key_size=memory_size)
        self.dropout = Dropout(dropout)

    def decoder_input_size(self, emb_size: int, memory_size: int) -> int:
        raise NotImplementedError

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

    # -- the decoder RNN one step at a time: nn.GRU / nn.LSTM's arithmetic on its own parameters --
    def step_weights(self) -> dict[str, Tensor]:
        """Layer 0's input weight split into the target embedding's columns and the rest (the
        context or the fed-back state). Split once per decoding call: a slice's gradient is a
        zero-filled copy of the whole weight, one per slicing."""
        emb_size = self.tgt_embed.embedding_dim
        weight = self.rnn.weight_ih_l0  # (G*H, E + I)
        return {"emb": weight[:, :emb_size], "rest": weight[:, emb_size:]}

    def embed_inputs(self, emb: Tensor, weights: dict[str, Tensor]) -> Tensor:
        """The embeddings' share of layer 0's input projection, with its bias, for all steps in
        one matrix product: ``emb`` ``(..., E)`` -> ``(..., G*H)`` (G gates)."""
        return F.linear(emb, weights["emb"], self.rnn.bias_ih_l0)

    def rnn_step(self, x_emb: Tensor, rest: Tensor | None, state: State, weights: dict[str, Tensor]) -> tuple[Tensor, State]:
        """One step: ``x_emb`` ``(B, G*H)`` from :meth:`embed_inputs`, ``rest`` ``(B, I)`` the rest of
        layer 0's input (or None) -> the top layer's output ``(B, H)`` and the new state."""
        H = self.hidden_size
        hs, cs = [], []
        x = rest
        for layer in range(self.decoder_layers):
            if layer == 0:
                gi = x_emb if rest is None else torch.addmm(x_emb, rest, weights["rest"].t())  # (B, G*H)
            else:
                x = dropout(x, self.rnn.dropout, self.training)  # nn.GRU's dropout between layers
                gi = F.linear(x, getattr(self.rnn, f"weight_ih_l{layer}"), getattr(self.rnn, f"bias_ih_l{layer}"))
            h = state["h"][:, layer]  # (B, H)
            gh = F.linear(h, getattr(self.rnn, f"weight_hh_l{layer}"), getattr(self.rnn, f"bias_hh_l{layer}"))
            if self.is_lstm:  # c' = f c + i g, h' = o tanh(c')
                i, f, g, o = (gi + gh).chunk(4, dim=-1)
                c = torch.sigmoid(f) * state["c"][:, layer] + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                cs.append(c)
            else:  # gates r, z, n: h' = (1 - z) n + z h, n = tanh(W_in x + b_in + r (W_hn h + b_hn))
                rz = torch.sigmoid(gi[:, : 2 * H] + gh[:, : 2 * H])  # (B, 2H)
                n = torch.tanh(gi[:, 2 * H :] + rz[:, :H] * gh[:, 2 * H :])
                h = n + rz[:, H:] * (h - n)
            hs.append(h)
            x = h
        new = {"h": torch.stack(hs, 1)}  # (B, L, H)
        if self.is_lstm:
            new["c"] = torch.stack(cs, 1)
        return x, new

    def run_rnn(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """``x`` ``(B, T, I)`` -> top-layer outputs ``(B, T, H)`` and the new (batch-first) state."""
        h = state["h"].transpose(0, 1).contiguous()  # (L, B, H)
        if self.is_lstm:
            out, (h, c) = self.rnn(x, (h, state["c"].transpose(0, 1).contiguous()))
            return out, {"h": h.transpose(0, 1), "c": c.transpose(0, 1)}
        out, h = self.rnn(x, h)
        return out, {"h": h.transpose(0, 1)}

    # -- decoding: the recurrence runs step by step; what does not recur runs once over all steps --
    def recur(self, enc: State, state: State, x_emb: Tensor, weights: dict[str, Tensor]) -> tuple[dict[str, Tensor], Tensor, State]:
        """One recurrent step from the previous token's share of the RNN input projection
        ``x_emb`` ``(B, G*H)`` (:meth:`embed_inputs`): the per-step tensors the readout needs
        ``(B, 1, .)``, the attention weights ``(B, 1, S)`` and the new state."""
        raise NotImplementedError

    def readout(self, emb: Tensor, **step: Tensor) -> Tensor:
        """Logits ``(B, T, V)`` from the embedded inputs ``(B, T, E)`` and the stacked step tensors."""
        raise NotImplementedError

    def decode_step(self, enc: State, state: State, prev: Tensor, need_attention: bool = False):
        emb = self.dropout(self.tgt_embed(prev))  # (B, E)
        w = self.step_weights()
        step, weights, state = self.recur(enc, state, self.embed_inputs(emb, w), w)
        logits = self.readout(emb.unsqueeze(1), **step).squeeze(1)  # (B, V)
        attn = {"cross": weights[:, None, None, 0]} if need_attention else {}  # (B, 1, 1, S)
        return logits, state, attn

    def decode(self, enc: State, tgt_in: Tensor, need_attention: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
        emb = self.dropout(self.tgt_embed(tgt_in))  # (B, T, E)
        state = self.init_state(enc)
        rnn_weights = self.step_weights()
        # unbind: one gradient tensor for all steps (a slice per step would give each its own
        # zero-filled (B, T, G*H) gradient)
        x_emb = self.embed_inputs(emb, rnn_weights).unbind(1)  # T x (B, G*H)
        steps: dict[str, list[Tensor]] = {}
        weights = []
        for t in range(tgt_in.size(1)):
            step, w, state = self.recur(enc, state, x_emb[t], rnn_weights)
            for k, v in step.items():
                steps.setdefault(k, []).append(v)
            weights.append(w)
        logits = self.readout(emb, **{k: torch.cat(v, dim=1) for k, v in steps.items()})  # (B, T, V)
        attention = {"cross": torch.cat(weights, dim=1)[:, None, None]} if need_attention else {}  # (B, 1, 1, T, S)
        return logits, attention


class BahdanauRNN(RNNSeq2Seq):
    """``e_tj = score(s_{t-1}, h_j)``, ``c_t = sum_j a_tj h_j``, ``s_t = RNN([E y_{t-1}; c_t], s_{t-1})``,
    ``p(y_t) = softmax(W_o tanh(W_t [s_t; c_t; E y_{t-1}]))`` (Bahdanau et al. 2015, A.2.2, with a
    tanh layer in place of the maxout)."""

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, attention: Callable[..., Attention], **kwargs):
        super().__init__(src_vocab_size, tgt_vocab_size, attention, **kwargs)
        emb_size = self.tgt_embed.embedding_dim
        memory_size = self.bridge.in_features
        self.pre_output = nn.Linear(self.hidden_size + memory_size + emb_size, self.hidden_size)
        self.generator = nn.Linear(self.hidden_size, tgt_vocab_size)

    def decoder_input_size(self, emb_size: int, memory_size: int) -> int:
        return emb_size + memory_size

    def recur(self, enc: State, state: State, x_emb: Tensor, weights: dict[str, Tensor]):
        query = state["h"][:, -1:]  # (B, 1, H): s_{t-1}, top layer
        context, attn = self.attention(query, enc["keys"], enc["memory"], enc["src_mask"])  # (B, 1, M), (B, 1, S)
        out, state = self.rnn_step(x_emb, context.squeeze(1), state, weights)  # (B, H): s_t from [E y_{t-1}; c_t]
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
        self.input_feeding = input_feeding
        super().__init__(src_vocab_size, tgt_vocab_size, attention, **kwargs)
        memory_size = self.bridge.in_features
        self.W_c = nn.Linear(memory_size + self.hidden_size, self.hidden_size, bias=False)
        self.generator = nn.Linear(self.hidden_size, tgt_vocab_size)

    def decoder_input_size(self, emb_size: int, memory_size: int) -> int:
        return emb_size + (self.hidden_size if self.input_feeding else 0)

    def init_state(self, enc: State) -> State:
        state = super().init_state(enc)
        if self.input_feeding:
            state["feed"] = state["h"].new_zeros(state["h"].size(0), self.hidden_size)  # h~_0 = 0
        return state

    def attend(self, enc: State, out: Tensor) -> tuple[Tensor, Tensor]:
        """``out`` ``(B, T, H)`` -> attentional states ``h~`` ``(B, T, H)`` and weights ``(B, T, S)``."""
        context, weights = self.attention(out, enc["keys"], enc["memory"], enc["src_mask"])
        return torch.tanh(self.W_c(torch.cat([context, out], dim=-1))), weights

    def recur(self, enc: State, state: State, x_emb: Tensor, weights: dict[str, Tensor]):
        out, new_state = self.rnn_step(x_emb, state["feed"] if self.input_feeding else None, state, weights)  # h_t
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
        out, _ = self.run_rnn(emb, self.init_state(enc))  # (B, T, H)
        h_tilde, weights = self.attend(enc, out)  # (B, T, H), (B, T, S)
        return self.readout(emb, h_tilde), ({"cross": weights[:, None, None]} if need_attention else {})
