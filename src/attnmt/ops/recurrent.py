"""GRU/LSTM arithmetic on an ``nn.GRU``/``nn.LSTM``'s own parameters, arranged for a cheaper CPU
backward. Parameters, names and results are the module's: checkpoints are the same either way.

* :func:`bidirectional_rnn` -- the encoder. The plain formulation is ``nn.GRU(bidirectional=True)``
  over a packed sequence. Here each direction runs over the padded batch: the forward one reads
  ``x_1 .. x_len`` first (what follows a sentence cannot change its states there), the backward
  one reads each sentence reversed in place (``x_len .. x_1``, padding after it), and its outputs
  are put back in order. The packed path slices its precomputed input projection per step, and
  each slice's gradient is a zero-filled copy of the whole projection (one per direction and
  source position: filling and adding them up was 8% of a profiled RNN training step).
* :class:`FusedRNNStep` -- a decoder one step at a time, where layer 0 reads ``[x_t; extra_t]``
  and ``x_t`` (the target embeddings) is known for all steps in advance. The plain formulation,
  :class:`RNNStep`, runs the module on a sequence of length 1 per step. Here the embeddings' share
  of the input projection is one matrix product for all steps, and the gates are written out
  (PyTorch's ``nn.GRU`` equations).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnmt.ops.dropout import dropout

State = dict[str, Tensor]


def rnn_direction(rnn: nn.RNNBase, x: Tensor, layer: int, reverse: bool) -> Tensor:
    """One direction of one layer of ``rnn`` (batch first) over ``x`` ``(B, S, I)`` from a zero
    state -> ``(B, S, H)``: the call ``rnn`` itself makes, for that layer and direction alone."""
    suffix = "_reverse" if reverse else ""
    params = [getattr(rnn, f"{name}_l{layer}{suffix}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    h0 = x.new_zeros(1, x.size(0), rnn.hidden_size)
    hx = (h0, h0) if isinstance(rnn, nn.LSTM) else h0
    run = torch.lstm if isinstance(rnn, nn.LSTM) else torch.gru
    # positional: input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first
    return run(x, hx, params, True, 1, 0.0, rnn.training, False, True)[0]


def bidirectional_rnn(rnn: nn.RNNBase, x: Tensor, lengths: Tensor) -> Tensor:
    """``x`` ``(B, S, I)`` with ``lengths`` ``(B,)`` -> ``[h_fwd; h_bwd]`` ``(B, S, 2H)``, zero at padding;
    equal to ``rnn`` (bidirectional, batch first) over the packed sequence."""
    pos = torch.arange(x.size(1), device=x.device)  # (S,)
    lengths = lengths.to(x.device)[:, None]  # (B, 1)
    mask = pos < lengths  # (B, S)
    # Position t of a reversed sentence holds position len - 1 - t; padding stays where it is.
    index = torch.where(mask, lengths - 1 - pos, pos)[..., None]  # (B, S, 1)
    for layer in range(rnn.num_layers):
        if layer:
            x = dropout(x, rnn.dropout, rnn.training)  # the module's dropout between layers
        fwd = rnn_direction(rnn, x, layer, reverse=False)  # (B, S, H)
        bwd = rnn_direction(rnn, x.gather(1, index.expand_as(x)), layer, reverse=True)  # (B, S, H)
        x = torch.cat([fwd, bwd.gather(1, index.expand_as(bwd))], dim=-1)  # (B, S, 2H)
    return x * mask[..., None]


class RNNStep:
    """The plain formulation: ``rnn`` (batch first, unidirectional) over one step.

    ``inputs(x)`` splits ``x`` ``(B, T, E)`` into steps; ``step(x_t, extra, state)`` runs layer 0 on
    ``[x_t; extra]`` (``extra`` ``(B, I)`` or None) and returns the top layer's output ``(B, H)`` and
    the new state (``h``, and ``c`` for an LSTM, ``(B, L, H)``).
    """

    def __init__(self, rnn: nn.RNNBase):
        self.rnn = rnn

    def inputs(self, x: Tensor) -> tuple[Tensor, ...]:
        return x.unbind(1)  # T x (B, E)

    def __call__(self, x: Tensor, extra: Tensor | None, state: State) -> tuple[Tensor, State]:
        x = x if extra is None else torch.cat([x, extra], dim=-1)
        h = state["h"].transpose(0, 1).contiguous()  # (L, B, H)
        if isinstance(self.rnn, nn.LSTM):
            out, (h, c) = self.rnn(x.unsqueeze(1), (h, state["c"].transpose(0, 1).contiguous()))
            return out.squeeze(1), {"h": h.transpose(0, 1), "c": c.transpose(0, 1)}
        out, h = self.rnn(x.unsqueeze(1), h)
        return out.squeeze(1), {"h": h.transpose(0, 1)}


class FusedRNNStep(RNNStep):
    """:class:`RNNStep`'s results from the gates written out: ``inputs(x)`` is the embeddings' share
    of layer 0's input projection, with its bias, for all steps in one product (``(B, G*H)`` per
    step, G gates). Layer 0's weight is split once per decoding call: a slice's gradient is a
    zero-filled copy of the whole weight, one per slicing."""

    def __init__(self, rnn: nn.RNNBase, x_size: int):
        super().__init__(rnn)
        weight = rnn.weight_ih_l0  # (G*H, E + I)
        self.w_x, self.w_extra = weight[:, :x_size], weight[:, x_size:]

    def inputs(self, x: Tensor) -> tuple[Tensor, ...]:
        # unbind: one gradient tensor for all steps (a slice per step would give each its own
        # zero-filled (B, T, G*H) gradient)
        return F.linear(x, self.w_x, self.rnn.bias_ih_l0).unbind(1)  # T x (B, G*H)

    def __call__(self, x: Tensor, extra: Tensor | None, state: State) -> tuple[Tensor, State]:
        rnn, H = self.rnn, self.rnn.hidden_size
        lstm = isinstance(rnn, nn.LSTM)
        hs, cs = [], []
        out = extra
        for layer in range(rnn.num_layers):
            if layer == 0:
                gi = x if extra is None else torch.addmm(x, extra, self.w_extra.t())  # (B, G*H)
            else:
                out = dropout(out, rnn.dropout, rnn.training)  # the module's dropout between layers
                gi = F.linear(out, getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"bias_ih_l{layer}"))
            h = state["h"][:, layer]  # (B, H)
            gh = F.linear(h, getattr(rnn, f"weight_hh_l{layer}"), getattr(rnn, f"bias_hh_l{layer}"))
            if lstm:  # c' = f c + i g, h' = o tanh(c')
                i, f, g, o = (gi + gh).chunk(4, dim=-1)
                c = torch.sigmoid(f) * state["c"][:, layer] + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                cs.append(c)
            else:  # gates r, z, n: h' = (1 - z) n + z h, n = tanh(W_in x + b_in + r (W_hn h + b_hn))
                rz = torch.sigmoid(gi[:, : 2 * H] + gh[:, : 2 * H])  # (B, 2H)
                n = torch.tanh(gi[:, 2 * H :] + rz[:, :H] * gh[:, 2 * H :])
                h = n + rz[:, H:] * (h - n)
            hs.append(h)
            out = h
        new = {"h": torch.stack(hs, 1)}  # (B, L, H)
        if lstm:
            new["c"] = torch.stack(cs, 1)
        return out, new
