"""Ensembles (``ckpt=A,B``): one search over the members' averaged probabilities."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from attnmt.data.tokenizer import BOS_ID, EOS_ID
from attnmt.decode.ensemble import Ensemble
from attnmt.decode.search import beam_search, greedy_search
from attnmt.errors import ConfigError

from conftest import build_tiny_model

V = 40


def batch(sentences: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    src = torch.randint(4, V, (sentences, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(src, dtype=torch.bool)
    mask[sentences // 2 :, 4:] = False
    return src.masked_fill(~mask, 0), mask


def member(name: str, seed: int):
    torch.manual_seed(seed)
    model = build_tiny_model(name, V)
    with torch.no_grad():  # an untrained model's outputs are near uniform: make them decisive
        for p in model.parameters():
            p.mul_(3.0)
    return model.eval()


@pytest.mark.parametrize("name", ["rnn_bahdanau", "transformer"])
def test_an_ensemble_of_a_model_with_itself_is_the_model(name):
    model = member(name, 0)
    src, mask = batch()
    twice = Ensemble([model, model])
    for search in (lambda m: [[h] for h in greedy_search(m, src, mask, 1.5, 4, 0.6)],
                   lambda m: beam_search(m, src, mask, 4, 0.6, 1.5, 4, n_best=2)):
        single, both = search(model), search(twice)
        assert [[h.tokens for h in hs] for hs in both] == [[h.tokens for h in hs] for hs in single]
        for hs, gs in zip(both, single):
            assert [h.log_prob for h in hs] == pytest.approx([g.log_prob for g in gs], abs=1e-4)


def test_each_step_is_the_log_of_the_members_mean_probability_and_matches_the_full_pass():
    rnn, transformer = member("rnn_luong", 1), member("transformer", 2)  # mixed kinds, one vocabulary
    ensemble = Ensemble([rnn, transformer])
    src, mask = batch(4)
    tgt = torch.randint(4, V, (4, 6), generator=torch.Generator().manual_seed(3))
    tgt_in = torch.cat([torch.full((4, 1), BOS_ID), tgt], 1)
    with torch.no_grad():
        by_hand = torch.log((rnn(src, mask, tgt_in).softmax(-1) + transformer(src, mask, tgt_in).softmax(-1)) / 2)
        full = ensemble(src, mask, tgt_in)  # (B, T, V)
        assert torch.allclose(full, by_hand, atol=1e-5)
        assert torch.allclose(full.exp().sum(-1), torch.ones(4, 7), atol=1e-5)  # a distribution
        enc = ensemble.encode(src, mask)
        state = ensemble.init_state(enc)
        for t in range(tgt_in.size(1)):  # incremental decoding equals the teacher-forced pass
            step, state, _ = ensemble.decode_step(enc, state, tgt_in[:, t])
            assert torch.allclose(step, full[:, t], atol=1e-4), t


def test_an_ensemble_of_two_models_differs_from_both():
    from test_search import ToyModel, toy_batch  # peaked, unrelated next-token tables

    first, second = ToyModel(vocab_size=12, seed=1), ToyModel(vocab_size=12, seed=2)
    src, mask = toy_batch(12)
    outputs = {name: [h[0].tokens for h in beam_search(m, src, mask, 3, 0.6, 1.5, 4)]
               for name, m in (("first", first), ("second", second), ("both", Ensemble([first, second])))}
    assert outputs["both"] != outputs["first"] and outputs["both"] != outputs["second"]
    assert outputs["first"] != outputs["second"]


def test_the_named_member_gives_the_attention():
    rnn, transformer = member("rnn_bahdanau", 6), member("transformer", 7)
    src, mask = batch(2)
    tgt_in = torch.tensor([[BOS_ID, 5, 6, EOS_ID]] * 2)
    for index, own in ((0, rnn), (1, transformer)):
        ensemble = Ensemble([rnn, transformer], attention_member=index)
        with torch.no_grad():
            _, got = ensemble.decode(ensemble.encode(src, mask, need_attention=True), tgt_in, need_attention=True)
            _, expected = own.decode(own.encode(src, mask, need_attention=True), tgt_in, need_attention=True)
        assert got["cross"].shape == expected["cross"].shape and torch.equal(got["cross"], expected["cross"])


def test_members_with_different_tokenizers_are_refused_in_one_line(monkeypatch):
    from types import SimpleNamespace

    from attnmt.decode.backends import load_backend

    tokenizers = {name: SimpleNamespace(state=lambda name=name: {"proto": name}) for name in ("a.ckpt", "b.ckpt")}
    monkeypatch.setattr("attnmt.decode.checkpoint.load_for_decoding",
                        lambda path: (member("transformer", 0), tokenizers[str(path)], {"data": {}}, Path(path)))
    with pytest.raises(ConfigError, match=r"^ckpt: b.ckpt and a.ckpt have different sentencepiece models"):
        load_backend("a.ckpt,b.ckpt")
    with pytest.raises(ConfigError, match=r"^member=3: the ensemble has 2 members \(1..2\)$"):
        load_backend(["a.ckpt", "b.ckpt"], attention_member=3)


@pytest.mark.slow
def test_evaluate_decodes_an_ensemble_of_runs(trained_runs, tmp_path):
    from attnmt.eval.evaluate import evaluate

    from conftest import compose_config

    runs = trained_runs[1]
    rnn, transformer = runs["rnn_bahdanau"][1], runs["transformer"][1]
    results = {}
    for name, ckpt in (("single", f"{transformer}"), ("self", f"[{transformer},{transformer}]"),
                       ("mixed", f"[{rnn},{transformer}]")):
        out = tmp_path / name
        results[name] = evaluate(compose_config("evaluate", [
            f"ckpt={ckpt}", "decode.beam_size=3", "eval.num_plots=1", "eval.formats=[png]", "eval.member=2"], out))
        results[name]["lines"] = (out / "hypotheses.txt").read_text().splitlines()
    assert results["self"]["lines"] == results["single"]["lines"]
    assert results["mixed"]["lines"] != results["single"]["lines"]
    assert "," in results["mixed"]["checkpoint"] and math.isfinite(results["mixed"]["aer"])
    assert results["mixed"]["aer"] == pytest.approx(results["single"]["aer"], abs=1e-9)  # member 2's attention
