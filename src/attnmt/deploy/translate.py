"""Batched translation of many sentences, and the ``attnmt-translate`` command.

``attnmt-translate ckpt=RUN_OR_CKPT [input=FILE|-] [beam_size=5] [n_best=1] [scores=false]
[alignments=false]`` reads sentences (stdin by default), loads the model once, translates in
token-budget batches and prints one line per sentence, in input order. The input is streamed,
``chunk_lines`` lines at a time (:mod:`attnmt.deploy.translate_stream`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from attnmt.decode.settings import DecodeSettings
from attnmt.utils.schema import Ge

if TYPE_CHECKING:  # torch and the models load after the arguments are checked
    from attnmt.decode.hypothesis import Hypothesis


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
    from attnmt.utils.cli import usage_text

    return usage_text(USAGE_HEAD, (TranslateSettings, DecodeSettings), USAGE_TAIL)


def parse_args(argv: list[str]) -> tuple[TranslateSettings, DecodeSettings]:
    from attnmt.utils.cli import parse_key_values

    args, decode = parse_key_values(
        argv, (TranslateSettings, DecodeSettings), "attnmt-translate", "attnmt-translate ckpt=RUN_OR_CKPT"
    )
    return args, decode


class Translator:
    """The model of ``args.ckpt``, loaded once behind the decoding seam
    (:func:`attnmt.decode.backends.load_backend`: a checkpoint, or a CTranslate2 export), and what
    ``attnmt-translate`` prints for lines of text. ``progress``: a decoding bar on stderr for
    calls of more than 100 sentences."""

    def __init__(self, args: TranslateSettings, settings: DecodeSettings, progress: bool = True):
        from attnmt.decode.backends import load_backend
        from attnmt.utils.device import decode_device

        self.args, self.settings, self.progress = args, settings, progress
        self.backend = load_backend(args.ckpt, str(decode_device(settings.device, "device")), settings.compute_type)

    def translate(self, lines: list[str], first_index: int = 0) -> list[str]:
        """The output rows for ``lines``: one per line, or with ``n_best``, ``scores`` or
        ``alignments`` one ``|||`` row per hypothesis, whose index counts from ``first_index``."""
        from attnmt.align.links import format_links
        from attnmt.decode.hypothesis import Hypothesis

        args, settings, backend = self.args, self.settings, self.backend
        tokenizer = backend.tokenizer
        kept = [i for i, line in enumerate(lines) if line.strip()]  # blank lines are not decoded
        nbest: list[list[Hypothesis]] = [[Hypothesis([], 0.0, 0.0)] for _ in lines]
        links: list[list[set]] = [[set()] for _ in lines]
        if kept:
            dataset = backend.dataset([lines[i] for i in kept])
            progress = self.progress and len(kept) > 100
            found = backend.translate(dataset, settings, progress, rescore=args.scores or settings.n_best > 1)
            for i, hyps in zip(kept, found):
                nbest[i] = hyps
            if args.alignments:  # the last layer's cross-attention, heads averaged
                flat = [(k, h.tokens) for k, i in enumerate(kept) for h in nbest[i]]
                read = iter(backend.alignments(dataset, flat, settings.batch_tokens, layers=[-1],
                                               word_links=args.word_links)[0])
                for i in kept:
                    links[i] = [next(read) for _ in nbest[i]]
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
        from attnmt.deploy.translate_stream import Interrupted, translate_stream

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
