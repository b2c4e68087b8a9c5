"""The prepared token store: a training corpus encoded once, kept as flat token arrays on disk,
and read with ``numpy.memmap`` by every run, rank and DataLoader worker.

A store is a folder ``store-<key>`` holding, per side (``src``, ``tgt``):

- ``<side>.tokens``: every kept sentence's subword ids, back to back, without ``<s>``/``</s>``
  (uint16 when the vocabulary has at most 65,536 pieces, else uint32);
- ``<side>.lengths``: each sentence's number of ids;
- ``<side>.offsets``: int64, where each sentence starts in ``<side>.tokens`` (one more entry than
  sentences: the last is the total);

and ``meta.json`` (format version, dtypes, sizes, filter counts), written last. ``<key>`` is a hash
of the corpus files' content, the sentencepiece models, every setting that changes the tokens or
the filter, and :data:`FORMAT_VERSION`. The folder is written under a temporary name and renamed
into place when complete, so an interrupted preparation leaves nothing a later run would use. A
file lock next to it makes concurrent runs (ranks of a multi-node job, two jobs on one corpus)
wait for the one that prepares it instead of preparing it twice.

Because the pages of a memmap belong to the OS page cache, all processes on a machine share one
copy; a process's own memory holds only the length arrays and the batch plan.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import logging
import mmap
import multiprocessing
import os
import shutil
import sys
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np

from attnmt.data.io import decode_line, file_digest, open_binary
from attnmt.data.tokenizer import Tokenizer
from attnmt.errors import DataError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SIDES = ("src", "tgt")
CHUNK_PAIRS = 20_000  # pairs per unit of work sent to an encoding process
# An encoding process is started only for at least this many chunks of its own: starting one costs
# about as much as encoding a chunk or two, so a smaller corpus is encoded faster in this process.
CHUNKS_PER_PROCESS = 4


class InvalidStore(Exception):
    """A store folder that must not be read (incomplete, truncated, unknown format)."""


class TokenStore:
    """An opened store. ``tokens[side]``, ``offsets[side]`` and ``lengths[side]`` are memmaps."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.meta = json.loads((self.path / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise InvalidStore(f"{self.path}: no readable meta.json ({e})") from None
        if self.meta.get("format") != FORMAT_VERSION:
            raise InvalidStore(f"{self.path}: format {self.meta.get('format')!r}, this version reads {FORMAT_VERSION}")
        self.num_pairs = int(self.meta["pairs"])
        self.tokens: dict[str, np.ndarray] = {}
        self.offsets: dict[str, np.ndarray] = {}
        self.lengths: dict[str, np.ndarray] = {}
        for side in SIDES:
            counts = {"tokens": self.meta["tokens"][side], "lengths": self.num_pairs, "offsets": self.num_pairs + 1}
            dtypes = {"tokens": self.meta["token_dtype"], "lengths": self.meta["length_dtype"], "offsets": "int64"}
            for kind, count in counts.items():
                file = self.path / f"{side}.{kind}"
                dtype = np.dtype(dtypes[kind])
                size = file.stat().st_size if file.is_file() else None
                if size != count * dtype.itemsize:
                    raise InvalidStore(f"{file}: {size} bytes, expected {count * dtype.itemsize}")
                array = np.memmap(file, dtype=dtype, mode="r", shape=(count,)) if count else np.zeros(0, dtype)
                if count and kind != "lengths":
                    # Batches read a few hundred scattered sentences: no readahead around them.
                    _madvise(array, "MADV_RANDOM")
                getattr(self, kind)[side] = array

    def release(self, kinds: tuple[str, ...] = ("tokens", "offsets")) -> None:
        """Unmap the pages of these files that this process touched. They stay in the page cache
        (the next read finds them there), but no longer count in the process's resident set,
        which would otherwise grow towards the size of the store as batches touch more of it
        (~50 MB a batch on a 10M-pair store, through the kernel's fault-around). Takes ~2 ms."""
        for kind in kinds:
            for array in getattr(self, kind).values():
                _madvise(array, "MADV_DONTNEED")

    @property
    def stats(self) -> dict[str, int]:
        return dict(self.meta["stats"])

    # A DataLoader worker started by spawn gets the path and maps the files itself.
    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])


def _madvise(array: np.ndarray, advice: str) -> None:
    """Advise the kernel about a memmap's pages, where the platform and numpy allow it."""
    mapping = getattr(array, "_mmap", None)  # numpy keeps the mmap.mmap of a memmap here
    if mapping is not None and hasattr(mmap, advice):
        mapping.madvise(getattr(mmap, advice))


