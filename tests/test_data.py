"""Reading, checking, subwords and batching."""

from __future__ import annotations

import gzip
import hashlib
import random

import pytest
from hydra.utils import instantiate

from attnmt.data.batching import TokenBucketBatchSampler, token_budget_batches
from attnmt.data.io import read_lines, read_parallel
from attnmt.data.synthetic import ensure_synthetic, generate_pairs
from attnmt.errors import ConfigError, DataError

from conftest import compose_config, tiny_overrides


def test_line_count_mismatch_names_both_files_and_counts(tmp_path):
    (tmp_path / "a.de").write_text("eins\nzwei\ndrei\n")
    (tmp_path / "a.en").write_text("one\ntwo\n")
    with pytest.raises(DataError) as e:
        read_parallel(tmp_path / "a.de", tmp_path / "a.en")
    msg = str(e.value)
    assert "a.de has 3 lines" in msg and "a.en has 2" in msg and "\n" not in msg


def test_missing_file_and_invalid_utf8_are_named(tmp_path):
    with pytest.raises(DataError, match="nope.txt: no such file"):
        read_lines(tmp_path / "nope.txt")
    (tmp_path / "bad.txt").write_bytes(b"fine\nalso fine\n\xff\xfe broken\n")
    with pytest.raises(DataError, match=r"bad.txt: line 3 is not valid UTF-8"):
        read_lines(tmp_path / "bad.txt")


def test_gzip_and_crlf_are_read_like_plain_text(tmp_path):
    with gzip.open(tmp_path / "x.gz", "wt", encoding="utf-8") as f:
        f.write("Ein Hund.\r\nZwei Katzen.\r\n")
    assert read_lines(tmp_path / "x.gz") == ["Ein Hund.", "Zwei Katzen."]


def test_synthetic_corpus_is_deterministic_and_aligned():
    a, b = generate_pairs(300, seed=7), generate_pairs(300, seed=7)
    assert [(p.src, p.tgt, p.links) for p in a] == [(p.src, p.tgt, p.links) for p in b]
    assert generate_pairs(50, seed=8)[0].src != a[0].src
    for p in a:
        assert 3 <= len(p.src) <= 30
        # Every target word is aligned, and every link is in range.
        assert {j for _, j in p.links} == set(range(len(p.tgt)))
        assert all(0 <= i < len(p.src) for i, _ in p.links)
    # Reordering exists: some links cross (the target is verb-final).
    crossing = sum(
        1 for p in a for (i1, j1) in p.links for (i2, j2) in p.links if i1 < i2 and j1 > j2
    )
    assert crossing > 0


# sha256 of test.en + test.syn + test.align for 100/10/10 pairs with the default seed. A generator
# change must update this on purpose: everyone's embedded corpus (and every figure measured on it)
# changes with it.
SYNTHETIC_FINGERPRINT = "da94725334de3e6e17872d54c1555050bcad560958d18b1c0919cf8b172bbd32"


def test_synthetic_files_are_identical_on_every_machine(tmp_path):
    d = ensure_synthetic(tmp_path, num_train=100, num_valid=10, num_test=10)
    content = b"".join((d / f"test.{ext}").read_bytes() for ext in ("en", "syn", "align"))
    assert hashlib.sha256(content).hexdigest() == SYNTHETIC_FINGERPRINT
    lines = (d / "test.align").read_text().splitlines()
    assert len(lines) == 10 and all(all("-" in link for link in line.split()) for line in lines)


@pytest.mark.parametrize("max_tokens", [64, 300, 1000])
def test_every_batch_respects_the_token_budget(max_tokens):
    rng = random.Random(0)
    lengths = [rng.randint(1, 60) for _ in range(2000)]
    sampler = TokenBucketBatchSampler(lengths, max_tokens, shuffle=True, seed=3)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(2000))
    for b in batches:
        assert len(b) * max(lengths[i] for i in b) <= max_tokens
    # Bucketing: padding is small compared with random batching.
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert sum(lengths) / padded > 0.9


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_ranks_get_disjoint_equal_shares_that_cover_the_data(world, shuffle):
    rng = random.Random(1)
    lengths = [rng.randint(1, 40) for _ in range(997)]
    samplers = [TokenBucketBatchSampler(lengths, 200, shuffle=shuffle, seed=5, num_replicas=world, rank=r)
                for r in range(world)]
    for epoch in (0, 1):
        for s in samplers:
            s.set_epoch(epoch)
        shares = [list(s) for s in samplers]
        assert len({len(s) for s in shares}) == 1 and len(shares[0]) == len(samplers[0])  # ranks in step
        everything = sorted(i for s in shares for b in s for i in b)
        assert everything == list(range(997))  # each example exactly once per epoch
        for b in (b for s in shares for b in s):
            assert len(b) * max(lengths[i] for i in b) <= 200


