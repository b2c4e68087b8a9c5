"""Attention over the encoder states of an RNN: scores, masking, softmax and context, once.

Scores (``q`` a decoder state, ``k`` an encoder state):

* ``dot``      -- Luong et al. (2015), eq. 8: ``q^T k``
* ``general``  -- Luong et al. (2015), eq. 8: ``q^T W_a k``
* ``concat``   -- Luong et al. (2015), eq. 8: ``v_a^T tanh(W_a [q; k])``, which is Bahdanau et al.
  (2015) appendix A.1.2's additive score ``v_a^T tanh(W_a q + U_a k)``; ``additive`` is its alias.

Whether ``q`` is the previous decoder state (Bahdanau) or the current one (Luong) is the
decoder's business (:mod:`attnmt.models.rnn`). Keys are projected once per sentence
(:meth:`Attention.project_keys`), not once per target step. With the fast kernels on (the
default, :mod:`attnmt.ops`) the additive score runs as one autograd function.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from attnmt import ops
from attnmt.errors import ConfigError
from attnmt.utils.schema import PositiveInt

SCORES = ("dot", "general", "concat", "additive")


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the last dimension with ``mask == False`` positions given exactly zero weight.

    ``scores``: ``(B, T, S)``; ``mask``: ``(B, S)``, True on real source tokens.
    """
    scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
    return torch.softmax(scores, dim=-1)


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
            q = self.W_q(query)  # (B, T, A): W_a q
            if ops.enabled():
                return ops.additive_scores(q, proj_keys, self.v_a.weight.view(-1))  # (B, T, S)
            energies = torch.tanh(q.unsqueeze(2) + proj_keys.unsqueeze(1))  # (B, T, S, A)
            return self.v_a(energies).squeeze(-1)  # (B, T, S)
        return torch.bmm(query, proj_keys.transpose(1, 2))  # (B, T, S)

    def forward(self, query: Tensor, proj_keys: Tensor, values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``query`` ``(B, T, Q)``, ``values`` ``(B, S, K)``, ``mask`` ``(B, S)``.

        Returns the context ``(B, T, K)`` and the weights ``(B, T, S)`` (each row sums to 1 over
        the real source tokens and is exactly 0 on padding).
        """
        weights = masked_softmax(self.scores(query, proj_keys), mask)  # (B, T, S)
        context = torch.bmm(weights, values)  # (B, T, K)
        return context, weights
