"""The one interface every seq2seq model implements; training, search and evaluation use only it.

Shapes: ``B`` batch, ``S`` source length, ``T`` target length, ``V`` target vocabulary,
``L`` layers, ``H`` heads. Attention weights always come as ``(B, L, H, T, S)`` so that plotting
and alignment code need not know the model: an RNN has ``L = H = 1``.

Encoder outputs and decoder states are flat ``dict[str, Tensor]`` whose tensors all have the
batch on dimension 0, so beam search can expand and reorder them without knowing the model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

State = dict[str, Tensor]


class Seq2Seq(nn.Module, ABC):
    src_vocab_size: int
    tgt_vocab_size: int
    # decode(..., full_context=True) reads the whole target at every position (for alignment only)
    has_full_context: bool = False

    @abstractmethod
    def encode(self, src: Tensor, src_mask: Tensor, need_attention: bool = False) -> State:
        """Encode a padded source batch ``(B, S)`` once; ``src_mask`` is True on real tokens.

        The result holds at least ``src_mask``; with ``need_attention`` a model with encoder
        self-attention adds ``encoder_self`` of shape ``(B, L, H, S, S)``.
        """

    @abstractmethod
    def decode(
        self, enc: State, tgt_in: Tensor, need_attention: bool = False
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Teacher-forced decoding of ``tgt_in`` ``(B, T)``: logits ``(B, T, V)`` and, on request,
        attention weights ``{"cross": (B, L, H, T, S), ...}`` (empty dict otherwise)."""

    @abstractmethod
    def init_state(self, enc: State) -> State:
        """The decoder state before the first target token."""

    @abstractmethod
    def decode_step(
        self, enc: State, state: State, prev: Tensor, need_attention: bool = False
    ) -> tuple[Tensor, State, dict[str, Tensor]]:
        """One incremental step from ``prev`` ``(B,)``: logits ``(B, V)``, the new state and, on
        request, this step's attention ``{"cross": (B, L, H, S), ...}``."""

    def forward(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor) -> Tensor:
        return self.decode(self.encode(src, src_mask), tgt_in)[0]

    def compile_training(self, **options) -> None:
        """Compile, in place, what a training step runs (``torch.compile(**options)``); parameters,
        buffers and state-dict keys stay as they are, so checkpoints are the same either way. By
        default the whole teacher-forced forward pass; a model whose forward pass is a Python loop
        compiles its step instead."""
        self.compile(**options)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def select_batch(state: State, index: Tensor) -> State:
    """Pick (and repeat or reorder) batch rows of every tensor in ``state``."""
    return {k: v.index_select(0, index) for k, v in state.items()}


def sinusoid_positions(length: int, dim: int, device=None) -> Tensor:
    """Vaswani et al. (2017) section 3.5: ``PE[pos, 2i] = sin(pos / 10000^(2i/d))``, cos for odd."""
    pos = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)  # (T, 1)
    div = torch.exp(
        torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-torch.log(torch.tensor(10000.0)) / dim)
    )
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div[: dim // 2])
    return pe  # (T, D)