def test_epochs_shuffle_differently_but_reproducibly():
    rng = random.Random(2)
    lengths = [rng.randint(1, 30) for _ in range(500)]  # ~17 examples of each length: ties to break

    def epoch(sampler, e):
        sampler.set_epoch(e)
        return list(sampler)

    s = TokenBucketBatchSampler(lengths, 100, seed=1)
    e0, e1 = epoch(s, 0), epoch(s, 1)
    assert epoch(s, 0) == e0 and epoch(TokenBucketBatchSampler(lengths, 100, seed=1), 1) == e1  # reproducible
    assert epoch(TokenBucketBatchSampler(lengths, 100, seed=2), 0) != e0  # the seed matters
    for batches in (e0, e1):
        assert sorted(i for b in batches for i in b) == list(range(500))
        # Bucketed: a batch holds neighbours in length, and fills its budget.
        assert all(max(lengths[i] for i in b) - min(lengths[i] for i in b) <= 1 for b in batches)
        assert all(len(b) * max(lengths[i] for i in b) <= 100 for b in batches)
        assert sum(lengths) / sum(len(b) * max(lengths[i] for i in b) for b in batches) > 0.9
    # Not only the order of the batches changes: equal lengths are grouped differently each epoch.
    assert {frozenset(b) for b in e0} != {frozenset(b) for b in e1}


def test_an_example_over_the_token_budget_gets_a_batch_of_its_own():
    # Unfiltered evaluation sets can hold a source longer than the budget: it is neither dropped
    # nor packed with others.
    lengths = [3, 25, 3, 3, 40, 3]
    assert token_budget_batches(lengths, 10, range(6)) == [[0], [1], [2, 3], [4], [5]]
    assert token_budget_batches([5, 5, 10], 10, [0, 1, 2]) == [[0, 1], [2]]  # exactly the budget fits
    batches = list(TokenBucketBatchSampler(lengths, 10, shuffle=False))
    assert sorted(batches) == [[0, 2, 3], [1], [4], [5]]


def test_sentencepiece_cache_reused_then_rebuilt_on_a_changed_setting(tiny_data_dir, tmp_path):
    def build(*extra):
        cfg = compose_config("train", tiny_overrides(tiny_data_dir) + [f"data.cache_dir={tmp_path}", *extra], tmp_path)
        dm = instantiate(cfg.data)
        dm.prepare_data()
        return dm.tokenizer

    first = build()
    models = sorted(tmp_path.glob("spm-*.model"))
    assert len(models) == 1
    mtime = models[0].stat().st_mtime_ns
    second = build()
    assert sorted(tmp_path.glob("spm-*.model")) == models and models[0].stat().st_mtime_ns == mtime
    assert second.src_proto == first.src_proto
    third = build("data.vocab_size=400")
    assert len(list(tmp_path.glob("spm-*.model"))) == 2
    assert third.src_vocab_size != first.src_vocab_size


def test_joint_vocab_false_cuts_each_side_with_its_own_model(tiny_data_dir, tmp_path):
    from attnmt.train.run import build_model_for

    cfg = compose_config("train", tiny_overrides(tiny_data_dir) + [
        f"data.cache_dir={tmp_path}", "data.joint_vocab=false", "data.vocab_size=300", "data.num_valid=20",
    ], tmp_path)
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    tok = dm.tokenizer
    assert sorted(p.name.split("-")[1] for p in tmp_path.glob("spm-*.model")) == ["en", "syn"]  # no joint model
    assert not tok.joint
    src_lines, tgt_lines = read_parallel(*dm.split_files("valid"))
    batch = dm.datasets["valid"].collate([0])
    src_ids, tgt_ids = tok.encode_src(src_lines[:1])[0], tok.encode_tgt(tgt_lines[:1])[0]
    assert batch["src"][0, : len(src_ids)].tolist() == src_ids
    assert batch["tgt_out"][0, : len(tgt_ids)].tolist() == tgt_ids
    # Each model knows its own language only: the other side's words fall apart into small pieces.
    assert len(tok.encode_src(tgt_lines)[0]) > len(tgt_ids) and len(tok.encode_tgt(src_lines)[0]) > len(src_ids)
    model = build_model_for(cfg.model, dm)  # the RNN: embeddings and output layer sized by each vocabulary
    logits = model(batch["src"], batch["src_mask"], batch["tgt_in"])
    assert logits.size(-1) == tok.tgt_vocab_size
    with pytest.raises(ConfigError, match="tie_embeddings=true needs a joint"):
        build_model_for(compose_config("train", ["model=transformer"]).model, dm)


def test_datamodule_batches_hold_aligned_tensors(tiny_datamodule):
    batch = next(iter(tiny_datamodule.train_dataloader()))
    B, S = batch["src"].shape
    assert batch["src_mask"].shape == (B, S)
    assert batch["tgt_in"].shape == batch["tgt_out"].shape
    assert (batch["tgt_in"][:, 1:] == batch["tgt_out"][:, :-1]).all()
    assert B * max(S, batch["tgt_out"].size(1)) <= tiny_datamodule.max_tokens


def test_atomic_write_leaves_no_file_when_interrupted(tmp_path):
    from attnmt.utils.io import atomic_path

    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []
