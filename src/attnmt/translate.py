"""Batched translation of many sentences, and the ``attnmt-translate`` command.

``attnmt-translate ckpt=RUN_OR_CKPT [input=FILE|-] [beam_size=5] [n_best=1] [scores=false]
[alignments=false]`` reads sentences (stdin by default), loads the model once, translates in
token-budget batches and prints one line per sentence, in input order.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from attnmt.data.batching import TokenBucketBatchSampler
from attnmt.data.datamodule import ParallelDataset
from attnmt.errors import ConfigError
from attnmt.utils.cli import parse_key_values
from attnmt.models.base import Seq2Seq
from attnmt.search import Hypothesis, beam_search, greedy_search


@dataclass
class DecodeSettings:
    beam_size: int = 5
    alpha: float = 0.6  # GNMT length penalty exponent; 0 ranks by summed log-probability
    max_len_ratio: float = 1.5  # outputs have at most ratio * source length + 10 tokens
    batch_tokens: int = 8000  # padded source tokens per batch (beam search multiplies by beam_size)
    n_best: int = 1
    key_prefix: str = "decode."  # how errors name the keys: evaluate.py's decode.beam_size, ...

    def __post_init__(self):
        k = self.key_prefix
        if self.beam_size < 1:
            raise ConfigError(f"{k}beam_size={self.beam_size} must be at least 1")
        if not 1 <= self.n_best <= self.beam_size:
            raise ConfigError(f"{k}n_best={self.n_best} must be between 1 and {k}beam_size={self.beam_size}")
        if self.alpha < 0:
            raise ConfigError(f"{k}alpha={self.alpha} must be >= 0")
        if self.max_len_ratio <= 0:
            raise ConfigError(f"{k}max_len_ratio={self.max_len_ratio} must be > 0")
        if self.batch_tokens < 1:
            raise ConfigError(f"{k}batch_tokens={self.batch_tokens} must be at least 1")

    @property
    def search(self) -> str:
        return "greedy" if self.beam_size == 1 else f"beam {self.beam_size}, alpha {self.alpha}"


def translate_dataset(
    model: Seq2Seq, dataset: ParallelDataset, settings: DecodeSettings, progress: bool = True
) -> list[list[Hypothesis]]:
    """Decode every source of ``dataset`` in length-sorted token-budget batches: per sentence, in
    the dataset's order, its ``n_best`` hypotheses, best first."""
    sampler = TokenBucketBatchSampler(dataset.lengths(), settings.batch_tokens, shuffle=False)
    out: list[list[Hypothesis] | None] = [None] * len(dataset)
    with torch.inference_mode():
        for indices in tqdm(list(sampler), desc="decoding", unit="batch", disable=not progress, file=sys.stderr):
            batch = dataset.collate(indices)
            if settings.beam_size == 1:
                hyps = [[h] for h in greedy_search(model, batch["src"], batch["src_mask"], settings.max_len_ratio, alpha=settings.alpha)]
            else:
                hyps = beam_search(
                    model, batch["src"], batch["src_mask"], settings.beam_size, settings.alpha,
                    settings.max_len_ratio, n_best=settings.n_best,
                )
            for i, h in zip(indices, hyps):
                out[i] = h
    return out  # type: ignore[return-value]


USAGE = """usage: attnmt-translate ckpt=RUN_OR_CKPT [key=value ...]

Translate sentences with a trained attnmt checkpoint: one source sentence per input line, one
translation per output line, in order.

keys (defaults in brackets):
  ckpt=PATH          a .ckpt file or a training run's output folder (required)
  input=FILE         source sentences, or - for stdin [-]
  beam_size=K        1 is greedy decoding [5]
  alpha=A            GNMT length penalty [0.6]
  n_best=N           print N hypotheses per sentence [1]
  max_len_ratio=R    output length cap: R * source length + 10 [1.5]
  batch_tokens=N     padded source tokens per batch [8000]
  scores=BOOL        also print each hypothesis' score [false]
  alignments=BOOL    also print word alignments (Pharaoh, from the last layer's
                     cross-attention averaged over heads) [false]

With n_best > 1, scores or alignments, lines read
  SENTENCE_INDEX ||| TRANSLATION ||| SCORE ||| ALIGNMENT
(the fields asked for; Moses n-best style). Progress and logs go to stderr.

example:  echo "the small dog sees a cat ." | attnmt-translate ckpt=outputs/train/runs/RUN
"""

DEFAULTS = {
    "ckpt": None, "input": "-", "beam_size": 5, "alpha": 0.6, "n_best": 1, "max_len_ratio": 1.5,
    "batch_tokens": 8000, "scores": False, "alignments": False,
}


def parse_args(argv: list[str]) -> dict:
    return parse_key_values(argv, DEFAULTS, "attnmt-translate", "attnmt-translate ckpt=RUN_OR_CKPT")


def translate_lines(args: dict, lines: list[str]) -> list[str]:
    """What ``attnmt-translate`` prints for ``lines``."""
    from attnmt.alignment import attention_links, format_links
    from attnmt.checkpoint import load_for_decoding
    from attnmt.data.datamodule import encode_for_eval

    settings = DecodeSettings(
        beam_size=args["beam_size"], alpha=args["alpha"], n_best=args["n_best"],
        max_len_ratio=args["max_len_ratio"], batch_tokens=args["batch_tokens"], key_prefix="",
    )
    model, tokenizer, train_cfg, _ = load_for_decoding(args["ckpt"])
    dataset = encode_for_eval(tokenizer, lines, max_len=train_cfg["data"].get("max_len", 128))
    nbest = translate_dataset(model, dataset, settings, progress=len(lines) > 100)
    plain = settings.n_best == 1 and not args["scores"] and not args["alignments"]
    if plain:
        return tokenizer.decode_tgt([h[0].tokens for h in nbest])
    links = None
    if args["alignments"]:
        flat = [(i, h.tokens) for i, hyps in enumerate(nbest) for h in hyps]
        links = iter(attention_links(model, tokenizer, dataset, flat, settings.batch_tokens, layers=[-1])[0])
    out = []
    for i, hyps in enumerate(nbest):
        for h in hyps:
            fields = [str(i), tokenizer.decode_tgt([h.tokens])[0]]
            if args["scores"] or settings.n_best > 1:
                fields.append(f"{h.score:.4f}")
            if links is not None:
                fields.append(format_links(next(links)))
            out.append(" ||| ".join(fields))
    return out


def main(argv: list[str] | None = None) -> None:
    from attnmt.data.io import read_lines
    from attnmt.errors import exit_on_user_error

    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE, end="")
        return

    @exit_on_user_error
    def run() -> None:
        args = parse_args(argv)
        if args["input"] == "-":
            lines = [line.rstrip("\r\n") for line in sys.stdin]
        else:
            lines = read_lines(Path(args["input"]))
        if not lines:
            return
        for line in translate_lines(args, lines):
            print(line, flush=False)
        sys.stdout.flush()

    run()


if __name__ == "__main__":
    main()
