"""The eflomal wrapper: grow-diag-final-and by hand, obvious links found, the cache reused."""

from __future__ import annotations

import random

import pytest

from attnmt.aligner import eflomal_links, grow_diag_final_and
from attnmt.alignment import alignment_error_rate


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
    import attnmt.aligner as aligner

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
