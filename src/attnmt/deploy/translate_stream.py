"""``attnmt-translate``'s loop over its input: ``chunk_lines`` lines read, translated and written at a
time, so that memory stays flat however long the input is, output starts after the first chunk, and
a run that stops (Ctrl-C, a bad line) keeps every chunk it finished.

Each chunk is translated as :func:`attnmt.deploy.translate.translate_lines` translates a whole input
(length-sorted into token-budget batches), its rows written in input order with their global line
index, and stdout flushed before the next chunk is read.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from itertools import islice
from typing import TextIO

from attnmt.errors import DataError

# What a backend does with a chunk: (its lines, the input index of the first) -> output rows.
TranslateChunk = Callable[[list[str], int], list[str]]
# A run shorter than this shows no progress bar.
PROGRESS_DELAY_S = 5.0


class Interrupted(KeyboardInterrupt):
    """Ctrl-C while streaming; the output of the first ``lines`` input lines (whole chunks) is written."""

    def __init__(self, lines: int):
        super().__init__(lines)
        self.lines = lines


def chunks(lines: Iterable[str], size: int) -> Iterator[list[str]]:
    """``lines`` in lists of ``size`` (the last one shorter), each read only when it is asked for."""
    it = iter(lines)
    while chunk := list(islice(it, size)):
        yield chunk


@contextmanager
def sigint_deferred() -> Iterator[None]:
    """A Ctrl-C inside the block raises ``KeyboardInterrupt`` when the block ends, so that a chunk's
    rows are written and flushed whole or not at all; a second Ctrl-C raises at once (a blocked
    pipe). Only where Python's own handler is in place: in the main thread, and not where SIGINT is
    ignored (a background job)."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    received: list[int] = []

    def handle(signum, frame) -> None:
        if received:
            raise KeyboardInterrupt
        received.append(signum)

    previous = signal.signal(signal.SIGINT, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def translate_stream(
    lines: Iterable[str], load: Callable[[], TranslateChunk], chunk_lines: int, out: TextIO, progress: bool = False
) -> int:
    """Translate ``lines`` ``chunk_lines`` at a time, writing each chunk's rows to ``out`` (one per
    line, newline-terminated) and flushing it; the number of input lines translated.

    ``load()`` gives the backend; it is called once, when the first chunk has been read, so an
    empty input loads nothing and a bad line among the first ``chunk_lines`` is reported before the
    model loads. A :class:`DataError` from reading a line of a later chunk says how many lines
    before it are written; Ctrl-C (at any point) raises :class:`Interrupted` with that number.
    ``progress``: a bar on stderr (lines and lines/s) for runs longer than ``PROGRESS_DELAY_S``.
    """
    from tqdm import tqdm

    done = 0
    translate: TranslateChunk | None = None
    bar = tqdm(desc="translating", unit=" lines", file=sys.stderr, disable=not progress, delay=PROGRESS_DELAY_S)
    try:
        for chunk in chunks(lines, chunk_lines):
            translate = translate or load()
            rows = translate(chunk, done)
            with sigint_deferred():
                out.write("".join(row + "\n" for row in rows))
                out.flush()
                done += len(chunk)
            bar.update(len(chunk))
    except KeyboardInterrupt:
        raise Interrupted(done) from None
    except DataError as e:
        if done:
            raise DataError(f"{e} (the output of the first {done} lines is written)") from None
        raise
    finally:
        bar.close()
    return done
