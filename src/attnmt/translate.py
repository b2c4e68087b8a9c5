"""Batched translation of many sentences, and the ``attnmt-translate`` command.

``attnmt-translate ckpt=RUN_OR_CKPT [input=FILE|-] [beam_size=5] [n_best=1] [scores=false]
[alignments=false]`` reads sentences (stdin by default), loads the model once, translates in
token-budget batches and prints one line per sentence, in input order.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from attnmt.utils.schema import Ge, Gt, Le

if TYPE_CHECKING:  # torch and the models load after the arguments are checked
    from attnmt.data.dataset import ParallelDataset
    from attnmt.models.base import Seq2Seq
    from attnmt.search import Hypothesis


@dataclass
class DecodeSettings:
    """How to decode: the keys of ``attnmt-translate`` and of evaluate.py's ``decode`` node
    (types, ranges, defaults and help, in this one place; checked by :mod:`attnmt.utils.schema`
    before decoding starts)."""

    beam_size: Annotated[int, Ge(1)] = field(default=5, metadata={"help": "1 is greedy decoding", "metavar": "K"})
    alpha: Annotated[float, Ge(0)] = field(default=0.6, metadata={
        "help": "GNMT length penalty exponent; 0 ranks by summed log-probability", "metavar": "A"})
    max_len_ratio: Annotated[float, Gt(0)] = field(default=1.5, metadata={
        "help": "outputs have at most R * source length + 10 tokens", "metavar": "R"})
    batch_tokens: Annotated[int, Ge(1)] = field(default=8000, metadata={
        "help": "padded source tokens per batch (beam search multiplies by beam_size)", "metavar": "N"})
    n_best: Annotated[int, Ge(1), Le("beam_size")] = field(default=1, metadata={
        "help": "hypotheses kept (printed) per sentence, best first", "metavar": "N"})
    device: str = field(default="auto", metadata={
        "help": "where to decode: auto (the first CUDA GPU where one is visible, else the CPU), cpu, cuda or cuda:N",
        "metavar": "DEV"})

    @property
    def search(self) -> str:
        return "greedy" if self.beam_size == 1 else f"beam {self.beam_size}, alpha {self.alpha}"


@dataclass
class TranslateSettings:
    """The keys of ``attnmt-translate`` besides :class:`DecodeSettings`."""

    ckpt: str = field(metadata={
        "help": "a .ckpt file, a training run's output folder, or a folder written by attnmt-export "
                "(decoded with CTranslate2)",
        "metavar": "PATH"})
    input: str = field(default="-", metadata={"help": "a file of source sentences, or - for stdin", "metavar": "FILE"})
    scores: bool = field(default=False, metadata={"help": "also print each hypothesis' score", "metavar": "BOOL"})
    alignments: bool = field(default=False, metadata={
        "help": "also print word alignments (Pharaoh, from the last layer's cross-attention averaged over heads; "
                "the same layer from a CTranslate2 export)",
        "metavar": "BOOL"})
    word_links: Literal["any", "merged"] = field(default="any", metadata={
        "help": "alignments: any links two words when any of their pieces link (each target piece to its "
                "most-attended source piece); merged sums the attention over each word's pieces first "
                "(one link per target word), as evaluate.py's eval.word_links",
        "metavar": "HOW"})


def translate_dataset(
    model: Seq2Seq, dataset: ParallelDataset, settings: DecodeSettings, progress: bool = True
) -> list[list[Hypothesis]]:
    """Decode every source of ``dataset`` in length-sorted token-budget batches: per sentence, in
    the dataset's order, its ``n_best`` hypotheses, best first."""
    import torch
    from tqdm import tqdm

    from attnmt.data.batching import TokenBucketBatchSampler
    from attnmt.search import beam_search, greedy_search

    sampler = TokenBucketBatchSampler(dataset.lengths(), settings.batch_tokens, shuffle=False)
    out: list[list[Hypothesis] | None] = [None] * len(dataset)
    device = next(model.parameters()).device  # decode.device: where the caller put the model
    with torch.inference_mode():
        for indices in tqdm(list(sampler), desc="decoding", unit="batch", disable=not progress, file=sys.stderr):
            batch = dataset.collate(indices)
            src, src_mask = batch["src"].to(device), batch["src_mask"].to(device)  # (B, S)
            if settings.beam_size == 1:
                hyps = [[h] for h in greedy_search(model, src, src_mask, settings.max_len_ratio, alpha=settings.alpha)]
            else:
                hyps = beam_search(
                    model, src, src_mask, settings.beam_size, settings.alpha, settings.max_len_ratio,
                    n_best=settings.n_best,
                )
            for i, h in zip(indices, hyps):
                out[i] = h
    return out  # type: ignore[return-value]


