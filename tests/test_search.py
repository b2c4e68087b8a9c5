"""Beam search against greedy decoding and teacher-forced scoring, on briefly trained models."""

from __future__ import annotations

import math

import pytest
import torch

from attnmt.checkpoint import load_for_decoding
from attnmt.data.dataset import encode_for_eval
from attnmt.data.io import read_parallel
from attnmt.search import beam_search, greedy_search, length_penalty, max_output_lengths, score_hypotheses

from conftest import MODELS

N = 100


@pytest.fixture(scope="module", params=MODELS)
def trained(request, trained_runs, tiny_data_dir):
    model, tokenizer, _, _ = load_for_decoding(trained_runs[1][request.param][1])
    sources, _ = read_parallel(tiny_data_dir / "test.en", tiny_data_dir / "test.syn")
    dataset = encode_for_eval(tokenizer, sources[:N])
    return model, dataset.collate(list(range(N)))


@pytest.mark.slow
def test_beam_one_equals_greedy(trained):
    model, batch = trained
    greedy = greedy_search(model, batch["src"], batch["src_mask"])
    beam = beam_search(model, batch["src"], batch["src_mask"], beam_size=1)
    assert [b[0].tokens for b in beam] == [g.tokens for g in greedy]
    for b, g in zip(beam, greedy):
        assert b[0].log_prob == pytest.approx(g.log_prob, abs=1e-4)


@pytest.mark.slow
def test_beam_scores_are_the_models_and_never_below_greedy(trained):
    model, batch = trained
    src, mask = batch["src"], batch["src_mask"]
    greedy = [g.tokens for g in greedy_search(model, src, mask)]
    beam = [h[0] for h in beam_search(model, src, mask, beam_size=5, alpha=0.0)]
    greedy_scores = score_hypotheses(model, src, mask, greedy)
    beam_scores = score_hypotheses(model, src, mask, [h.tokens for h in beam])
    for h, rescored in zip(beam, beam_scores):
        assert h.log_prob == pytest.approx(rescored, abs=1e-3)  # the search's sum is the model's
    assert all(b >= g - 1e-4 for b, g in zip(beam_scores, greedy_scores))
    # ... and the beams do the work: many sentences get a strictly more probable translation.
    assert sum(b > g + 1e-3 for b, g in zip(beam_scores, greedy_scores)) >= N // 5


@pytest.mark.slow
def test_n_best_is_sorted_distinct_and_length_normalised(trained):
    model, batch = trained
    alpha = 0.6
    nbest = beam_search(model, batch["src"], batch["src_mask"], beam_size=5, alpha=alpha, n_best=5)
    for hyps in nbest:
        assert len(hyps) == 5
        assert len({tuple(h.tokens) for h in hyps}) == 5
        assert all(a.score >= b.score for a, b in zip(hyps, hyps[1:]))
        for h in hyps:
            assert h.score == pytest.approx(h.log_prob / length_penalty(len(h.tokens) + 1, alpha))


@pytest.mark.slow
def test_batched_beam_search_equals_one_sentence_at_a_time(trained):
    model, batch = trained
    batched = beam_search(model, batch["src"], batch["src_mask"], beam_size=4, alpha=0.6, n_best=2)
    for i in range(0, N, 7):
        length = int(batch["src_mask"][i].sum())
        single = beam_search(
            model, batch["src"][i : i + 1, :length], batch["src_mask"][i : i + 1, :length],
            beam_size=4, alpha=0.6, n_best=2,
        )[0]
        assert [h.tokens for h in single] == [h.tokens for h in batched[i]]
        for a, b in zip(single, batched[i]):
            assert a.score == pytest.approx(b.score, abs=1e-4)


@pytest.mark.slow
def test_output_length_cap_is_respected(trained):
    model, batch = trained
    cap = max_output_lengths(batch["src_mask"], 0.2, 1).tolist()
    for search in (
        lambda: [[h] for h in greedy_search(model, batch["src"], batch["src_mask"], 0.2, 1)],
        lambda: beam_search(model, batch["src"], batch["src_mask"], 3, 0.0, 0.2, 1, n_best=3),
    ):
        for hyps, limit in zip(search(), cap):
            assert hyps and all(len(h.tokens) <= limit and math.isfinite(h.score) for h in hyps)


def test_beam_search_rejects_bad_sizes():
    with pytest.raises(ValueError, match="n_best"):
        beam_search(None, torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.bool), 2, n_best=3)
