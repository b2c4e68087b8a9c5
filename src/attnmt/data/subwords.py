"""Sentencepiece pieces as words: which word each piece belongs to, the words they spell, and
attention between pieces merged to attention between words. Plain numpy: decoding an export and
serving it need neither torch nor the alignment code."""

from __future__ import annotations

import numpy as np

WORD_START = "\u2581"  # sentencepiece's "▁"
SPECIAL = {"<s>", "</s>", "<pad>"}


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
