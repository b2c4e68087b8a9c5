"""Reading line-aligned parallel text, plain or gzip-compressed."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

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
