"""Links from attention: Shift-Att against a hand-made matrix, the source </s> never a target,
and eval.layer=best picking the layer with the lowest validation AER."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from attnmt.align.links import alignment_error_rate, alignment_scores, parse_links, read_gold, sentence_links

# Target "▁a ▁bc d" (words a, bcd), source "▁x ▁y ▁z </s>". Row t reads tgt_in[t] = <s>, ▁a, ▁bc, d.
SRC = ["▁x", "▁y", "▁z", "</s>"]
TGT = ["▁a", "▁bc", "d"]
WEIGHTS = np.array([
    # x    y    z    </s>
    [0.1, 0.6, 0.1, 0.2],  # reads <s>, emits ▁a
    [0.7, 0.1, 0.0, 0.2],  # reads ▁a, emits ▁bc
    [0.0, 0.1, 0.1, 0.8],  # reads ▁bc, emits d
    [0.0, 0.2, 0.5, 0.3],  # reads d, emits </s>
])


def test_shift_reads_the_row_where_the_word_is_the_input():
    # argmax: a <- row 0 (y); bcd <- mean of rows 1, 2 = x .35, y .1, z .05 (</s> dropped) -> x.
    assert sentence_links(WEIGHTS, TGT, SRC, "argmax") == {(1, 0), (0, 1)}
    # shift: a <- row 1 (x); bcd <- mean of rows 2, 3 = x 0, y .15, z .3 -> z.
    assert sentence_links(WEIGHTS, TGT, SRC, "shift") == {(0, 0), (2, 1)}


def test_source_end_of_sentence_is_never_a_link_target():
    # Most of rows 1 and 2 goes to </s>: dropped, each word still links to a real source word.
    weights = np.array([[0.1, 0.6, 0.1, 0.2], [0.05, 0.05, 0.1, 0.8], [0.3, 0.1, 0.1, 0.5]])
    assert sentence_links(weights, ["▁a", "▁b"], SRC, "argmax") == {(1, 0), (2, 1)}
    assert sentence_links(weights, ["▁a", "▁b"], SRC, "shift") == {(2, 0), (0, 1)}
    assert all(i < 3 for i, _ in sentence_links(WEIGHTS, TGT, SRC, "threshold", 0.05))


# "will see" -> one fused target word "▁vid ta": its stem follows "see", its ending "will".
FUSED_SRC = ["▁will", "▁s", "ee", "</s>"]  # words will, see
FUSED_TGT = ["▁vid", "ta"]  # one word
FUSED = np.array([
    # will  ▁s   ee   </s>
    [0.10, 0.50, 0.30, 0.10],  # emits ▁vid
    [0.60, 0.10, 0.10, 0.20],  # emits ta
    [0.20, 0.30, 0.40, 0.10],  # emits </s>
])


def test_any_word_links_let_a_fused_words_pieces_link_different_words():
    # merged: the word's rows averaged (will .35, see .5) -> one link, to "see".
    assert sentence_links(FUSED, FUSED_TGT, FUSED_SRC, "argmax", word_links="merged") == {(1, 0)}
    # any: ▁vid -> ▁s (see), ta -> will: the word links both.
    assert sentence_links(FUSED, FUSED_TGT, FUSED_SRC, "argmax", word_links="any") == {(1, 0), (0, 0)}
    # Thresholds compare piece weights under "any" (▁s .5, will .6) and word weights under "merged".
    assert sentence_links(FUSED, FUSED_TGT, FUSED_SRC, "threshold", 0.45, word_links="any") == {(1, 0), (0, 0)}
    assert sentence_links(FUSED, FUSED_TGT, FUSED_SRC, "threshold", 0.45, word_links="merged") == {(1, 0)}
    # shift under "any": ▁vid reads row 1 (will), ta row 2 (ee: see); </s> columns never chosen.
    assert sentence_links(FUSED, FUSED_TGT, FUSED_SRC, "shift", word_links="any") == {(0, 0), (1, 0)}
    heavy_eos = np.array([[0.2, 0.05, 0.05, 0.7], [0.3, 0.0, 0.0, 0.7], [0, 0, 0, 1.0]])
    assert sentence_links(heavy_eos, FUSED_TGT, FUSED_SRC, "argmax", word_links="any") == {(0, 0)}
    with pytest.raises(ValueError, match="merged, any"):
        sentence_links(FUSED, FUSED_TGT, FUSED_SRC, "argmax", word_links="pieces")


def test_best_layer_is_the_one_with_the_lowest_validation_aer(tiny_datamodule, monkeypatch):
    import attnmt.eval.alignments as report

    gold = read_gold(tiny_datamodule.alignment_file("valid"))
    right = [set(sure) for sure, _ in gold]
    wrong = [{(j, i) for i, j in sure if i != j} for sure, _ in gold]  # transposed: mostly not gold
    half = [r if n % 2 else w for n, (r, w) in enumerate(zip(right, wrong))]
    train_cfg = {"data": {k: v for k, v in _data_node(tiny_datamodule).items()}}
    for layers, expected in (([wrong, half, right], 2), ([half, right, wrong], 1), ([right, right, wrong], 0)):
        backend = SimpleNamespace(config=train_cfg, dataset=lambda s, r: SimpleNamespace(tgt=[[1, 2]] * len(s)),
                                  alignments=lambda *a, _l=layers, **k: _l)
        layer, aer, gold_file = report.best_layer(backend, "argmax", 0.5, 4000)
        assert layer == expected
        assert aer[expected] == min(aer) and aer.index(min(aer)) == expected
        assert gold_file.endswith("valid.align")


def test_eflomal_baseline_aligns_a_pair_once_on_pieces_or_words(tiny_datamodule, monkeypatch):
    """Evaluated pairs join the training text for eflomal, except those already in it (a repeated
    pair skews its statistics); on pieces, links become word links where any pieces link."""
    import attnmt.align.eflomal as aligner
    import attnmt.eval.alignments as report
    from attnmt.data.io import iter_parallel

    tok = tiny_datamodule.tokenizer
    train = [p for files in tiny_datamodule.train_files() for p in iter_parallel(*files)]
    sources, references = [train[3][0], "a dog sees a cat"], [train[3][1], "na zemevon ka sailos gouvus"]
    train_cfg = {"data": _data_node(tiny_datamodule)}
    calls = {}

    def fake_words(src, tgt, cache_dir):
        calls["words"] = (src, tgt)
        return [{(k, 0)} for k in range(len(src))]  # line k links source word k: which line was used

    def fake_pieces(src, tgt, cache_dir):
        calls["pieces"] = (src, tgt)
        return [{(2, 0), (3, 0), (3, 4)} for _ in src]

    monkeypatch.setattr(aligner, "eflomal_links", fake_words)
    monkeypatch.setattr(aligner, "piece_links", fake_pieces)
    links = report.eflomal_baseline(train_cfg, sources, references, tok, units="words")
    assert calls["words"] == ([s for s, _ in train] + sources[1:], [t for _, t in train] + references[1:])
    assert links == [{(3, 0)}, {(len(train), 0)}]  # the training pair's own line; the new one appended

    links = report.eflomal_baseline(train_cfg, sources, references, tok, units="subwords")
    src_pieces, tgt_pieces = calls["pieces"]
    assert len(src_pieces) == len(train) + 1 and src_pieces[-1] == tok.src_pieces(tok.encode_src(sources[1:])[0])
    assert src_pieces[-1][2:4] == ["▁se", "es"] and tgt_pieces[-1][4] == "▁g"  # sees; gouvus
    assert links[1] == {(2, 0), (2, 4)}  # both pieces of "sees" -> na; "es" -> gouvus


def _data_node(dm) -> dict:
    return {
        "_target_": "attnmt.data.datamodule.SyntheticDataModule", "data_dir": str(dm.data_dir),
        "num_train": dm.sizes["num_train"], "num_valid": dm.sizes["num_valid"], "num_test": dm.sizes["num_test"],
        "vocab_size": dm.spm_settings["vocab_size"], "max_tokens": dm.max_tokens,
    }


@pytest.mark.slow
def test_evaluate_with_shift_best_layer_and_eflomal_baseline(trained_runs, tmp_path, capsys):
    pytest.importorskip("eflomal", reason="eflomal is not installed (pip install attnmt[align])")
    from attnmt.eval.evaluate import evaluate

    from conftest import compose_config

    _, run_dir, _ = trained_runs[1]["transformer"]
    out = tmp_path / "eval"
    overrides = [f"ckpt={run_dir}", "decode.beam_size=1", "eval.num_plots=1", "eval.formats=[png]",
                 "eval.align_method=shift", "eval.layer=best", "eval.baseline=eflomal"]
    results = evaluate(compose_config("evaluate", overrides, out))
    saved = json.loads((out / "results.json").read_text())
    alignment = saved["alignment"]
    assert alignment["method"] == "shift" and alignment["word_links"] == "any"
    assert alignment["baseline"]["units"] == "subwords"
    valid_aer = alignment["layer_choice"]["valid_aer_per_layer"]
    assert len(valid_aer) == 3 and alignment["layer"] == valid_aer.index(min(valid_aer))
    assert saved["aer"] == saved["aer_per_layer"][alignment["layer"]]
    # eflomal's links of the same pairs, scored against the same gold.
    links = [parse_links(line)[1] for line in (out / "alignments.eflomal.txt").read_text().splitlines()]
    gold = read_gold(saved["alignment"]["gold_file"])
    assert saved["aer_baseline"] == results["aer_baseline"] == round(100 * alignment_error_rate(links, gold), 2)
    assert saved["aer_baseline"] < 30.0  # the embedded corpus is easy for a statistical aligner
    attention = [parse_links(line)[1] for line in (out / "alignments.txt").read_text().splitlines()]
    assert alignment["scores"] == alignment_scores(attention, gold) and alignment["scores"]["aer"] == saved["aer"]
    assert alignment["baseline"]["scores"] == alignment_scores(links, gold)
    # Agreement: the attention's links counted against eflomal's, by hand.
    shared = sum(len(a & b) for a, b in zip(attention, links))
    assert alignment["baseline"]["agreement"] == {
        "precision": round(100 * shared / sum(map(len, attention)), 2),
        "recall": round(100 * shared / sum(map(len, links)), 2),
    }
    assert sum(b["sentences"] for b in alignment["by_length"]) == saved["num_sentences"]
    assert sum(b["sentences"] for b in alignment["baseline"]["by_length"]) == saved["num_sentences"]
    assert alignment["scores"]["recall_bound"] < 100.0  # the corpus links some target words to several words
    printed = capsys.readouterr().out
    assert f"eflomal {saved['aer_baseline']:6.2f}" in printed and "(best on valid)" in printed
    assert f"precision {alignment['scores']['precision']:.2f}" in printed
    assert "AER eflomal" in (out / "index.html").read_text()


@pytest.mark.slow
def test_evaluate_with_merged_word_links_and_a_word_level_baseline(trained_runs, tmp_path, capsys):
    pytest.importorskip("eflomal", reason="eflomal is not installed (pip install attnmt[align])")
    from attnmt.eval.evaluate import evaluate

    from conftest import compose_config

    _, run_dir, _ = trained_runs[1]["rnn_bahdanau"]
    out = tmp_path / "eval"
    overrides = [f"ckpt={run_dir}", "decode.beam_size=1", "eval.num_plots=0", "eval.word_links=merged",
                 "eval.baseline=eflomal", "eval.baseline_units=words"]
    saved = evaluate(compose_config("evaluate", overrides, out))
    assert saved["alignment"]["word_links"] == "merged" and saved["alignment"]["baseline"]["units"] == "words"
    gold = read_gold(saved["alignment"]["gold_file"])
    attention = [parse_links(line)[1] for line in (out / "alignments.txt").read_text().splitlines()]
    assert saved["aer"] == round(100 * alignment_error_rate(attention, gold), 2)
    lines = capsys.readouterr().out.splitlines()
    aer_line = next(k for k, line in enumerate(lines) if line.startswith("  AER "))
    assert "word links merged" in lines[aer_line] and any("eflomal (on words" in line for line in lines)
    # merged argmax makes one link per target word: the recall that allows is quoted beside it.
    assert f"reaches at most {saved['alignment']['scores']['recall_bound']:.2f}" in lines[aer_line + 1]
    per_word = [parse_links(line)[1] for line in (out / "alignments.txt").read_text().splitlines()]
    assert all(len({j for _, j in x}) == len(x) for x in per_word)  # one link per target word


def test_alignment_heads_default_to_the_guided_ones_and_are_checked():
    from attnmt.errors import ConfigError
    from attnmt.eval.evaluate import alignment_heads

    plain = {"task": {"guided_alignment": {"weight": 0.0, "heads": 1}}}
    guided = {"task": {"guided_alignment": {"weight": 0.5, "heads": 2}}}
    assert alignment_heads(None, plain, 4) == (None, "heads averaged")
    assert alignment_heads(None, guided, 4) == (2, "heads 1-2 averaged of 4 (the guided ones)")
    assert alignment_heads(1, guided, 4) == (1, "head 1 of 4")
    assert alignment_heads(4, plain, 4) == (None, "heads averaged")
    assert alignment_heads(None, guided | {"task": {}}, 1) == (None, "its single head")
    with pytest.raises(ConfigError, match=r"^eval.heads=5: the model's cross-attention has 4 heads \(1..4\)$"):
        alignment_heads(5, plain, 4)


def test_full_context_follows_the_guided_training_and_needs_a_transformer():
    from attnmt.errors import ConfigError
    from attnmt.eval.evaluate import alignment_full_context

    from conftest import build_tiny_model

    transformer, rnn = build_tiny_model("transformer", vocab_size=30), build_tiny_model("rnn_bahdanau", vocab_size=30)
    trained = {"task": {"guided_alignment": {"weight": 0.5, "full_context": True}}}
    off = {"task": {"guided_alignment": {"weight": 0.0, "full_context": True}}}  # not guided: causal
    assert alignment_full_context(None, trained, transformer) is True
    assert alignment_full_context(None, off, transformer) is False
    assert alignment_full_context(False, trained, transformer) is False
    assert alignment_full_context(True, {}, transformer) is True
    assert alignment_full_context(None, {}, rnn) is False
    with pytest.raises(ConfigError, match=r"^eval.full_context=true needs a Transformer: BahdanauRNN"):
        alignment_full_context(True, {}, rnn)


def test_attention_links_average_only_the_heads_asked_for(monkeypatch):
    import torch

    import attnmt.decode.attention as alignment

    # Head 0 points every target word at source word 0, head 1 at source word 1 (stronger).
    cross = torch.zeros(1, 1, 2, 3, 3)  # (B, L, H, T + 1, S): two target words, "▁x ▁y </s>"
    cross[0, 0, 0, :, 0] = 0.6
    cross[0, 0, 0, :, 2] = 0.4
    cross[0, 0, 1, :, 1] = 1.0
    monkeypatch.setattr(alignment, "forced_attention", lambda *a, **k: ({"cross": cross}, None))

    class Tokens:
        def tgt_pieces(self, ids):
            return ["▁a", "▁b"]

        def src_pieces(self, ids):
            return ["▁x", "▁y", "</s>"]

    class Data:
        src = [[10, 11, 2]]

    model = torch.nn.Linear(1, 1)  # stands in for the model: only its device is read
    links = {heads: alignment.attention_links(model, Tokens(), Data(), [(0, [20, 21])], heads=heads)[0][0]
             for heads in (1, None)}
    assert links == {1: {(0, 0), (0, 1)}, None: {(1, 0), (1, 1)}}


@pytest.mark.slow
def test_eval_max_len_cuts_long_pairs_counts_them_and_is_checked(trained_runs, tmp_path):
    from attnmt.data.io import read_parallel
    from attnmt.decode.checkpoint import load_for_decoding
    from attnmt.errors import ConfigError
    from attnmt.eval.evaluate import evaluate

    from conftest import compose_config

    _, run_dir, _ = trained_runs[1]["rnn_bahdanau"]
    common = [f"ckpt={run_dir}", "decode.beam_size=1", "eval.num_plots=0"]
    whole = evaluate(compose_config("evaluate", common, tmp_path / "whole"))
    cut = evaluate(compose_config("evaluate", [*common, "eval.max_len=6"], tmp_path / "cut"))
    assert whole["max_len"] == 128 and whole["cut_sentences"] == 0  # the training data.max_len
    _, tokenizer, _, _ = load_for_decoding(str(run_dir))
    sources, references = read_parallel(cut["source_file"], cut["reference_file"])
    pieces = zip(tokenizer.encode_src(sources), tokenizer.encode_tgt(references))
    longer = sum(max(len(s), len(t)) > 6 for s, t in pieces)
    assert cut["max_len"] == 6 and cut["cut_sentences"] == longer > 0
    # Six pieces hold at most six words: no link reaches past them, so recall falls.
    def links(run: str) -> list[set]:
        return [parse_links(line)[1] for line in (tmp_path / run / "alignments.txt").read_text().splitlines()]

    assert all(i < 6 and j < 6 for x in links("cut") for i, j in x)
    assert any(j >= 6 for x in links("whole") for _, j in x)
    assert cut["alignment"]["scores"]["recall"] < whole["alignment"]["scores"]["recall"]

    _, transformer_dir, _ = trained_runs[1]["transformer"]
    with pytest.raises(ConfigError, match=r"eval\.max_len=5000: the model has 1024 positions"):
        evaluate(compose_config("evaluate", [f"ckpt={transformer_dir}", "eval.max_len=5000"], tmp_path / "long"))
