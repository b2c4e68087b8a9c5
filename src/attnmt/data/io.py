"""Reading line-aligned parallel text, plain or gzip-compressed."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

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


def open_binary(path: str | Path) -> BinaryIO:
    """The raw bytes of a text file, decompressed when its name ends in ``.gz``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def decode_line(raw: bytes, path: str | Path, line_no: int) -> str:
    """One line (with or without its ``\\n``) as text, without the line ending; CRLF counts as one."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}: line {line_no} is not valid UTF-8") from None
    return text[:-1].removesuffix("\r") if text.endswith("\n") else text.removesuffix("\r")


def decode_lines(raw_lines: Iterable[bytes], name: str | Path, crlf_warning: bool = False) -> Iterator[str]:
    """Lines of bytes (each with its ``\\n``, the last one perhaps without) as :func:`read_lines`
    reads them, one at a time: a bad line is a :class:`DataError` when it is reached. With
    ``crlf_warning``, how many lines ended in CRLF is logged once the last line has been read."""
    crlf = line_no = 0
    for line_no, raw in enumerate(raw_lines, 1):
        crlf += raw.endswith((b"\r\n", b"\r"))
        yield decode_line(raw, name, line_no)
    if crlf and crlf_warning:
        log.warning("%s: %d of %d lines end in CRLF; read without the CR", name, crlf, line_no)


def iter_lines(path: str | Path, crlf_warning: bool = False) -> Iterator[str]:
    """Stream the lines of a file as :func:`read_lines` reads them, never holding the whole file
    (:func:`decode_lines`)."""
    path = Path(path)
    try:
        with open_binary(path) as f:
            yield from decode_lines(f, path, crlf_warning)
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot be read ({e})") from None


def iter_stdin() -> Iterator[str]:
    """Stream standard input as :func:`read_stdin` reads it: each line as soon as it has arrived,
    the CRLF warning at its end."""
    return decode_lines(sys.stdin.buffer, "<stdin>", crlf_warning=True)


def iter_parallel(src_path: str | Path, tgt_path: str | Path) -> Iterator[tuple[str, str]]:
    """Stream the pairs of two line-aligned files, with :func:`read_parallel`'s checks and errors."""
    src_path, tgt_path = Path(src_path), Path(tgt_path)
    n_src = n_tgt = 0
    src_lines, tgt_lines = iter_lines(src_path), iter_lines(tgt_path)
    for s in src_lines:
        n_src += 1
        t = next(tgt_lines, None)
        if t is None:
            n_src += sum(1 for _ in src_lines)
            break
        n_tgt += 1
        yield s, t
    n_tgt += sum(1 for _ in tgt_lines)
    if n_src != n_tgt:
        raise DataError(
            f"{src_path} has {n_src} lines but {tgt_path} has {n_tgt}: parallel files must be line-aligned"
        )
    if not n_src:
        raise DataError(f"{src_path} and {tgt_path} are empty")


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


def file_digest(path: str | Path, cache_file: str | Path | None = None) -> str:
    """SHA-256 of a file's content. With ``cache_file`` (a small JSON file), a digest is computed
    once and reused while the file's size and modification time are unchanged."""
    path = Path(path).resolve()
    stat = path.stat()
    known: dict = {}
    if cache_file is not None and Path(cache_file).is_file():
        try:
            known = json.loads(Path(cache_file).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            known = {}  # a damaged cache only costs a re-hash
    entry = known.get(str(path))
    if isinstance(entry, dict) and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
        return entry["sha256"]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    if cache_file is not None:
        from attnmt.utils.io import atomic_write_text

        known[str(path)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
        atomic_write_text(cache_file, json.dumps(known, indent=1, sort_keys=True))
    return digest