def store_key(src_file: Path, tgt_file: Path, tokenizer: Tokenizer, settings: dict, digests: Path) -> str:
    material = {
        "format": FORMAT_VERSION,
        "files": [file_digest(src_file, digests), file_digest(tgt_file, digests)],
        "spm": [hashlib.sha256(tokenizer.src_proto).hexdigest(), hashlib.sha256(tokenizer.tgt_proto).hexdigest()],
        "settings": settings,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if needed), released when the block ends. Where
    the filesystem has no locks (Lustre without ``-o flock``), the block runs unlocked: two
    processes may then both prepare a store, and the atomic rename keeps one complete copy."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX)
        except OSError as e:
            log.warning("%s: no file lock on this filesystem (%s); going on without one", path, e)
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def open_or_build(
    cache_root: Path,
    src_file: Path,
    tgt_file: Path,
    tokenizer: Tokenizer,
    max_len: int,
    max_len_ratio: float | None = None,
    num_proc: int | None = None,
) -> TokenStore:
    """The store of a corpus under ``cache_root``: opened when a complete one exists, else prepared
    (a damaged one is rebuilt with a warning)."""
    cache_root = Path(cache_root)
    cache_root.mkdir(parents=True, exist_ok=True)
    settings = {"max_len": max_len, "max_len_ratio": max_len_ratio}
    key = store_key(src_file, tgt_file, tokenizer, settings, cache_root / "digests.json")
    final = cache_root / f"store-{key}"
    with file_lock(cache_root / f"store-{key}.lock"):
        if final.exists():
            try:
                store = TokenStore(final)
                log.info("Reusing token store %s (%d pairs)", final, store.num_pairs)
                return store
            except InvalidStore as e:
                log.warning("Token store %s cannot be used (%s): preparing it again", final, e)
                shutil.rmtree(final)
        tmp = cache_root / f".tmp-store-{key}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            build_store(tmp, src_file, tgt_file, tokenizer, max_len, max_len_ratio, num_proc)
            try:
                os.rename(tmp, final)
            except OSError:  # another process, unlocked, finished first: its copy is as good
                if not final.is_dir():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return TokenStore(final)


# -- preparation ----------------------------------------------------------------------------------
_worker: dict = {}


def _worker_context() -> multiprocessing.context.BaseContext:
    """Encoding workers start from a forkserver that has imported only this module (numpy and
    sentencepiece, once per process): forking the caller itself is unsafe once it runs threads (a
    logger's upload thread, a progress bar's monitor), since a lock one of them holds at the fork
    stays locked forever in the child."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


@contextmanager
def _workers_skip_main() -> Iterator[None]:
    """While workers start: hide the main script from multiprocessing, which would otherwise import
    it again in every worker (``train.py`` imports Lightning: seconds each, all of them competing
    for the cores). The workers need only this module."""
    main = sys.modules["__main__"]
    saved = {k: main.__dict__.pop(k) for k in ("__file__", "__spec__") if k in main.__dict__}
    main.__spec__ = None
    try:
        yield
    finally:
        del main.__spec__
        main.__dict__.update(saved)


def estimated_pairs(src_file: Path, sample_bytes: int = 1 << 20) -> int:
    """The number of lines of ``src_file``, counted in its first ``sample_bytes`` (decompressed)
    and scaled by the file's size; exact for a file shorter than that."""
    with open_binary(src_file) as f:
        sample = f.read(sample_bytes)
        at_end = not f.read(1)
        position = _compressed_position(f) if src_file.suffix == ".gz" else len(sample)
    lines = sample.count(b"\n") + (1 if sample and not sample.endswith(b"\n") and at_end else 0)
    if at_end or not position:
        return lines
    return int(lines * src_file.stat().st_size / position)


