"""Reading line-aligned parallel text, plain or gzip-compressed."""

from __future__ import annotations

import gzip
import logging
import sys
from pathlib import Path

from attnmt.errors import DataError

log = logging.getLogger(__name__)
_reported_crlf: set[tuple[Path, float]] = set()


def split_lines(raw: bytes, name: str) -> tuple[list[str], int]:
    """UTF-8 ``raw`` as lines without their endings: lines end at ``\\n`` only, and a CR before
    it is dropped (a CR elsewhere, a NUL or a whitespace-only line is kept as it is, so that
    lines stay aligned). Also how many lines ended in CRLF. Text that is not UTF-8 is a
    :class:`DataError` naming ``name`` and the first bad line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{name}: line {line} is not valid UTF-8") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    crlf = sum(line.endswith("\r") for line in lines)
    if crlf:
        lines = [line.removesuffix("\r") for line in lines]
    return lines, crlf


def read_lines(path: str | Path) -> list[str]:
    """Lines of a UTF-8 text file (``.gz`` is decompressed), without their line endings
    (:func:`split_lines`)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot be read ({e})") from None
    lines, crlf = split_lines(raw, str(path))
    if crlf:
        key = (path.resolve(), path.stat().st_mtime)
        if key not in _reported_crlf:  # once per file, however often it is read
            _reported_crlf.add(key)
            log.warning("%s: %d of %d lines end in CRLF; read without the CR", path, crlf, len(lines))
    return lines


def read_stdin() -> list[str]:
    """Lines of standard input, read as bytes and checked like a file's (:func:`split_lines`)."""
    lines, crlf = split_lines(sys.stdin.buffer.read(), "<stdin>")
    if crlf:
        log.warning("<stdin>: %d of %d lines end in CRLF; read without the CR", crlf, len(lines))
    return lines


def read_parallel(src_path: str | Path, tgt_path: str | Path) -> tuple[list[str], list[str]]:
    """Read a line-aligned pair of files; a line-count mismatch is an error naming both files."""
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        raise DataError(
            f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}: "
            "parallel files must be line-aligned"
        )
    if not src:
        raise DataError(f"{src_path} and {tgt_path} are empty")
    return src, tgt


def resolve_text_file(prefix: str | Path, lang: str) -> Path:
    """``<prefix>.<lang>`` or ``<prefix>.<lang>.gz``, whichever exists."""
    for candidate in (Path(f"{prefix}.{lang}"), Path(f"{prefix}.{lang}.gz")):
        if candidate.is_file():
            return candidate
    raise DataError(f"{prefix}.{lang}: no such file (also tried {prefix}.{lang}.gz)")
