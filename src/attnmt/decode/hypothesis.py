"""What a search returns, and how it ranks: plain Python, shared by attnmt's own search and
decoding with CTranslate2 (which needs no torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor


@dataclass(frozen=True)
class Hypothesis:
    tokens: list[int]  # without <s> and </s>
    score: float  # log_prob / length_penalty: what beam search ranks by
    log_prob: float  # sum of the model's log-probabilities, </s> included


def length_penalty(length: Tensor | int, alpha: float) -> Tensor | float:
    """GNMT (Wu et al., 2016, eq. 14): ``((5 + |Y|) / 6) ** alpha``; ``|Y|`` counts ``</s>``."""
    return ((5.0 + length) / 6.0) ** alpha
