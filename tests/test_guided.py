"""Guided alignment: word links to subword targets, the loss and its gradient, and a short run
on the embedded corpus whose attention aligns better than an unguided run's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnmt.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from attnmt.train.guided import GuidedAlignment, _key, guided_alignment_loss, subword_links


def test_word_links_become_subword_pairs():
    src = ["▁x", "y", "▁z", "</s>"]  # words xy, z
    tgt = ["▁a", "▁b", "c"]  # words a, bc
    pairs = subword_links({(0, 1), (1, 0), (7, 0)}, src, tgt)  # 7: no such source word, dropped
    assert pairs.tolist() == [[0, 2], [1, 0], [1, 1], [2, 0], [2, 1]]


def _batch():
    """Two pairs: ids 10.. are pieces; the second pair is not in the link table."""
    src = torch.tensor([[10, 11, 12, EOS_ID], [10, EOS_ID, PAD_ID, PAD_ID]])
    tgt = torch.tensor([[BOS_ID, 20, 21, EOS_ID], [BOS_ID, 20, EOS_ID, PAD_ID]])
    return {"src": src, "src_mask": src != PAD_ID, "tgt_in": tgt[:, :-1], "tgt_out": tgt[:, 1:]}


def test_target_rows_spread_each_link_over_its_source_pieces():
    guided = GuidedAlignment(weight=0.05)
    guided.links = {_key([10, 11, 12], [20, 21]): np.array([[0, 0], [0, 1], [1, 2]], dtype=np.int32)}
    target = guided.target(_batch())  # (2, 3, 4)
    expected = torch.zeros(2, 3, 4)
    expected[0, 0, :2] = 0.5
    expected[0, 1, 2] = 1.0
    assert torch.equal(target, expected)  # </s> rows, padding and unknown pairs: unsupervised


def test_loss_is_zero_at_the_target_and_its_gradient_moves_attention_toward_the_links():
    target = torch.zeros(2, 3, 4)
    target[0, 0, :2] = 0.5
    target[0, 1, 2] = 1.0
    target[1, 2, 3] = 1.0
    kl, rows = guided_alignment_loss(target.clone(), target)
    assert kl.item() == 0.0 and rows.item() == 3

    torch.manual_seed(0)
    scores = torch.randn(2, 3, 4, requires_grad=True)
    kl, _ = guided_alignment_loss(torch.softmax(scores, -1), target)
    assert kl.item() > 0
    kl.backward()
    before = torch.softmax(scores, -1).detach()
    after = torch.softmax(scores - 0.5 * scores.grad, -1)
    supervised = target.sum(-1) > 0
    on_links = lambda a: (a * (target > 0)).sum(-1)  # noqa: E731 (attention mass on linked pieces)
    assert (on_links(after)[supervised] > on_links(before)[supervised]).all()
    assert torch.equal(scores.grad[~supervised], torch.zeros_like(scores.grad[~supervised]))


def test_heads_beyond_the_model_are_refused():
    from attnmt.errors import ConfigError

    from conftest import build_tiny_model

    guided = GuidedAlignment(weight=0.05, heads=2)
    guided.links = {}
    with pytest.raises(ConfigError, match="task.guided_alignment.heads=2"):
        guided.forward(build_tiny_model("rnn_bahdanau", vocab_size=30), _batch())


def test_teacher_links_come_from_pieces_or_from_words(tiny_datamodule, tmp_path, monkeypatch):
    """``units: subwords`` gives eflomal the model's pieces and keeps its piece links as the
    positions; ``units: words`` gives it words and maps each link to all pieces of both words."""
    import attnmt.train.guided as guided_module
    from attnmt.errors import ConfigError

    tok = tiny_datamodule.tokenizer
    src, tgt = tmp_path / "train.en", tmp_path / "train.syn"
    src.write_text("the cats will see a dog\n")
    tgt.write_text("ka dasi ri konta na\n")
    s_ids, t_ids = tok.encode_src([src.read_text().strip()])[0], tok.encode_tgt([tgt.read_text().strip()])[0]
    s_pieces, t_pieces = tok.src_pieces(s_ids), tok.tgt_pieces(t_ids)
    seen = {}

    def fake_piece_links(src_pieces, tgt_pieces, cache_dir):
        seen["pieces"] = (src_pieces, tgt_pieces)
        return [{(0, 0), (len(s_pieces) - 1, len(t_pieces) - 1)}]

    def fake_word_links(sources, targets, cache_dir):
        seen["words"] = (sources, targets)
        return [{(1, 1)}]  # cats -> dasi

    monkeypatch.setattr(guided_module, "piece_links", fake_piece_links)
    monkeypatch.setattr(guided_module, "eflomal_links", fake_word_links)
    monkeypatch.setattr(guided_module, "require_eflomal", lambda key: None)

    by_pieces = GuidedAlignment(weight=0.5)  # units: subwords by default
    by_pieces.prepare([(src, tgt)], tok, tmp_path)
    assert seen["pieces"] == ([s_pieces], [t_pieces])
    assert by_pieces.links[_key(s_ids, t_ids)].tolist() == [[0, 0], [len(t_pieces) - 1, len(s_pieces) - 1]]

    by_words = GuidedAlignment(weight=0.5, units="words")
    by_words.prepare([(src, tgt)], tok, tmp_path)
    assert seen["words"] == (["the cats will see a dog"], ["ka dasi ri konta na"])
    assert by_words.links[_key(s_ids, t_ids)].tolist() == subword_links({(1, 1)}, s_pieces, t_pieces).tolist()

    with pytest.raises(ConfigError, match="task.guided_alignment.units='letters' must be one of subwords, words"):
        GuidedAlignment(weight=0.5, units="letters")


def test_full_context_reads_the_whole_target_and_only_a_transformer_has_it():
    """Garg et al.'s full target context: with the future mask lifted, row t's cross-attention
    changes when a later target token does (it stays put in the causal pass); padding is never
    read; the translation logits of the guided forward stay the causal ones; an RNN refuses."""
    from attnmt.errors import ConfigError

    from conftest import build_tiny_model

    torch.manual_seed(0)
    model = build_tiny_model("transformer", vocab_size=30).eval()
    batch = _batch()
    enc = model.encode(batch["src"], batch["src_mask"])
    later = batch["tgt_in"].clone()
    later[:, -1] = (later[:, -1] + 1 - 4) % 26 + 4  # another real token in the last position
    rows = slice(0, later.size(1) - 1)
    for full, moves in ((False, False), (True, True)):
        a = model.decode(enc, batch["tgt_in"], need_attention=True, full_context=full)[1]["cross"][:, :, :, rows]
        b = model.decode(enc, later, need_attention=True, full_context=full)[1]["cross"][:, :, :, rows]
        assert torch.allclose(a, b) != moves
    padded = torch.cat([batch["tgt_in"], torch.full((2, 3), PAD_ID)], 1)
    a = model.decode(enc, batch["tgt_in"], need_attention=True, full_context=True)[1]["cross"]
    b = model.decode(enc, padded, need_attention=True, full_context=True)[1]["cross"][:, :, :, : a.size(3)]
    assert torch.allclose(a, b, atol=1e-6)
    guided = GuidedAlignment(weight=0.5, full_context=True)
    guided.links = {}
    logits, _ = guided.forward(model, batch)
    assert torch.allclose(logits, model.decode(enc, batch["tgt_in"])[0], atol=1e-6)
    from attnmt.train.task import TranslationTask

    rnn = build_tiny_model("rnn_bahdanau", vocab_size=30)
    refusals = (lambda: TranslationTask(rnn, torch.optim.Adam, guided_alignment=guided),  # when the run is built
                lambda: guided.forward(rnn, batch))
    for refused in refusals:
        with pytest.raises(ConfigError, match="task.guided_alignment.full_context=true needs a Transformer"):
            refused()


EVERY_MODEL = [
    ("rnn_bahdanau", [], -1, False), ("rnn_luong", ["model.attention.score=dot"], -1, False),
    ("rnn_luong", ["model.attention.score=general"], -1, False),
    ("rnn_luong", ["model.attention.score=concat"], -1, False),
    ("transformer", [], -1, False), ("transformer", [], 0, False), ("transformer", [], -1, True),
]


@pytest.mark.parametrize("name, overrides, layer, full_context", EVERY_MODEL, ids=[
    "bahdanau", "luong-dot", "luong-general", "luong-concat", "transformer", "transformer-l0",
    "transformer-full-context"])
def test_every_model_learns_to_attend_where_the_links_say(name, overrides, layer, full_context):
    """The alignment term alone, minimised through each model's real decoder, pulls the supervised
    attention (the last layer or another one, the first head; the causal pass or the one with the
    whole target) onto made-up links."""
    from conftest import build_tiny_model

    torch.manual_seed(1)
    vocab, batch_size, src_len, tgt_len = 40, 4, 6, 5
    src = torch.randint(4, vocab, (batch_size, src_len))
    src[:, -1] = EOS_ID
    body = torch.randint(4, vocab, (batch_size, tgt_len))
    tgt = torch.cat([torch.full((batch_size, 1), BOS_ID), body, torch.full((batch_size, 1), EOS_ID)], 1)
    batch = {"src": src, "src_mask": src != PAD_ID, "tgt_in": tgt[:, :-1], "tgt_out": tgt[:, 1:]}
    guided = GuidedAlignment(weight=1.0, layer=layer, full_context=full_context)
    # Target piece t links to source piece (src_len - 2 - t): a reversal no untrained model shows.
    diagonal = np.array([[t, src_len - 2 - t] for t in range(tgt_len)], dtype=np.int32)
    guided.links = {_key(s.tolist()[:-1], b.tolist()): diagonal for s, b in zip(src, body)}
    model = build_tiny_model(name, vocab_size=vocab, overrides=overrides).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        _, align_loss = guided.forward(model, batch)
        optimizer.zero_grad()
        align_loss.backward()
        optimizer.step()
        losses.append(align_loss.item())
    print(f"{name} {overrides} layer {layer} full context {full_context}: align KL {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert losses[-1] < 0.2 * losses[0], (losses[0], losses[-1])


def valid_aer(run_dir, method: str = "argmax") -> float:
    """AER (%) of the run's best checkpoint's last-layer attention on the validation gold."""
    from attnmt.align.links import read_gold
    from attnmt.data.dataset import encode_for_eval
    from attnmt.data.io import read_parallel
    from attnmt.decode.attention import attention_links
    from attnmt.decode.checkpoint import load_for_decoding
    from attnmt.eval.alignments import per_layer_aer
    from attnmt.utils.config import build

    model, tokenizer, train_cfg, _ = load_for_decoding(run_dir)
    dm = build(train_cfg["data"], "data")
    sources, references = read_parallel(*dm.split_files("valid"))
    dataset = encode_for_eval(tokenizer, sources, references)
    pairs = [(i, t[1:-1]) for i, t in enumerate(dataset.tgt)]
    links = attention_links(model, tokenizer, dataset, pairs, 4000, [-1], method)
    return per_layer_aer(links, read_gold(dm.alignment_file("valid")))[0]


GUIDED_STEPS = 150


@pytest.mark.slow
def test_guided_run_aligns_better_than_an_unguided_one(tiny_data_dir, tmp_path):
    pytest.importorskip("eflomal", reason="eflomal is not installed (pip install attnmt[align])")
    from attnmt.train.run import train

    from conftest import compose_config, tiny_overrides

    aer = {}
    for weight in (0.0, 0.5):
        out = tmp_path / f"w{weight}"
        cfg = compose_config("train", tiny_overrides(tiny_data_dir) + [
            f"trainer.max_steps={GUIDED_STEPS}", "trainer.max_epochs=100", f"trainer.val_check_interval={GUIDED_STEPS}",
            "trainer.check_val_every_n_epoch=null", f"task.guided_alignment.weight={weight}",
        ], out)
        train(cfg)
        aer[weight] = valid_aer(out)
    print(f"valid AER after {GUIDED_STEPS} steps: unguided {aer[0.0]:.2f}, guided {aer[0.5]:.2f}")
    # Same seed, same batches: only the alignment term differs.
    assert aer[0.5] < aer[0.0] - 10, aer
