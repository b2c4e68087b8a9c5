"""Dropout with a cheaper mask on CPU.

``torch.nn.functional.dropout`` draws one random number per element (``bernoulli_``), a
noticeable share of a CPU training step. Here one 64-bit random draw makes the masks of four
elements (16 bits each), for the same result (what it saves: docs/performance.md): each element is kept with probability
``1 - p`` (p rounded to a multiple of 1/65536) and scaled by ``1 / (1 - p)``. On other devices,
and with the fast kernels off (:func:`attnmt.ops.switch.enabled`), this is ``F.dropout``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnmt.ops.switch import enabled


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    if not training or p == 0.0:
        return x
    if not enabled() or x.device.type != "cpu" or not 0.0 < p < 1.0:
        return F.dropout(x, p, training)
    drop = round(p * 65536)
    # Full-range int64 draws, read as int16: every bit random (plain random_() leaves the sign bit 0).
    bits = torch.randint(-(2**63), 2**63 - 1, ((x.numel() + 3) // 4,), dtype=torch.int64)
    keep = bits.view(torch.int16)[: x.numel()].view(x.shape) >= drop - 32768  # P(keep) = 1 - drop / 65536
    return x * keep * (65536 / (65536 - drop))


class Dropout(nn.Module):
    """Drop-in for ``nn.Dropout`` using :func:`dropout`."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
