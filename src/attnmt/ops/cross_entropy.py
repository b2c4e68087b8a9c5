"""Label-smoothed cross-entropy in one pass over the logits, gradient computed in the forward.

The plain formulation (:meth:`attnmt.train.task.TranslationTask.loss`, ``ops`` off) is
``F.cross_entropy(logits, y, label_smoothing=eps, ignore_index=pad, reduction="sum")``. It keeps a
log-softmax copy of the ``(positions x vocabulary)`` logits for its backward, then builds two more
tensors of that size in the backward: with a large vocabulary, a sizeable share of a CPU training
step and of its memory. The loss is

    loss_i = logsumexp(z_i) - (1 - eps) z_{i,y_i} - eps * mean_c z_{i,c}

(the same as PyTorch's: the smoothing mass eps is spread uniformly over all classes), and its
gradient ``softmax(z_i) - (1 - eps) onehot(y_i) - eps / V`` is written into one buffer during
the forward (from the softmax, in place), then scaled in the backward. Padding positions get no
loss and no gradient. What it saves: docs/performance.md.
"""

from __future__ import annotations

import torch
from torch import Tensor


class _SmoothedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, eps: float, ignore_index: int) -> Tensor:
        z = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()  # (N, V)
        V = z.size(-1)
        valid = target != ignore_index  # (N,)
        safe = target.masked_fill(~valid, 0).unsqueeze(-1)  # (N, 1)
        probs = torch.softmax(z, dim=-1)  # (N, V): the only (N, V) buffer, later the gradient
        # logsumexp from the most probable class, whose probability (>= 1/V) cannot underflow:
        # lse = max z - log max p. Two max reductions are 4x cheaper on CPU than one argmax.
        lse = z.amax(dim=-1, keepdim=True) - probs.amax(dim=-1, keepdim=True).log()  # (N, 1)
        per_position = lse.squeeze(-1) - (1.0 - eps) * z.gather(-1, safe).squeeze(-1) - eps * z.mean(-1)
        loss = per_position.masked_fill(~valid, 0.0).sum()
        if ctx.needs_input_grad[0]:
            grad = probs
            if eps:
                grad.sub_(eps / V)
            grad.scatter_add_(-1, safe, torch.full_like(lse, -(1.0 - eps)))
            padding = (~valid).nonzero().squeeze(1)  # (P,)
            if padding.numel():
                grad.index_fill_(0, padding, 0.0)  # only the padding rows (grad[~valid] = 0 sweeps all N x V)
            ctx.save_for_backward(grad)
            ctx.dtype = logits.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        (grad,) = ctx.saved_tensors
        # In place: the buffer is used once (no double backward through this loss).
        return grad.mul_(grad_output).to(ctx.dtype), None, None, None


def smoothed_cross_entropy(logits: Tensor, target: Tensor, eps: float = 0.0, ignore_index: int = -100) -> Tensor:
    """Summed label-smoothed cross-entropy of ``logits`` ``(N, V)`` against ``target`` ``(N,)``."""
    return _SmoothedCrossEntropy.apply(logits, target, eps, ignore_index)
