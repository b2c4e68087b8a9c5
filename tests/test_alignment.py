"""Word alignments: Pharaoh parsing, AER against hand-computed values, subword-to-word merging."""

from __future__ import annotations

import numpy as np
import pytest

from attnmt.align.links import (
    alignment_error_rate,
    alignment_scores,
    format_links,
    hard_links,
    parse_links,
    read_gold,
)
from attnmt.data.subwords import merge_to_words, word_ids, words
from attnmt.errors import DataError


def test_parse_links_reads_sure_and_possible_formats():
    sure, possible = parse_links("0-0 1?2 3-4-P 5-6-S")
    assert sure == {(0, 0), (5, 6)}
    assert possible == {(0, 0), (1, 2), (3, 4), (5, 6)}
    assert parse_links("") == (set(), set())


def test_read_gold_error_names_file_and_line(tmp_path):
    path = tmp_path / "gold.align"
    path.write_text("0-0 1-1\n0-x\n")
    with pytest.raises(DataError, match=r"gold\.align, line 2: '0-x' is not an alignment link"):
        read_gold(path)


def test_read_gold_merges_a_separate_possible_file(tmp_path):
    (tmp_path / "sure").write_text("0-0\n1-1\n")
    (tmp_path / "possible").write_text("0-1\n\n")
    gold = read_gold(tmp_path / "sure", tmp_path / "possible")
    assert gold == [({(0, 0)}, {(0, 0), (0, 1)}), ({(1, 1)}, {(1, 1)})]
    (tmp_path / "short").write_text("0-1\n")
    with pytest.raises(DataError, match="short: 1 lines"):
        read_gold(tmp_path / "sure", tmp_path / "short")


def test_aer_hand_cases():
    gold = [({(0, 0), (1, 1)}, {(0, 0), (1, 1), (2, 1)})]
    assert alignment_error_rate([{(0, 0), (1, 1)}], gold) == 0.0  # perfect
    assert alignment_error_rate([{(0, 1), (1, 0)}], gold) == 1.0  # disjoint
    # A = {0-0, 2-1, 2-2}: |A&S| = 1, |A&P| = 2, |A| = 3, |S| = 2 -> 1 - 3/5
    assert alignment_error_rate([{(0, 0), (2, 1), (2, 2)}], gold) == pytest.approx(0.4)
    # Only possible links predicted, no sure gold: AER 0 (Och & Ney's definition).
    assert alignment_error_rate([{(2, 1)}], [(set(), {(2, 1)})]) == 0.0
    # Corpus-level: counts are summed over sentences, not AERs averaged.
    two = gold + [({(0, 0)}, {(0, 0)})]
    assert alignment_error_rate([{(0, 0), (2, 1), (2, 2)}, {(1, 0)}], two) == pytest.approx(1 - 3 / 7)


def test_precision_recall_and_the_one_link_recall_bound_by_hand():
    # Target word 1 has two sure links (0-1, 2-1), target word 0 one; 3-2 is possible only.
    gold = [({(0, 0), (0, 1), (2, 1)}, {(0, 0), (0, 1), (2, 1), (3, 2)})]
    # A = {0-0, 2-1, 3-2, 1-0}: |A&S| = 2, |A&P| = 3 -> precision 3/4, recall 2/3, AER 1 - 5/7.
    scores = alignment_scores([{(0, 0), (2, 1), (3, 2), (1, 0)}], gold)
    assert scores == {"precision": 75.0, "recall": 66.67, "aer": round(100 * (1 - 5 / 7), 2),
                      # two of three sure links can be reached with one link per target word
                      "recall_bound": 66.67}
    assert alignment_scores([set()], gold)["precision"] == 0.0


def test_aer_by_source_length_buckets_by_hand():
    from attnmt.eval.alignments import aer_by_length

    gold = [({(0, 0)}, {(0, 0)}), ({(1, 1)}, {(1, 1)}), ({(0, 0), (1, 1)}, {(0, 0), (1, 1)})]
    sources = ["a b", "c d e", " ".join("w" for _ in range(12))]
    links = [{(0, 0)}, {(0, 1)}, {(0, 0)}]  # right; wrong; one of two
    # 1-9 words: |A&S| = 1 of |A| = 2, |S| = 2 -> AER 1 - 2/4; 10-19: 1 - 2/3.
    assert aer_by_length(links, gold, sources, edges=(10, 20)) == [
        {"words": "1-9", "sentences": 2, "aer": 50.0},
        {"words": "10-19", "sentences": 1, "aer": round(100 / 3, 2)},
    ]


def test_subword_to_word_merge_by_hand():
    src = ["\u2581the", "\u2581hou", "se", "</s>"]  # words: the, house
    tgt = ["\u2581das", "\u2581Ha", "us", "</s>"]  # words: das, Haus
    assert word_ids(src) == [0, 1, 1, None]
    assert words(src) == ["the", "house"] and words(tgt) == ["das", "Haus"]
    weights = np.array([
        [0.7, 0.1, 0.1, 0.1],
        [0.1, 0.5, 0.3, 0.1],
        [0.0, 0.2, 0.6, 0.2],
        [0.0, 0.0, 0.0, 1.0],
    ])
    merged = merge_to_words(weights, word_ids(tgt), word_ids(src))
    # Rows: das = row 0; Haus = mean of rows 1 and 2. Columns: the = col 0; house = cols 1 + 2.
    expected = np.array([[0.7, 0.2], [0.05, 0.8]])
    np.testing.assert_allclose(merged, expected)
    assert hard_links(merged) == {(0, 0), (1, 1)}
    assert hard_links(merged, "threshold", 0.15) == {(0, 0), (1, 0), (1, 1)}
    assert format_links({(1, 1), (0, 0), (1, 0)}) == "0-0 1-0 1-1"


def test_word_ids_without_leading_marker_and_specials():
    assert word_ids(["<s>", "ab", "c", "\u2581d", "</s>"]) == [None, 0, 0, 1, None]
    assert words(["ab", "c", "\u2581d"]) == ["abc", "d"]