USAGE_HEAD = """usage: attnmt-translate ckpt=RUN_OR_CKPT [key=value ...]

Translate sentences with a trained attnmt checkpoint: one source sentence per input line, one
translation per output line, in order.

keys:
"""
USAGE_TAIL = """
Input is UTF-8 text (a file or stdin alike): the first line that is not valid UTF-8 is an error,
before anything is translated. Lines end at LF; a CR before it (CRLF) is dropped. Every input
line gets its output: a blank or whitespace-only line is not decoded and gets an empty
translation; a NUL byte is kept as an ordinary (unknown) character.

With n_best > 1, scores or alignments, lines read
  SENTENCE_INDEX ||| TRANSLATION ||| SCORE ||| ALIGNMENT
(the fields asked for; Moses n-best style; a blank input line gets one row with an empty
translation, score 0 and no links). Progress and logs go to stderr. A bad key or value is one
line on stderr (error: ...) and exit status 2. evaluate.py takes the same decoding keys as
decode.KEY=VALUE.

example:  echo "the small dog sees a cat ." | attnmt-translate ckpt=outputs/train/runs/RUN
"""


def usage() -> str:
    from attnmt.utils.cli import keys_help

    return USAGE_HEAD + keys_help((TranslateSettings, DecodeSettings)) + USAGE_TAIL


def parse_args(argv: list[str]) -> tuple[TranslateSettings, DecodeSettings]:
    from attnmt.utils.cli import parse_key_values

    args, decode = parse_key_values(
        argv, (TranslateSettings, DecodeSettings), "attnmt-translate", "attnmt-translate ckpt=RUN_OR_CKPT"
    )
    return args, decode


def translate_lines(args: TranslateSettings, settings: DecodeSettings, lines: list[str]) -> list[str]:
    """What ``attnmt-translate`` prints for ``lines``."""
    from attnmt.alignment import attention_links, format_links
    from attnmt.checkpoint import load_for_decoding
    from attnmt.data.dataset import encode_for_eval
    from attnmt.export import is_exported
    from attnmt.search import Hypothesis
    from attnmt.utils.device import decode_device

    device = decode_device(settings.device, "device")
    if is_exported(args.ckpt):  # a CTranslate2 export (attnmt-export)
        from attnmt.ct2 import ExportedModel

        exported = ExportedModel(args.ckpt, device=device.type, device_index=device.index or 0)
        tokenizer, max_len = exported.tokenizer, exported.max_len
    else:
        exported = None
        model, tokenizer, train_cfg, _ = load_for_decoding(args.ckpt)
        model.to(device)
        max_len = train_cfg["data"].get("max_len", 128)
    kept = [i for i, line in enumerate(lines) if line.strip()]  # blank lines are not decoded
    nbest: list[list[Hypothesis]] = [[Hypothesis([], 0.0, 0.0)] for _ in lines]
    links: list[list[set]] = [[set()] for _ in lines]
    if kept and exported is not None:
        from attnmt.ct2 import word_links

        dataset = encode_for_eval(tokenizer, [lines[i] for i in kept], max_len=max_len)
        found, attn = exported.translate_dataset(
            dataset, settings, args.alignments, rescore=args.scores or settings.n_best > 1
        )
        for k, i in enumerate(kept):
            nbest[i] = found[k]
            if args.alignments:
                links[i] = [word_links(tokenizer, dataset.src[k], h.tokens, a, word_links=args.word_links)
                            for h, a in zip(found[k], attn[k])]
    elif kept:
        dataset = encode_for_eval(tokenizer, [lines[i] for i in kept], max_len=max_len)
        for i, hyps in zip(kept, translate_dataset(model, dataset, settings, progress=len(kept) > 100)):
            nbest[i] = hyps
        if args.alignments:
            flat = [(k, h.tokens) for k, i in enumerate(kept) for h in nbest[i]]
            found = iter(attention_links(model, tokenizer, dataset, flat, settings.batch_tokens, layers=[-1],
                                         word_links=args.word_links)[0])
            for i in kept:
                links[i] = [next(found) for _ in nbest[i]]
    if settings.n_best == 1 and not args.scores and not args.alignments:
        return tokenizer.decode_tgt([h[0].tokens for h in nbest])
    out = []
    for i, hyps in enumerate(nbest):
        for h, hyp_links in zip(hyps, links[i]):
            fields = [str(i), tokenizer.decode_tgt([h.tokens])[0]]
            if args.scores or settings.n_best > 1:
                fields.append(f"{h.score:.4f}")
            if args.alignments:
                fields.append(format_links(hyp_links))
            out.append(" ||| ".join(fields))
    return out


def main(argv: list[str] | None = None) -> None:
    from attnmt.errors import exit_on_user_error

    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "help") for a in argv):
        print(usage(), end="")
        return

    @exit_on_user_error
    def run() -> None:
        from attnmt.data.io import read_lines, read_stdin

        args, settings = parse_args(argv)
        lines = read_stdin() if args.input == "-" else read_lines(Path(args.input))
        if not lines:
            return
        for line in translate_lines(args, settings, lines):
            print(line, flush=False)
        sys.stdout.flush()

    run()


if __name__ == "__main__":
    main()
