"""Word alignments from attention, Pharaoh files and the alignment error rate.

Pharaoh format: one line per sentence pair, space-separated links ``i-j`` (0-based source word
``i``, target word ``j``; words are whitespace-separated tokens of the untouched text). Gold files
mark *sure* links ``i-j`` and *possible* links ``i?j`` (also accepted: ``i-j-S`` / ``i-j-P``, and a
separate file whose links are all possible). Every sure link is also possible.

AER (Och & Ney, 2003): ``1 - (|A & S| + |A & P|) / (|A| + |S|)``, summed over the corpus.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from attnmt.data.io import read_lines
from attnmt.errors import DataError

Link = tuple[int, int]  # (source word, target word)
WORD_START = "\u2581"  # sentencepiece's "▁"
SPECIAL = {"<s>", "</s>", "<pad>"}
_LINK = re.compile(r"^(\d+)([-?])(\d+)(?:-([SP]))?$")


def parse_links(line: str, where: str = "") -> tuple[set[Link], set[Link]]:
    """One Pharaoh line: ``(sure, possible)``, ``possible`` including ``sure``."""
    sure: set[Link] = set()
    possible: set[Link] = set()
    for token in line.split():
        m = _LINK.match(token)
        if m is None:
            raise DataError(f"{where}: {token!r} is not an alignment link (expected i-j, i?j, i-j-S or i-j-P)")
        link = (int(m.group(1)), int(m.group(3)))
        possible.add(link)
        if m.group(2) == "-" and m.group(4) != "P":
            sure.add(link)
    return sure, possible


def read_gold(path: str | Path, possible_path: str | Path | None = None) -> list[tuple[set[Link], set[Link]]]:
    """Gold ``(sure, possible)`` link sets per line of ``path`` (plus ``possible_path``'s links as
    possible, when given)."""
    lines = read_lines(path)
    gold = [parse_links(line, f"{path}, line {n}") for n, line in enumerate(lines, 1)]
    if possible_path is not None:
        extra = read_lines(possible_path)
        if len(extra) != len(gold):
            raise DataError(f"{possible_path}: {len(extra)} lines, but {path} has {len(gold)}")
        for n, (line, (_, possible)) in enumerate(zip(extra, gold), 1):
            possible |= parse_links(line, f"{possible_path}, line {n}")[1]
    return gold


def format_links(links: set[Link]) -> str:
    return " ".join(f"{i}-{j}" for i, j in sorted(links, key=lambda x: (x[1], x[0])))


def alignment_error_rate(hypothesis: list[set[Link]], gold: list[tuple[set[Link], set[Link]]]) -> float:
    """Corpus AER of predicted links against gold ``(sure, possible)`` sets, in [0, 1]."""
    if len(hypothesis) != len(gold):
        raise ValueError(f"{len(hypothesis)} predicted alignments but {len(gold)} gold ones")
    a_and_s = a_and_p = a = s = 0
    for links, (sure, possible) in zip(hypothesis, gold):
        a_and_s += len(links & sure)
        a_and_p += len(links & (possible | sure))
        a += len(links)
        s += len(sure)
    if a + s == 0:
        return 0.0
    return 1.0 - (a_and_s + a_and_p) / (a + s)


def word_ids(pieces: list[str]) -> list[int | None]:
    """The word each sentencepiece piece belongs to (``None`` for ``<s>``, ``</s>``, ``<pad>``).

    A piece starting with ``▁`` starts a new word; any other piece continues the current one.
    """
    out: list[int | None] = []
    word = -1
    for piece in pieces:
        if piece in SPECIAL:
            out.append(None)
            continue
        if piece.startswith(WORD_START) or word < 0:
            word += 1
        out.append(word)
    return out


def words(pieces: list[str]) -> list[str]:
    """The words spelled by ``pieces`` (special pieces dropped)."""
    out: list[str] = []
    for piece, w in zip(pieces, word_ids(pieces)):
        if w is None:
            continue
        if w == len(out):
            out.append("")
        out[w] += piece
    return [w.replace(WORD_START, "") or WORD_START for w in out]


def merge_to_words(weights: np.ndarray, row_words: list[int | None], col_words: list[int | None]) -> np.ndarray:
    """Subword attention ``(T, S)`` to word level ``(T_words, S_words)``: columns (attended words)
    are summed over their subwords, rows (attending words) averaged over theirs; rows and columns
    of special tokens are dropped."""
    n_rows = 1 + max((w for w in row_words if w is not None), default=-1)
    n_cols = 1 + max((w for w in col_words if w is not None), default=-1)
    rows = np.zeros((n_rows, len(row_words)), dtype=np.float64)
    for t, w in enumerate(row_words):
        if w is not None:
            rows[w, t] = 1.0
    rows /= np.maximum(rows.sum(1, keepdims=True), 1.0)
    cols = np.zeros((len(col_words), n_cols), dtype=np.float64)
    for s, w in enumerate(col_words):
        if w is not None:
            cols[s, w] = 1.0
    return rows @ weights.astype(np.float64) @ cols


def hard_links(word_weights: np.ndarray, method: str = "argmax", threshold: float = 0.5) -> set[Link]:
    """Links ``(source, target)`` from word-level cross-attention ``(T_words, S_words)``: each
    target word to its most attended source word (``argmax``), or every pair whose weight is at
    least ``threshold``."""
    T, S = word_weights.shape
    if T == 0 or S == 0:
        return set()
    if method == "argmax":
        return {(int(i), j) for j, i in enumerate(word_weights.argmax(1))}
    if method == "threshold":
        return {(int(i), int(j)) for j, i in zip(*np.nonzero(word_weights >= threshold))}
    raise ValueError(f"alignment method {method!r} is not one of argmax, threshold")
