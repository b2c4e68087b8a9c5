"""Word alignments read from an attention matrix, Pharaoh files and the alignment error rate (pure
functions over numpy arrays; :mod:`attnmt.decode.attention` runs a model to get the matrices).

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
from attnmt.data.subwords import merge_to_words, word_ids
from attnmt.errors import ConfigError, DataError

Link = tuple[int, int]  # (source word, target word)
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


def alignment_scores(hypothesis: list[set[Link]], gold: list[tuple[set[Link], set[Link]]]) -> dict[str, float]:
    """Corpus ``precision`` (|A∩P| / |A|), ``recall`` (|A∩S| / |S|) and ``aer`` in %, rounded as
    results.json reports them (Och & Ney 2003), and ``recall_bound``: the highest recall of one link
    per target word (argmax, shift), below 100 where gold links a target word to several source words."""
    if len(hypothesis) != len(gold):
        raise ValueError(f"{len(hypothesis)} predicted alignments but {len(gold)} gold ones")
    a_and_s = a_and_p = a = s = one = 0
    for links, (sure, possible) in zip(hypothesis, gold):
        a_and_s += len(links & sure)
        a_and_p += len(links & (possible | sure))
        a += len(links)
        s += len(sure)
        one += len({j for _, j in sure})
    return {
        "precision": round(100 * a_and_p / a, 2) if a else 0.0,
        "recall": round(100 * a_and_s / s, 2) if s else 0.0,
        "aer": round(100 * (1.0 - (a_and_s + a_and_p) / (a + s)), 2) if a + s else 0.0,
        "recall_bound": round(100 * one / s, 2) if s else 0.0,
    }


METHODS = ("argmax", "threshold", "shift")
WORD_LINKS = ("merged", "any")


def hard_links(word_weights: np.ndarray, method: str = "argmax", threshold: float = 0.5) -> set[Link]:
    """Links ``(source, target)`` from word-level cross-attention ``(T_words, S_words)``: each
    target word to its most attended source word (``argmax``, also used by ``shift`` once its rows
    are picked), or every pair whose weight is at least ``threshold``."""
    T, S = word_weights.shape
    if T == 0 or S == 0:
        return set()
    if method in ("argmax", "shift"):
        return {(int(i), j) for j, i in enumerate(word_weights.argmax(1))}
    if method == "threshold":
        return {(int(i), int(j)) for j, i in zip(*np.nonzero(word_weights >= threshold))}
    raise ValueError(f"alignment method {method!r} is not one of {', '.join(METHODS)}")


def sentence_links(
    weights: np.ndarray, tgt_pieces: list[str], src_pieces: list[str], method: str = "argmax", threshold: float = 0.5,
    word_links: str = "merged",
) -> set[Link]:
    """Word links of one sentence pair from its subword cross-attention ``(T + 1, S)``: row ``t``
    is the decoding step that reads ``tgt_in[t]`` (``<s>`` then the ``T`` target pieces), i.e. the
    step that emits target piece ``t`` (or ``</s>`` for ``t = T``).

    ``argmax`` / ``threshold`` score target piece ``t`` with row ``t`` (the weights while emitting
    it); ``shift`` (Chen et al., 2020, Shift-Att) with row ``t + 1``, the step where piece ``t`` is
    the decoder's input. Columns of ``</s>`` (and other special pieces) are dropped before any
    choice, so the source ``</s>`` is never a link target.

    ``word_links``: ``merged`` merges the attention to words first (:func:`merge_to_words`), so
    argmax gives one link per target word; ``any`` chooses between pieces (each target piece's
    argmax, or every piece pair over the threshold) and links a word pair when any of their pieces
    are linked (Zenkel et al., 2019; Garg et al., 2019), so a fused word's pieces can link
    different source words.
    """
    n = len(tgt_pieces)
    rows = (weights[1 : n + 1] if method == "shift" else weights[:n])[:, : len(src_pieces)]  # (T, S)
    tgt_words, src_words = word_ids(tgt_pieces), word_ids(src_pieces)
    if word_links == "merged":
        return hard_links(merge_to_words(rows, tgt_words, src_words), method, threshold)
    if word_links != "any":
        raise ValueError(f"word_links={word_links!r} is not one of {', '.join(WORD_LINKS)}")
    keep_t = [t for t, w in enumerate(tgt_words) if w is not None]
    keep_s = [s for s, w in enumerate(src_words) if w is not None]
    pieces = hard_links(rows[np.ix_(keep_t, keep_s)], method, threshold)  # (source piece, target piece)
    return {(src_words[keep_s[i]], tgt_words[keep_t[j]]) for i, j in pieces}


def layer_index(layer: int, num_layers: int, key: str = "eval.layer") -> int:
    """``layer`` (negative counts from the end) as an index, or a one-line error naming ``key``."""
    if not -num_layers <= layer < num_layers:
        raise ConfigError(f"{key}={layer} is out of range for a model with {num_layers} layers "
                          f"(0..{num_layers - 1}, or -1 for the last)")
    return layer % num_layers
