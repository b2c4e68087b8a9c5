"""Additive attention scores ``v^T tanh(q_t + k_s)`` as one autograd function.

The plain formulation (:meth:`attnmt.models.attention.Attention.scores`, ``ops`` off) is
``v_a(torch.tanh(q.unsqueeze(2) + k.unsqueeze(1))).squeeze(-1)``: ``torch.tanh`` over the
``(B, T, S, A)`` energies and the ``v_a`` projection's backward (a matrix product with an inner
size of 1) are costly on a CPU. Here the energies are computed in place, ``tanh`` as
``2 sigmoid(2x) - 1``, and the gradient is written out by hand from the saved ``tanh`` values
(what it saves: docs/performance.md).
"""

from __future__ import annotations

import torch
from torch import Tensor


class _AdditiveScores(torch.autograd.Function):
    """``v^T tanh(q + k)`` for every query/key pair, with its gradient written out by hand."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        e = q.unsqueeze(2) + k.unsqueeze(1)  # (B, T, 1, A) + (B, 1, S, A) -> (B, T, S, A)
        if e.device.type == "cpu" and e.dtype in (torch.float32, torch.float64):
            # tanh(x) = 2 sigmoid(2x) - 1, in place: cheaper than torch.tanh on a CPU. Not in
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
