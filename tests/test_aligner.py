"""The eflomal wrapper: grow-diag-final-and by hand, obvious links found, the cache reused, and
subword pieces aligned so that a fused word links both words it fuses."""

from __future__ import annotations

import random

import pytest

from attnmt.align.eflomal import eflomal_links, grow_diag_final_and, piece_links, pieces_to_words
from attnmt.align.links import alignment_error_rate


def test_grow_diag_final_and_by_hand():
    forward = {(0, 0), (1, 1), (2, 3)}
    reverse = {(0, 0), (1, 1), (1, 2), (3, 3)}
    # Intersection {0-0, 1-1}; grow: 1-2 (next to 1-1, target 2 unaligned), then 2-3 (diagonal
    # of 1-2, source 2 unaligned), then 3-3 (next to 2-3, source 3 unaligned).
    assert grow_diag_final_and(forward, reverse) == {(0, 0), (1, 1), (1, 2), (2, 3), (3, 3)}
    # final-and adds a union link only when both its words are still unaligned.
    assert grow_diag_final_and({(0, 0)}, {(0, 0), (5, 5), (0, 6)}) == {(0, 0), (5, 5)}
    assert grow_diag_final_and(set(), set()) == set()


def _corpus(n: int = 400, seed: int = 0):
    """Word-by-word translations (a made-up lexicon) with the two words of each adjacent pair
    swapped: the links are obvious, but not the diagonal."""
    rng = random.Random(seed)
    lexicon = {f"s{k}": f"T{k}" for k in range(30)}
    sources, targets, gold = [], [], []
    for _ in range(n):
        words = rng.sample(sorted(lexicon), rng.randint(2, 7))
        order = [k ^ 1 if (k ^ 1) < len(words) else k for k in range(len(words))]  # 1 0 3 2 ...
        sources.append(" ".join(words))
        targets.append(" ".join(lexicon[words[i]] for i in order))
        gold.append(({(i, j) for j, i in enumerate(order)},) * 2)
    return sources, targets, gold


def test_eflomal_aligns_obvious_links_and_reuses_its_cache(tmp_path, monkeypatch):
    pytest.importorskip("eflomal", reason="eflomal is not installed (pip install attnmt[align])")
    import attnmt.align.eflomal as aligner

    sources, targets, gold = _corpus()
    links = eflomal_links(sources, targets, tmp_path)
    assert alignment_error_rate(links, gold) < 0.02
    cached = list(tmp_path.glob("eflomal-*.align"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns

    def no_run(*args, **kwargs):
        raise AssertionError("eflomal ran again for text it had already aligned")

    monkeypatch.setattr(aligner, "_run_eflomal", no_run)
    assert eflomal_links(sources, targets, tmp_path) == links
    assert cached[0].stat().st_mtime_ns == mtime
    with pytest.raises(AssertionError, match="ran again"):  # other text: another key
        eflomal_links(sources[1:], targets[1:], tmp_path)


def test_piece_links_become_word_links_where_any_pieces_link():
    src = ["▁x", "y", "▁z", "</s>"]  # words xy, z
    tgt = ["▁a", "▁b", "c"]  # words a, bc
    assert pieces_to_words({(1, 0), (0, 0), (2, 2), (3, 1)}, src, tgt) == {(0, 0), (1, 1)}  # </s> dropped


def _many_to_one(gold) -> list[set]:
    """The sure links of target words that gold links to two or more source words."""
    return [{(i, j) for i, j in sure if sum(b == j for _, b in sure) > 1} for sure, _ in gold]


@pytest.mark.slow
def test_eflomal_on_pieces_links_the_words_a_fused_word_translates(tiny_datamodule, tmp_path):
    """The embedded corpus fuses ``will see`` into one target word whose ending is its own piece
    (``▁vid ta``): aligning pieces lets eflomal link both source words, which aligning words
    almost never does, and scores better overall."""
    pytest.importorskip("eflomal", reason="eflomal is not installed (pip install attnmt[align])")
    from attnmt.align.links import alignment_scores, read_gold
    from attnmt.data.io import iter_parallel, read_parallel

    dm, tok = tiny_datamodule, tiny_datamodule.tokenizer
    pairs = [p for files in dm.train_files() for p in iter_parallel(*files)]
    valid = list(zip(*read_parallel(*dm.split_files("valid"))))
    gold = read_gold(dm.alignment_file("valid"))
    sources, targets = [s for s, _ in pairs + valid], [t for _, t in pairs + valid]
    words = eflomal_links(sources, targets, tmp_path)[-len(valid):]
    src_pieces = [tok.src_pieces(ids) for ids in tok.encode_src(sources)]
    tgt_pieces = [tok.tgt_pieces(ids) for ids in tok.encode_tgt(targets)]
    by_piece = piece_links(src_pieces, tgt_pieces, tmp_path)[-len(valid):]
    pieces = [pieces_to_words(x, s, t) for x, s, t in zip(by_piece, src_pieces[-len(valid):], tgt_pieces[-len(valid):])]
    fused = _many_to_one(gold)
    hit = {name: sum(len(f & x) for f, x in zip(fused, links))
           for name, links in (("words", words), ("pieces", pieces))}
    total = sum(map(len, fused))
    scores = {"words": alignment_scores(words, gold), "pieces": alignment_scores(pieces, gold)}
    print(f"many-to-one links found of {total}: {hit}; {scores}")
    assert total > 50 and hit["pieces"] > 0.6 * total and hit["pieces"] > hit["words"] + 0.2 * total
    assert scores["pieces"]["aer"] < scores["words"]["aer"]
