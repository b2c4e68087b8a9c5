"""Batched translation of many sentences, and the ``attnmt-translate`` command.

``attnmt-translate ckpt=RUN_OR_CKPT [input=FILE|-] [beam_size=5] [n_best=1] [scores=false]
[alignments=false]`` reads sentences (stdin by default), loads the model once, translates in
token-budget batches and prints one line per sentence, in input order. The input is streamed,
``chunk_lines`` lines at a time (:mod:`attnmt.translate_stream`).
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
    chunk_lines: Annotated[int, Ge(1)] = field(default=2000, metadata={
        "help": "input lines read, translated and written at a time (stdout flushed after each); a chunk is "
                "sorted by length into batch_tokens batches, and a chunk that holds several batches decodes "
                "about as fast as the whole input at once",
        "metavar": "N"})


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
Input is UTF-8 text (a file or stdin alike), read and translated chunk_lines lines at a time:
each chunk's output is written and flushed before the next chunk is read. The first line that is
not valid UTF-8 is an error when it is reached: the chunks before it are written, its own chunk is
not. Lines end at LF; a CR before it (CRLF) is dropped. Every input line gets its output: a blank
or whitespace-only line is not decoded and gets an empty translation; a NUL byte is kept as an
ordinary (unknown) character. Ctrl-C stops at once, keeping the chunks already written: a line
on stderr says how many input lines they cover, and the exit status is 130.

With n_best > 1, scores or alignments, lines read
  SENTENCE_INDEX ||| TRANSLATION ||| SCORE ||| ALIGNMENT
(the fields asked for; Moses n-best style; SENTENCE_INDEX counts input lines from 0; a blank
input line gets one row with an empty translation, score 0 and no links). Progress and logs go
to stderr. A bad key or value is one line on stderr (error: ...) and exit status 2. evaluate.py
takes the same decoding keys as decode.KEY=VALUE.

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


class Translator:
    """The model of ``args.ckpt``, loaded once (a PyTorch checkpoint, or a CTranslate2 export when
    :func:`attnmt.export.is_exported`), and what ``attnmt-translate`` prints for lines of text.
    ``progress``: a decoding bar on stderr for calls of more than 100 sentences."""

    def __init__(self, args: TranslateSettings, settings: DecodeSettings, progress: bool = True):
        from attnmt.export import is_exported
        from attnmt.utils.device import decode_device

        self.args, self.settings, self.progress = args, settings, progress
        device = decode_device(settings.device, "device")
        if is_exported(args.ckpt):  # a CTranslate2 export (attnmt-export)
            from attnmt.ct2 import ExportedModel

            self.exported = ExportedModel(args.ckpt, device=device.type, device_index=device.index or 0)
            self.model = None
            self.tokenizer, self.max_len = self.exported.tokenizer, self.exported.max_len
        else:
            from attnmt.checkpoint import load_for_decoding

            self.exported = None
            self.model, self.tokenizer, train_cfg, _ = load_for_decoding(args.ckpt)
            self.model.to(device)
            self.max_len = train_cfg["data"].get("max_len", 128)

    def translate(self, lines: list[str], first_index: int = 0) -> list[str]:
        """The output rows for ``lines``: one per line, or with ``n_best``, ``scores`` or
        ``alignments`` one ``|||`` row per hypothesis, whose index counts from ``first_index``."""
        from attnmt.alignment import attention_links, format_links
        from attnmt.data.dataset import encode_for_eval
        from attnmt.search import Hypothesis

        args, settings, tokenizer = self.args, self.settings, self.tokenizer
        kept = [i for i, line in enumerate(lines) if line.strip()]  # blank lines are not decoded
        nbest: list[list[Hypothesis]] = [[Hypothesis([], 0.0, 0.0)] for _ in lines]
        links: list[list[set]] = [[set()] for _ in lines]
        if kept and self.exported is not None:
            from attnmt.ct2 import word_links

            dataset = encode_for_eval(tokenizer, [lines[i] for i in kept], max_len=self.max_len)
            found, attn = self.exported.translate_dataset(
                dataset, settings, args.alignments, rescore=args.scores or settings.n_best > 1
            )
            for k, i in enumerate(kept):
                nbest[i] = found[k]
                if args.alignments:
                    links[i] = [word_links(tokenizer, dataset.src[k], h.tokens, a, word_links=args.word_links)
                                for h, a in zip(found[k], attn[k])]
        elif kept:
            dataset = encode_for_eval(tokenizer, [lines[i] for i in kept], max_len=self.max_len)
            progress = self.progress and len(kept) > 100
            for i, hyps in zip(kept, translate_dataset(self.model, dataset, settings, progress=progress)):
                nbest[i] = hyps
            if args.alignments:
                flat = [(k, h.tokens) for k, i in enumerate(kept) for h in nbest[i]]
                found = iter(attention_links(self.model, tokenizer, dataset, flat, settings.batch_tokens,
                                             layers=[-1], word_links=args.word_links)[0])
                for i in kept:
                    links[i] = [next(found) for _ in nbest[i]]
        if settings.n_best == 1 and not args.scores and not args.alignments:
            return tokenizer.decode_tgt([h[0].tokens for h in nbest])
        out = []
        for i, hyps in enumerate(nbest):
            for n, h in enumerate(hyps):
                fields = [str(first_index + i), tokenizer.decode_tgt([h.tokens])[0]]
                if args.scores or settings.n_best > 1:
                    fields.append(f"{h.score:.4f}")
                if args.alignments:
                    fields.append(format_links(links[i][n]))
                out.append(" ||| ".join(fields))
        return out


def translate_lines(args: TranslateSettings, settings: DecodeSettings, lines: list[str]) -> list[str]:
    """What ``attnmt-translate`` prints for ``lines`` (all translated at once)."""
    return Translator(args, settings).translate(lines)


def main(argv: list[str] | None = None) -> None:
    from attnmt.errors import exit_on_user_error

    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "help") for a in argv):
        print(usage(), end="")
        return

    @exit_on_user_error
    def run() -> None:
        from attnmt.data.io import iter_lines, iter_stdin
        from attnmt.translate_stream import Interrupted, translate_stream

        args, settings = parse_args(argv)
        lines = iter_stdin() if args.input == "-" else iter_lines(Path(args.input), crlf_warning=True)
        try:
            translate_stream(lines, lambda: Translator(args, settings, progress=False).translate, args.chunk_lines,
                             sys.stdout, progress=sys.stderr.isatty())
        except Interrupted as e:
            print(f"interrupted: the output of the first {e.lines} input lines is written", file=sys.stderr,
                  flush=True)
            sys.exit(130)
        except BrokenPipeError:  # the reader has gone (| head): stop quietly, as other filters do
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            sys.exit(141)

    run()


if __name__ == "__main__":
    main()
