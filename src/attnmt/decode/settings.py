"""How to decode: one settings dataclass for every command that decodes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from attnmt.utils.device import COMPUTE_TYPES
from attnmt.utils.schema import Ge, Gt, Le


@dataclass
class DecodeSettings:
    """How to decode: the keys of ``attnmt-translate`` and of evaluate.py's ``decode`` node
    (types, ranges, defaults and help, in this one place; checked by :mod:`attnmt.utils.schema`
    before decoding starts)."""

    strategy: Literal["beam", "greedy", "sample"] = field(default="beam", metadata={
        "help": "beam search (beam_size 1 is greedy), greedy decoding, or sampling (top_k, top_p, temperature, "
                "seed)", "metavar": "S"})
    beam_size: Annotated[int, Ge(1)] = field(default=5, metadata={"help": "1 is greedy decoding", "metavar": "K"})
    alpha: Annotated[float, Ge(0)] = field(default=0.6, metadata={
        "help": "GNMT length penalty exponent; 0 ranks by summed log-probability", "metavar": "A"})
    max_len_ratio: Annotated[float, Gt(0)] = field(default=1.5, metadata={
        "help": "outputs have at most R * source length + 10 tokens", "metavar": "R"})
    batch_tokens: Annotated[int, Ge(1)] = field(default=8000, metadata={
        "help": "padded source tokens per batch (beam search multiplies by beam_size)", "metavar": "N"})
    n_best: Annotated[int, Ge(1), Le("beam_size")] = field(default=1, metadata={
        "help": "hypotheses kept (printed) per sentence, best first (sampling: N samples)", "metavar": "N"})
    top_k: Annotated[int, Ge(0)] = field(default=0, metadata={
        "help": "sampling: draw from the K most probable tokens (0: all)", "metavar": "K"})
    top_p: Annotated[float, Gt(0), Le(1)] = field(default=1.0, metadata={
        "help": "sampling: draw from the fewest most probable tokens whose probabilities reach P (1: all)",
        "metavar": "P"})
    temperature: Annotated[float, Gt(0)] = field(default=1.0, metadata={
        "help": "sampling: divides the logits (below 1 sharper, above 1 flatter)", "metavar": "T"})
    seed: int = field(default=0, metadata={"help": "sampling: the same seed gives the same outputs", "metavar": "N"})
    device: str = field(default="auto", metadata={
        "help": "where to decode: auto (the first CUDA GPU where one is visible, else the CPU), cpu, cuda or cuda:N",
        "metavar": "DEV"})
    compute_type: Literal[COMPUTE_TYPES] = field(default="auto", metadata={
        "help": "number format: auto is bfloat16 on a GPU with fast bf16 (an export: float16), else float32 "
                "(an export: its own type); int8 types are for exports only",
        "metavar": "T"})

    @property
    def strategy_used(self) -> str:
        """``greedy`` for beam search with one beam, else ``strategy``."""
        return "greedy" if self.strategy == "beam" and self.beam_size == 1 else self.strategy

    @property
    def search(self) -> str:
        if self.strategy_used == "sample":
            return f"sampling, top_k {self.top_k}, top_p {self.top_p}, temperature {self.temperature}, seed {self.seed}"
        return "greedy" if self.strategy_used == "greedy" else f"beam {self.beam_size}, alpha {self.alpha}"