def pool_size(asked: int | None, src_file: Path) -> tuple[int, str]:
    """How many encoding processes to use for ``src_file`` when ``asked`` (None: every core), and
    why: never more than the cores, nor more than the corpus keeps busy; 1 means this process
    alone (no pool)."""
    cores = len(os.sched_getaffinity(0))
    asked = asked or cores
    chunks = -(-estimated_pairs(src_file) // CHUNK_PAIRS)
    size = max(1, min(asked, cores, chunks // CHUNKS_PER_PROCESS))
    if size == asked:
        return size, "as asked"
    if size == min(asked, cores):
        return size, f"{cores} cores"
    return size, f"about {chunks} chunks of {CHUNK_PAIRS:,} pairs: at most one process per {CHUNKS_PER_PROCESS}"


def _init_worker(src_proto: bytes, tgt_proto: bytes | None, config: dict) -> None:
    _worker["tokenizer"] = Tokenizer(src_proto, tgt_proto)
    _worker.update(config)


def _decode_lines(raw: bytes, path: Path, first_line: int) -> tuple[list[str], int]:
    """The lines of a chunk as :func:`~attnmt.data.io.read_lines` gives them, and how many ended in
    CRLF. The chunk is decoded at once; only one with invalid UTF-8 is decoded line by line, to
    name the line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        for i, line in enumerate(raw.split(b"\n")):
            decode_line(line, path, first_line + i)  # raises, naming the first bad line
        raise AssertionError("a chunk that fails to decode has a line that fails") from None
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    crlf = 0
    if "\r" in text:
        crlf = sum(line.endswith("\r") for line in lines)
        lines = [line.removesuffix("\r") for line in lines]
    return lines, crlf


def _encode_chunk(chunk: tuple[int, bytes, bytes]) -> dict:
    """Decode, encode and filter one chunk of pairs (in an encoding process)."""
    first_line, src_raw, tgt_raw = chunk
    tok, max_len, ratio = _worker["tokenizer"], _worker["max_len"], _worker["max_len_ratio"]
    (src, src_crlf), (tgt, tgt_crlf) = (
        _decode_lines(raw, _worker[f"{side}_file"], first_line) for side, raw in (("src", src_raw), ("tgt", tgt_raw))
    )
    crlf = [src_crlf, tgt_crlf]
    threads = _worker["threads"]
    src_ids, tgt_ids = tok.encode_src(src, num_threads=threads), tok.encode_tgt(tgt, num_threads=threads)
    n = len(src)
    src_len = np.fromiter(map(len, src_ids), np.int64, n)
    tgt_len = np.fromiter(map(len, tgt_ids), np.int64, n)
    # A line is blank when str.strip() leaves nothing: empty, or whitespace only.
    blank = (src_len == 0) | (tgt_len == 0)
    for lines in (src, tgt):
        blank |= np.fromiter(map(len, lines), np.int64, n) == 0
        blank |= np.fromiter(map(str.isspace, lines), bool, n)
    too_long = ~blank & ((src_len > max_len) | (tgt_len > max_len))
    dropped = blank | too_long
    uneven = np.zeros(n, bool)
    if ratio is not None:
        uneven = ~dropped & (np.maximum(src_len, tgt_len) > ratio * np.minimum(src_len, tgt_len))
        dropped |= uneven
    keep = ~dropped
    dtype = _worker["token_dtype"]
    out = {
        "pairs": n, "blank": int(blank.sum()), "too_long": int(too_long.sum()), "uneven": int(uneven.sum()),
        "crlf": crlf,
    }
    for side, ids, lengths in (("src", src_ids, src_len), ("tgt", tgt_ids, tgt_len)):
        kept_lengths = lengths[keep]
        out[f"{side}_tokens"] = np.fromiter(
            itertools.chain.from_iterable(itertools.compress(ids, keep)), dtype, int(kept_lengths.sum())
        ).tobytes()
        out[f"{side}_lengths"] = kept_lengths
    return out


def _read_chunks(
    src_file: Path, tgt_file: Path, src_f: BinaryIO, tgt_f: BinaryIO
) -> Iterator[tuple[int, bytes, bytes]]:
    """Line-aligned chunks of raw text (whole lines, joined: one object to send to a process, not
    thousands), with the 1-based number of each chunk's first line."""
    line = 1
    try:
        while True:
            src = list(itertools.islice(src_f, CHUNK_PAIRS))
            tgt = list(itertools.islice(tgt_f, CHUNK_PAIRS))
            if len(src) != len(tgt):
                n_src = line - 1 + len(src) + sum(1 for _ in src_f)
                n_tgt = line - 1 + len(tgt) + sum(1 for _ in tgt_f)
                raise DataError(
                    f"{src_file} has {n_src} lines but {tgt_file} has {n_tgt}: parallel files must be line-aligned"
                )
            if not src:
                break
            yield line, b"".join(src), b"".join(tgt)
            line += len(src)
    except (OSError, EOFError) as e:
        raise DataError(f"{src_file}, {tgt_file}: cannot be read ({e})") from None
    if line == 1:
        raise DataError(f"{src_file} and {tgt_file} are empty")


def _compressed_position(f: BinaryIO) -> int:
    raw = getattr(f, "fileobj", f)  # a GzipFile's compressed stream
    try:
        return raw.tell()
    except (OSError, ValueError):
        return 0


def token_dtype_for(vocab_size: int) -> np.dtype:
    """The smallest unsigned type that holds every id of a vocabulary."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def build_store(
    folder: Path,
    src_file: Path,
    tgt_file: Path,
    tokenizer: Tokenizer,
    max_len: int,
    max_len_ratio: float | None = None,
    num_proc: int | None = None,
) -> dict:
    """Stream, encode (in up to ``num_proc`` processes, see :func:`pool_size`), filter and write a corpus
    into ``folder``; returns the filter counts. ``meta.json`` is written last."""
    from tqdm.auto import tqdm

    asked = num_proc
    num_proc, why = pool_size(asked, src_file)
    if num_proc != (asked or num_proc):
        log.info("Encoding %s in %d process%s (data.num_proc=%s; %s)", src_file.name, num_proc,
                 "" if num_proc == 1 else "es", asked, why)
    token_dtype = token_dtype_for(max(tokenizer.src_vocab_size, tokenizer.tgt_vocab_size))
    length_dtype = np.dtype(np.uint16 if max_len < 1 << 16 else np.uint32)
    config = {
        "max_len": max_len, "max_len_ratio": max_len_ratio, "token_dtype": token_dtype,
        "src_file": src_file, "tgt_file": tgt_file, "threads": 1 if num_proc > 1 else None,
    }
    folder.mkdir(parents=True)
    counts = {"pairs": 0, "blank": 0, "too_long": 0, "uneven": 0}
    crlf = [0, 0]
    totals = {side: 0 for side in SIDES}
    files = {
        f"{side}_{kind}": open(folder / f"{side}.{kind}", "wb")
        for side in SIDES for kind in ("tokens", "lengths", "offsets")
    }
    for side in SIDES:
        files[f"{side}_offsets"].write(np.zeros(1, np.int64).tobytes())
    start = time.perf_counter()

    def write(result: dict) -> None:
        for key in counts:
            counts[key] += result[key]
        crlf[0] += result["crlf"][0]
        crlf[1] += result["crlf"][1]
        for side in SIDES:
            lengths = result[f"{side}_lengths"]
            files[f"{side}_tokens"].write(result[f"{side}_tokens"])
            files[f"{side}_lengths"].write(lengths.astype(length_dtype).tobytes())
            files[f"{side}_offsets"].write((totals[side] + np.cumsum(lengths)).astype(np.int64).tobytes())
            totals[side] += int(lengths.sum())
        bar.update(_compressed_position(src_f) - bar.n)
        bar.set_postfix_str(f"{counts['pairs'] / (time.perf_counter() - start):,.0f} pairs/s", refresh=False)

    with open_binary(src_file) as src_f, open_binary(tgt_file) as tgt_f, tqdm(
        total=src_file.stat().st_size, unit="B", unit_scale=True, delay=3, desc=f"Preparing {src_file.name}",
    ) as bar:
        try:
            chunks = _read_chunks(src_file, tgt_file, src_f, tgt_f)
            init_args = (tokenizer.src_proto, None if tokenizer.joint else tokenizer.tgt_proto, config)
            if num_proc <= 1:
                _init_worker(*init_args)
                for chunk in chunks:
                    write(_encode_chunk(chunk))
            else:
                with _workers_skip_main():
                    pool = _worker_context().Pool(num_proc, _init_worker, init_args)
                with pool:
                    pending: deque = deque()
                    for chunk in chunks:  # in order, with a bounded number of chunks in flight
                        pending.append(pool.apply_async(_encode_chunk, (chunk,)))
                        if len(pending) > 2 * num_proc:
                            write(pending.popleft().get())
                    while pending:
                        write(pending.popleft().get())
        finally:
            for f in files.values():
                f.close()
    seconds = time.perf_counter() - start
    for path, n in ((src_file, crlf[0]), (tgt_file, crlf[1])):
        if n:
            log.warning("%s: %d of %d lines end in CRLF; read without the CR", path, n, counts["pairs"])
    kept = counts["pairs"] - counts["blank"] - counts["too_long"] - counts["uneven"]
    stats = {"pairs": counts["pairs"], "kept": kept, "blank": counts["blank"], "too_long": counts["too_long"]}
    if max_len_ratio is not None:
        stats["uneven"] = counts["uneven"]
    log.info(
        "Prepared %s, %s in %.1f s (%.0f pairs/s, %d process%s): %d pairs kept of %d; dropped %d blank or "
        "whitespace-only, %d longer than data.max_len=%d subwords%s",
        src_file, tgt_file, seconds, counts["pairs"] / max(seconds, 1e-9), num_proc, "" if num_proc == 1 else "es",
        kept, counts["pairs"],
        counts["blank"], counts["too_long"], max_len,
        f", {counts['uneven']} with a length ratio over data.max_len_ratio={max_len_ratio}" if max_len_ratio else "",
    )
    if not kept:
        raise DataError(
            f"{src_file}, {tgt_file}: no training pair left after dropping blank pairs and pairs "
            f"longer than data.max_len={max_len} subwords"
        )
    meta = {
        "format": FORMAT_VERSION, "pairs": kept, "tokens": totals, "token_dtype": token_dtype.name,
        "length_dtype": length_dtype.name, "stats": stats, "sources": [str(src_file), str(tgt_file)],
        "settings": {"max_len": max_len, "max_len_ratio": max_len_ratio}, "seconds": round(seconds, 1),
    }
    (folder / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return stats
