"""Attention over the encoder states of an RNN: scores, masking, softmax and context, once.

Scores (``q`` a decoder state, ``k`` an encoder state):

* ``dot``      -- Luong et al. (2015), eq. 8: ``q^T k``
* ``general``  -- Luong et al. (2015), eq. 8: ``q^T W_a k``
* ``concat``   -- Luong et al. (2015), eq. 8: ``v_a^T tanh(W_a [q; k])``, which is Bahdanau et al.
  (2015) appendix A.1.2's additive score ``v_a^T tanh(W_a q + U_a k)``; ``additive`` is its alias.

Whether ``q`` is the previous decoder state (Bahdanau) or the current one (Luong) is the
decoder's business (:mod:`attnmt.models.rnn`). Keys are projected once per sentence
(:meth:`Attention.project_keys`), not once per target step.

The additive score runs as one autograd function (:func:`additive_scores`): on a 2-core CPU
``torch.tanh`` over the ``(B, T, S, A)`` energies was the largest elementwise cost of an RNN
training step, and the ``v_a`` projection's backward a matrix product with an inner size of 1.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from attnmt.errors import ConfigError
from attnmt.utils.schema import PositiveInt

SCORES = ("dot", "general", "concat", "additive")


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the last dimension with ``mask == False`` positions given exactly zero weight.

    ``scores``: ``(B, T, S)``; ``mask``: ``(B, S)``, True on real source tokens.
    """
    scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
    return torch.softmax(scores, dim=-1)


class _AdditiveScores(torch.autograd.Function):
    """``v^T tanh(q + k)`` for every query/key pair, with its gradient written out by hand."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        e = q.unsqueeze(2) + k.unsqueeze(1)  # (B, T, 1, A) + (B, 1, S, A) -> (B, T, S, A)
        if e.device.type == "cpu" and e.dtype in (torch.float32, torch.float64):
            # tanh(x) = 2 sigmoid(2x) - 1, in place: 2.3x faster than torch.tanh on CPU. Not in
            # bf16 (autocast): 2 sigmoid - 1 cancels bits near 0, twice torch.tanh's error there.
            y = e.mul_(2.0).sigmoid_().mul_(2.0).sub_(1.0)
        else:
            y = e.tanh_()
        v = v.to(y.dtype)
        ctx.save_for_backward(y, v)
        ctx.dtypes = q.dtype, k.dtype
        return torch.matmul(y, v)  # (B, T, S)

    @staticmethod
    def backward(ctx, grad: Tensor):
        y, v = ctx.saved_tensors  # (B, T, S, A), (A,)
        grad = grad.to(y.dtype)  # (B, T, S)
        grad_q = grad_k = grad_v = None
        if ctx.needs_input_grad[2]:
            grad_v = torch.mv(y.reshape(-1, y.size(-1)).t(), grad.reshape(-1))  # (A,)
        # d/de of v^T tanh(e) = v * (1 - tanh(e)^2)
        grad_e = torch.ops.aten.tanh_backward(grad.unsqueeze(-1) * v, y)  # (B, T, S, A)
        if ctx.needs_input_grad[0]:
            grad_q = grad_e.sum(2).to(ctx.dtypes[0])  # (B, T, A)
        if ctx.needs_input_grad[1]:
            # One query per row (an RNN decoder step): the sum over T is a view.
            grad_k = (grad_e.squeeze(1) if grad_e.size(1) == 1 else grad_e.sum(1)).to(ctx.dtypes[1])  # (B, S, A)
        return grad_q, grad_k, grad_v


def additive_scores(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``q`` ``(B, T, A)`` (projected queries), ``k`` ``(B, S, A)`` (projected keys), ``v`` ``(A,)``
    -> ``v^T tanh(q_t + k_s)`` ``(B, T, S)``."""
    return _AdditiveScores.apply(q, k, v)


class Attention(nn.Module):
    """Global attention: weights over all source positions and their weighted sum (the context)."""

    def __init__(
        self, query_size: int, key_size: int, score: Literal["dot", "general", "concat", "additive"] = "general",
        hidden_size: PositiveInt | None = None,
    ):
        super().__init__()
        if score not in SCORES:
            raise ConfigError(f"model.attention.score={score!r} is not one of {', '.join(SCORES)}")
        if score == "dot" and query_size != key_size:
            raise ConfigError(
                f"model.attention.score=dot needs equal decoder ({query_size}) and encoder "
                f"output ({key_size}) sizes; use general or concat"
            )
        self.score = "concat" if score == "additive" else score
        hidden_size = hidden_size or query_size
        if self.score == "general":
            self.W_a = nn.Linear(key_size, query_size, bias=False)
        elif self.score == "concat":
            self.W_q = nn.Linear(query_size, hidden_size, bias=False)
            self.W_k = nn.Linear(key_size, hidden_size, bias=False)
            self.v_a = nn.Linear(hidden_size, 1, bias=False)

    def project_keys(self, keys: Tensor) -> Tensor:
        """The query-independent part of the score, computed once per sentence.

        ``keys``: ``(B, S, K)`` -> ``(B, S, K)`` for dot, ``(B, S, Q)`` for general (``W_a k``),
        ``(B, S, A)`` for concat (``U_a k``).
        """
        if self.score == "general":
            return self.W_a(keys)
        if self.score == "concat":
            return self.W_k(keys)
        return keys

    def scores(self, query: Tensor, proj_keys: Tensor) -> Tensor:
        """``query`` ``(B, T, Q)`` -> unnormalised scores ``(B, T, S)``."""
        if self.score == "concat":
            return additive_scores(self.W_q(query), proj_keys, self.v_a.weight.view(-1))  # (B, T, S)
        return torch.bmm(query, proj_keys.transpose(1, 2))  # (B, T, S)

    def forward(self, query: Tensor, proj_keys: Tensor, values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``query`` ``(B, T, Q)``, ``values`` ``(B, S, K)``, ``mask`` ``(B, S)``.

        Returns the context ``(B, T, K)`` and the weights ``(B, T, S)`` (each row sums to 1 over
        the real source tokens and is exactly 0 on padding).
        """
        weights = masked_softmax(self.scores(query, proj_keys), mask)  # (B, T, S)
        context = torch.bmm(weights, values)  # (B, T, K)
        return context, weights
