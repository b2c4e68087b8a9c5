"""Reading line-aligned parallel text, plain or gzip-compressed."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path
from typing import BinaryIO, Iterator

from attnmt.errors import DataError

log = logging.getLogger(__name__)
_reported_crlf: set[tuple[Path, float]] = set()


def read_lines(path: str | Path) -> list[str]:
    """Lines of a UTF-8 text file (``.gz`` is decompressed), without their line endings."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raw = (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")).read()
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line} is not valid UTF-8") from None
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot be read ({e})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    crlf = sum(line.endswith("\r") for line in lines)
    if crlf:
        key = (path.resolve(), path.stat().st_mtime)
        if key not in _reported_crlf:  # once per file, however often it is read
            _reported_crlf.add(key)
            log.warning("%s: %d of %d lines end in CRLF; read without the CR", path, crlf, len(lines))
        lines = [line.removesuffix("\r") for line in lines]
    return lines


def open_binary(path: str | Path) -> BinaryIO:
    """The raw bytes of a text file, decompressed when its name ends in ``.gz``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def decode_line(raw: bytes, path: Path, line_no: int) -> str:
    """One line (with or without its ``\\n``) as text, without the line ending; CRLF counts as one."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}: line {line_no} is not valid UTF-8") from None
    return text[:-1].removesuffix("\r") if text.endswith("\n") else text.removesuffix("\r")


def iter_lines(path: str | Path) -> Iterator[str]:
    """Stream the lines of a file as :func:`read_lines` reads them, never holding the whole file."""
    path = Path(path)
    try:
        with open_binary(path) as f:
            for line_no, raw in enumerate(f, 1):
                yield decode_line(raw, path, line_no)
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot be read ({e})") from None


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
