"""A statistical word aligner beside the attention: eflomal (Östling & Tiedemann, 2016), run in
both directions and symmetrised with grow-diag-final-and (Koehn et al., 2005).

It serves twice: as the baseline whose AER evaluation reports next to the attention's
(``eval.baseline=eflomal``), and as the teacher of guided alignment training
(:mod:`attnmt.train.guided`). It aligns whitespace-separated tokens: the words of the untouched text, as
in the gold files (:mod:`attnmt.align.links`), or a model's sentencepiece pieces (``units:
subwords``, :func:`piece_links`), whose links are mapped back to words where words are scored (a
word pair is linked when any of their pieces are). Pieces let it link the parts of a fused word to
different words (a verb ending to an auxiliary). Links are cached by content (the sentences and the
settings) in a corpus's cache folder, like its sentencepiece model: a second run on the same text
reads them back instead of running eflomal again.

eflomal is an optional dependency: ``pip install attnmt[align]`` (it builds with a C compiler).
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from pathlib import Path

from attnmt.align.links import Link, format_links, parse_links
from attnmt.data.io import read_lines
from attnmt.data.store import file_lock
from attnmt.data.subwords import word_ids
from attnmt.errors import ConfigError
from attnmt.utils.io import atomic_write_text

log = logging.getLogger(__name__)

UNITS = ("subwords", "words")
CACHE_VERSION = 1  # bump when the way links are made changes, so that old caches are not reused
_NEIGHBOURS = ((-1, 0), (0, -1), (1, 0), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1))


def grow_diag_final_and(forward: set[Link], reverse: set[Link]) -> set[Link]:
    """Koehn et al. (2005): start from the intersection of the two directions' links, grow it
    with union links next to an accepted link (diagonals included) that align a still-unaligned
    word, then add union links whose two words are both still unaligned (first forward's, then
    reverse's). Links are ``(source word, target word)``."""
    union = forward | reverse
    links = forward & reverse
    src_done = {i for i, _ in links}
    tgt_done = {j for _, j in links}

    def add(link: Link) -> None:
        links.add(link)
        src_done.add(link[0])
        tgt_done.add(link[1])

    grew = True
    while grew:
        grew = False
        for i, j in sorted(links):
            for di, dj in _NEIGHBOURS:
                new = (i + di, j + dj)
                if new in union and new not in links and (new[0] not in src_done or new[1] not in tgt_done):
                    add(new)
                    grew = True
    for direction in (forward, reverse):  # final-and
        for i, j in sorted(direction):
            if i not in src_done and j not in tgt_done:
                add((i, j))
    return links


def _content_key(sources: list[str], targets: list[str], settings: dict) -> str:
    digest = hashlib.sha256(repr((CACHE_VERSION, sorted(settings.items()))).encode())
    for s, t in zip(sources, targets):
        digest.update(s.encode())
        digest.update(b"\t")
        digest.update(t.encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def require_eflomal(key: str) -> None:
    """A one-line error naming the setting ``key`` that needs eflomal, where it is not installed."""
    import importlib.util

    if importlib.util.find_spec("eflomal") is None:
        raise ConfigError(f"{key} needs eflomal, which is not installed: "
                          "pip install 'attnmt[align]' (or pip install eflomal)")


def _run_eflomal(sources: list[str], targets: list[str], settings: dict) -> list[tuple[set[Link], set[Link]]]:
    import eflomal

    with tempfile.TemporaryDirectory(prefix="attnmt-eflomal-") as tmp:
        fwd, rev = Path(tmp) / "fwd", Path(tmp) / "rev"
        # One token per whitespace-separated word; eflomal counts a blank line as an empty sentence.
        aligner = eflomal.Aligner(**settings)
        aligner.align(
            [" ".join(s.split()) + "\n" for s in sources], [" ".join(t.split()) + "\n" for t in targets],
            links_filename_fwd=str(fwd), links_filename_rev=str(rev), quiet=True,
        )
        forward, reverse = read_lines(fwd), read_lines(rev)
    assert len(forward) == len(reverse) == len(sources), (len(forward), len(reverse), len(sources))
    return [(parse_links(f)[1], parse_links(r)[1]) for f, r in zip(forward, reverse)]


def eflomal_links(
    sources: list[str], targets: list[str], cache_dir: str | Path, model: int = 3, n_samplers: int = 3,
) -> list[set[Link]]:
    """Symmetrised eflomal links ``(source word, target word)`` of every line pair, computed once
    per content and cached in ``cache_dir`` (``eflomal-<hash>.align``, Pharaoh)."""
    if len(sources) != len(targets):
        raise ValueError(f"{len(sources)} source lines but {len(targets)} target lines")
    settings = {"model": model, "n_samplers": n_samplers}
    cache = Path(cache_dir)
    key = _content_key(sources, targets, settings)
    path = cache / f"eflomal-{key}.align"
    with file_lock(cache / f"eflomal-{key}.lock"):  # concurrent runs (DDP ranks) align once
        if path.is_file():
            log.info("eflomal links for %d sentence pairs read from %s", len(sources), path)
        else:
            log.info("Aligning %d sentence pairs with eflomal (both directions, grow-diag-final-and)", len(sources))
            pairs = _run_eflomal(sources, targets, settings)
            atomic_write_text(path, "".join(format_links(grow_diag_final_and(f, r)) + "\n" for f, r in pairs))
            log.info("eflomal links cached in %s", path)
    links = [parse_links(line, f"{path}, line {n}")[1] for n, line in enumerate(read_lines(path), 1)]
    if len(links) != len(sources):  # a truncated file: never trust it
        raise RuntimeError(f"{path}: {len(links)} lines for {len(sources)} sentence pairs; delete it to align again")
    return links


def piece_links(
    src_pieces: list[list[str]], tgt_pieces: list[list[str]], cache_dir: str | Path,
) -> list[set[Link]]:
    """:func:`eflomal_links` of sentences given as sentencepiece pieces: links ``(source piece,
    target piece)`` indexing the lists (cached like word links: the pieces are the text)."""
    return eflomal_links([" ".join(p) for p in src_pieces], [" ".join(p) for p in tgt_pieces], cache_dir)


def pieces_to_words(links: set[Link], src_pieces: list[str], tgt_pieces: list[str]) -> set[Link]:
    """Piece links as word links: a word pair is linked when any of their pieces are."""
    src_words, tgt_words = word_ids(src_pieces), word_ids(tgt_pieces)
    return {(src_words[i], tgt_words[j]) for i, j in links
            if src_words[i] is not None and tgt_words[j] is not None}
