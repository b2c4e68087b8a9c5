"""The prepared token store: cache hits and misses, crash safety, dtypes, several corpora, and
batches identical to the in-memory path."""

from __future__ import annotations

import gzip
import logging
import os
import random

import numpy as np
import pytest
import torch

from attnmt.data import store as store_module
from attnmt.data.batching import TokenBucketBatchSampler, token_budget_batches
from attnmt.data.dataset import ParallelDataset
from attnmt.data.io import read_parallel
from attnmt.errors import DataError
from attnmt.utils.config import build

from conftest import compose_config

WORDS = "house garden tree river dog cat red green small big old new runs sleeps sees near".split()


def write_corpus(folder, name: str, n: int, seed: int = 0, gz: bool = False) -> str:
    """``n`` made-up pairs (the target a noisy copy of the source), some blank and some long."""
    rng = random.Random(seed)
    src, tgt = [], []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(1, 12 if i % 50 else 60))]
        src.append(" ".join(words))
        tgt.append(" ".join(w.upper() if rng.random() < 0.3 else w for w in words[: rng.randint(1, len(words))]))
    src[3] = "   "  # blank pairs are dropped and counted
    folder.mkdir(parents=True, exist_ok=True)
    for lang, lines in (("de", src), ("en", tgt)):
        text = "".join(line + "\n" for line in lines).encode()
        path = folder / f"{name}.{lang}{'.gz' if gz else ''}"
        path.write_bytes(gzip.compress(text, mtime=0) if gz else text)
    return str(folder / name)


def datamodule(tmp_path, train, *overrides):
    train_prefix = train if isinstance(train, str) else "[" + ",".join(train) + "]"
    cfg = compose_config("train", [
        "data=parallel", f"data.train_prefix={train_prefix}", f"data.valid_prefix={tmp_path}/corpus/dev",
        "data.src_lang=de", "data.tgt_lang=en", f"data.cache_dir={tmp_path}/cache", "data.vocab_size=60",
        "data.max_len=30", "data.num_proc=1", *overrides,
    ], tmp_path)
    return build(cfg.data, "data")


@pytest.fixture
def corpus(tmp_path):
    write_corpus(tmp_path / "corpus", "dev", 20, seed=9)
    return write_corpus(tmp_path / "corpus", "train", 3000)


def stores(tmp_path) -> dict[str, float]:
    return {p.name: (p / "meta.json").stat().st_mtime_ns for p in (tmp_path / "cache").glob("store-*") if p.is_dir()}


def in_memory_reference(corpus: str, tok, max_len: int = 30) -> tuple[ParallelDataset, list[int]]:
    """The reference for a store's batches: every line of ``corpus`` encoded in memory and filtered
    as before the store existed; and which lines were kept."""
    src, tgt = read_parallel(f"{corpus}.de", f"{corpus}.en")
    s_ids, t_ids = tok.encode_src(src), tok.encode_tgt(tgt)
    keep = [i for i in range(len(src)) if s_ids[i] and t_ids[i] and src[i].strip() and tgt[i].strip()
            and len(s_ids[i]) <= max_len and len(t_ids[i]) <= max_len]
    return ParallelDataset([s_ids[i] for i in keep], [t_ids[i] for i in keep]), keep


def test_store_batches_equal_the_in_memory_pipeline(corpus, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(store_module, "CHUNK_PAIRS", 100)  # 30 chunks: enough for two processes
    monkeypatch.setattr(store_module.os, "sched_getaffinity", lambda pid: {0, 1})
    dm = datamodule(tmp_path, corpus, "data.num_proc=2")
    with caplog.at_level(logging.INFO, logger="attnmt.data.store"):
        dm.prepare_data()
    assert "(2 processes)" not in caplog.text and "2 processes):" in caplog.text  # a pool encoded it
    dm.setup("fit")
    train = dm.datasets["train"]
    reference, keep = in_memory_reference(corpus, dm.tokenizer)
    assert dm.stats["train"] == {"pairs": 3000, "kept": len(keep), "blank": 1, "too_long": 3000 - 1 - len(keep)}
    assert 0 < dm.stats["train"]["too_long"] and len(train) == len(keep)
    assert train.lengths().tolist() == reference.lengths()
    assert [tuple(k) for k in train.sort_keys().tolist()] == reference.sort_keys()
    for batch in TokenBucketBatchSampler(reference.lengths(), 300, seed=4, sort_keys=reference.sort_keys()):
        got, want = train.collate(batch), reference.collate(batch)
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want if k != "num_tgt_tokens")
        assert got["num_tgt_tokens"] == want["num_tgt_tokens"] == int((want["tgt_out"] != 0).sum())
    for multiple in (1, 8):  # lengths padded to a multiple: more padding, the same tokens
        batch = list(range(0, 40, 3))
        got, want = train.collate(batch, multiple), reference.collate(batch, multiple)
        assert all(torch.equal(got[k], want[k]) for k in ("src", "tgt_in", "tgt_out"))
        assert got["src"].size(1) % multiple == 0 and got["tgt_in"].size(1) % multiple == 0
        plain = reference.collate(batch)
        assert torch.equal(got["src"][:, : plain["src"].size(1)], plain["src"])
        assert torch.equal(got["tgt_out"][:, : plain["tgt_out"].size(1)], plain["tgt_out"])
        assert got["num_tgt_tokens"] == plain["num_tgt_tokens"] == int((got["tgt_out"] != 0).sum())


@pytest.mark.parametrize("gz", [False, True])
def test_a_small_corpus_is_encoded_in_this_process_whatever_num_proc_asks(tmp_path, monkeypatch, caplog, gz):
    """Starting a process costs about what encoding a chunk does: 16 processes asked for a corpus of
    a few chunks cost 67 s where one process takes 0.4 s. The pool is sized by the corpus."""
    corpus = write_corpus(tmp_path / "corpus", "train", 3000, gz=gz)
    write_corpus(tmp_path / "corpus", "dev", 20, seed=9)
    src = tmp_path / "corpus" / f"train.de{'.gz' if gz else ''}"
    assert store_module.estimated_pairs(src) == 3000
    if not gz:  # from the first 4 KiB alone
        assert store_module.estimated_pairs(src, sample_bytes=4096) == pytest.approx(3000, rel=0.2)
    monkeypatch.setattr(store_module.os, "sched_getaffinity", lambda pid: set(range(16)))
    assert store_module.pool_size(16, src)[0] == 1
    monkeypatch.setattr(store_module, "CHUNK_PAIRS", 100)  # 30 chunks: 7 processes of 4 chunks or more
    assert store_module.pool_size(16, src) == (7, "about 30 chunks of 100 pairs: at most one process per 4")
    assert store_module.pool_size(3, src) == (3, "as asked")
    assert store_module.pool_size(None, src)[0] == 7
    monkeypatch.setattr(store_module, "CHUNK_PAIRS", 20_000)

    def no_pool():
        raise AssertionError("a pool was started for a corpus of one chunk")

    monkeypatch.setattr(store_module, "_worker_context", no_pool)
    with caplog.at_level(logging.INFO, logger="attnmt.data.store"):
        datamodule(tmp_path, corpus, "data.num_proc=16").prepare_data()
    assert "in 1 process (data.num_proc=16" in caplog.text and "1 process):" in caplog.text


def test_encoding_processes_do_not_import_the_main_script(tmp_path):
    """A worker that imported the main script again (``train.py``: Lightning, seconds each) made
    preparation slower with more processes; the workers import only the store module."""
    import subprocess
    import sys
    from pathlib import Path

    corpus = write_corpus(tmp_path / "corpus", "train", 400)
    marker = tmp_path / "imports.txt"
    script = tmp_path / "main_script.py"
    script.write_text(
        "import os, sys\n"
        f"open({str(marker)!r}, 'a').write(str(os.getpid()) + '\\n')\n"
        "if __name__ == '__main__':\n"
        "    from pathlib import Path\n"
        "    from attnmt.data import store\n"
        "    from attnmt.data.tokenizer import Tokenizer, train_sentencepiece\n"
        "    import logging\n"
        "    logging.basicConfig(level=logging.INFO)\n"
        "    store.CHUNK_PAIRS, store.CHUNKS_PER_PROCESS = 50, 1\n"
        "    store.os.sched_getaffinity = lambda pid: {0, 1}\n"
        f"    src, tgt = Path({corpus!r} + '.de'), Path({corpus!r} + '.en')\n"
        "    settings = {'vocab_size': 60, 'model_type': 'unigram', 'character_coverage': 1.0}\n"
        f"    folder = Path({str(tmp_path)!r})\n"
        "    proto = train_sentencepiece(src.read_text().splitlines(), folder, 'joint', settings, [src])\n"
        f"    print(store.build_store(Path({str(tmp_path / 'store')!r}), src, tgt, Tokenizer(proto), 30, None, 2))\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 processes):" in proc.stderr, proc.stderr[-2000:]
    assert len(marker.read_text().split()) == 1  # only the main process ran the script


def test_cache_hit_then_miss_on_changed_content_or_setting(corpus, tmp_path):
    dm = datamodule(tmp_path, corpus)
    dm.prepare_data()
    first = stores(tmp_path)
    assert len(first) == 1
    dm = datamodule(tmp_path, corpus)
    dm.prepare_data()
    assert stores(tmp_path) == first  # reused, not rewritten

    dm = datamodule(tmp_path, corpus, "data.max_len=20")  # a setting that changes the filter
    dm.prepare_data()
    assert len(stores(tmp_path)) == 2
    dm = datamodule(tmp_path, corpus, "data.max_len_ratio=1.5")
    dm.prepare_data()
    assert len(stores(tmp_path)) == 3 and dm.train_stores()[0].stats["uneven"] > 0

    # Same size, later mtime, one word changed: the content digest sees it.
    path = tmp_path / "corpus" / "train.en"
    text = path.read_text()
    path.write_text(text.replace("dog", "cat", 1))
    dm = datamodule(tmp_path, corpus)
    dm.prepare_data()
    assert len(stores(tmp_path)) == 4


def test_with_a_fixed_sentencepiece_model_each_files_own_content_decides_reuse(corpus, tmp_path):
    """A subword model trained on the corpus changes with either file, and the store key with it.
    With ``data.spm_model`` set it cannot: the digest of each file itself must tell an edited
    source or target file from the one the store was prepared from."""
    other = write_corpus(tmp_path / "other", "train", 500)
    datamodule(tmp_path / "other", other).build_tokenizer()
    model = f"data.spm_model={next((tmp_path / 'other' / 'cache').glob('spm-*.model'))}"

    def prepared() -> tuple[str, list[int], list[int]]:
        dm = datamodule(tmp_path, corpus, model)
        dm.prepare_data()
        (store,) = dm.train_stores()
        return store.path.name, store.tokens["src"].tolist(), store.tokens["tgt"].tolist()

    # A pair of a few words: kept (not too long) whichever side is edited.
    row = next(i for i, line in enumerate((tmp_path / "corpus" / "train.de").read_text().split("\n"))
               if 0 < len(line.split()) <= 3)

    def edit(lang: str) -> None:
        """One word of that pair's line in one file: same size, a later modification time."""
        path = tmp_path / "corpus" / f"train.{lang}"
        lines = path.read_text().split("\n")
        word = lines[row].split()[0]
        lines[row] = lines[row].replace(word, "x" * len(word), 1)
        before = path.stat()
        path.write_text("\n".join(lines))
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 2_000_000_000))
        assert path.stat().st_size == before.st_size

    first = prepared()
    assert first[1] and first[2]
    assert prepared() == first and len(stores(tmp_path)) == 1  # unchanged files: the same store

    edit("de")  # the source file alone
    after_src = prepared()
    assert after_src[0] != first[0] and len(stores(tmp_path)) == 2
    assert after_src[1] != first[1] and after_src[2] == first[2]

    edit("en")  # the target file alone
    after_tgt = prepared()
    assert after_tgt[0] not in (first[0], after_src[0]) and len(stores(tmp_path)) == 3
    assert after_tgt[1] == after_src[1] and after_tgt[2] != after_src[2]


@pytest.mark.parametrize("crash", [KeyboardInterrupt, MemoryError])
def test_interrupted_preparation_leaves_nothing_usable(corpus, tmp_path, monkeypatch, crash):
    monkeypatch.setattr(store_module, "CHUNK_PAIRS", 500)
    real = store_module._encode_chunk
    calls = []

    def crash_on_third(chunk):
        calls.append(1)
        if len(calls) == 3:
            raise crash()
        return real(chunk)

    monkeypatch.setattr(store_module, "_encode_chunk", crash_on_third)
    with pytest.raises(crash):
        datamodule(tmp_path, corpus).prepare_data()
    assert not stores(tmp_path)
    assert not [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]  # no half-written folder either
    monkeypatch.setattr(store_module, "_encode_chunk", real)
    dm = datamodule(tmp_path, corpus)
    dm.prepare_data()
    assert dm.train_stores()[0].num_pairs > 2000


@pytest.mark.parametrize("damage", ["truncated tokens", "missing meta", "unknown format"])
def test_damaged_store_is_rebuilt_with_a_warning(corpus, tmp_path, caplog, damage):
    dm = datamodule(tmp_path, corpus)
    dm.prepare_data()
    folder = dm.train_stores()[0].path
    expected = dm.train_stores()[0].tokens["tgt"].tolist()
    if damage == "truncated tokens":
        data = (folder / "tgt.tokens").read_bytes()
        (folder / "tgt.tokens").write_bytes(data[: len(data) // 2])
    elif damage == "missing meta":
        (folder / "meta.json").unlink()
    else:
        meta = (folder / "meta.json").read_text()
        (folder / "meta.json").write_text(meta.replace('"format": 1', '"format": 99'))
    with caplog.at_level(logging.WARNING, logger="attnmt.data.store"):
        dm = datamodule(tmp_path, corpus)
        dm.prepare_data()
    assert any("preparing it again" in r.message for r in caplog.records)
    assert dm.train_stores()[0].path == folder and dm.train_stores()[0].tokens["tgt"].tolist() == expected


def test_uint16_and_uint32_stores_give_the_same_batches(corpus, tmp_path, monkeypatch):
    assert store_module.token_dtype_for(65536) == np.uint16 and store_module.token_dtype_for(65537) == np.uint32
    small = datamodule(tmp_path, corpus)
    small.setup("fit")
    assert small.train_stores()[0].tokens["src"].dtype == np.uint16
    monkeypatch.setattr(store_module, "token_dtype_for", lambda vocab_size: np.dtype(np.uint32))
    monkeypatch.setattr(store_module, "FORMAT_VERSION", 2)  # a separate store for the same inputs
    wide = datamodule(tmp_path, corpus)
    wide.setup("fit")
    assert wide.train_stores()[0].tokens["src"].dtype == np.uint32
    a, b = small.datasets["train"], wide.datasets["train"]
    indices = list(range(0, len(a), 7))
    assert a.collate(indices).keys() == b.collate(indices).keys()
    assert all(torch.equal(x, y) if torch.is_tensor(x) else x == y
               for x, y in zip(a.collate(indices).values(), b.collate(indices).values()))


def test_several_corpora_with_upsampling(tmp_path):
    write_corpus(tmp_path / "corpus", "dev", 20, seed=9)
    a = write_corpus(tmp_path / "corpus", "a", 400, seed=1)
    b = write_corpus(tmp_path / "corpus", "b", 300, seed=2, gz=True)
    dm = datamodule(tmp_path, [a, b], "data.train_upsample=[1,3]")
    dm.setup("fit")
    first = stores(tmp_path)
    assert len(first) == 2
    store_a, store_b = dm.train_stores()
    train = dm.datasets["train"]
    assert len(train) == store_a.num_pairs + 3 * store_b.num_pairs
    assert dm.stats["train"]["corpora"] == 2 and dm.stats["train"]["pairs"] == 700

    # One epoch shows each pair of a once and each pair of b three times, by content.
    def rows(dataset, indices):
        batch = dataset.collate(indices)
        return [tuple(s[s != 0].tolist()) + (-1,) + tuple(t[t != 0].tolist())
                for s, t in zip(batch["src"], batch["tgt_out"])]

    seen = [r for batch in TokenBucketBatchSampler(train.lengths(), 500, seed=1, sort_keys=train.sort_keys())
            for r in rows(train, batch)]
    from attnmt.data.dataset import TokenStoreDataset

    only_a = rows(TokenStoreDataset([(store_a, 1)]), list(range(store_a.num_pairs)))
    only_b = rows(TokenStoreDataset([(store_b, 1)]), list(range(store_b.num_pairs)))
    assert sorted(seen) == sorted(only_a + 3 * only_b)

    # Other upsampling factors: nothing is prepared again.
    dm = datamodule(tmp_path, [a, b], "data.train_upsample=[2,1]")
    dm.setup("fit")
    assert stores(tmp_path) == first and len(dm.datasets["train"]) == 2 * store_a.num_pairs + store_b.num_pairs

    # With a fixed sentencepiece model, adding a corpus prepares only that one. (A model trained
    # on the corpora changes with them, and with it every corpus's subwords.)
    model = f"data.spm_model={next((tmp_path / 'cache').glob('spm-*.model'))}"
    dm = datamodule(tmp_path, [a, b], model)
    dm.setup("fit")
    first = stores(tmp_path)
    c = write_corpus(tmp_path / "corpus", "c", 200, seed=3)
    dm = datamodule(tmp_path, [a, b, c], "data.train_upsample=2", model)
    dm.setup("fit")
    now = stores(tmp_path)
    assert len(now) == len(first) + 1 and all(now[name] == mtime for name, mtime in first.items())
    assert len(dm.datasets["train"]) == 2 * sum(s.num_pairs for s in dm.train_stores())


@pytest.mark.parametrize("world", [2, 3])
def test_rank_shares_of_a_store_are_disjoint_and_complete(corpus, tmp_path, world):
    dm = datamodule(tmp_path, corpus)
    dm.setup("fit")
    train = dm.datasets["train"]
    shares = [list(TokenBucketBatchSampler(train.lengths(), 400, seed=2, num_replicas=world, rank=r,
                                           sort_keys=train.sort_keys())) for r in range(world)]
    assert len({len(s) for s in shares}) == 1
    assert sorted(i for s in shares for b in s for i in b) == list(range(len(train)))


def test_vectorised_sampler_equals_the_per_example_reference():
    """The plan as the sampler made it one example at a time with ``random.Random``."""
    rng = random.Random(0)
    src = [rng.randint(1, 40) for _ in range(3000)]
    tgt = [rng.randint(2, 40) for _ in range(3000)]
    cost = [max(s, t - 1) for s, t in zip(src, tgt)]
    keys = list(zip(cost, tgt, src))
    for seed, epoch, world in ((0, 0, 1), (3, 1, 2), (5, 7, 3)):
        r = random.Random(seed * 1_000_003 + epoch)
        draws = [r.random() for _ in cost]
        order = sorted(range(len(cost)), key=lambda i: (keys[i], draws[i]))
        batches = token_budget_batches(cost, 333, order)
        while len(batches) % world:
            k = max(range(len(batches)), key=lambda b: len(batches[b]))
            batches[k : k + 1] = [batches[k][: len(batches[k]) // 2], batches[k][len(batches[k]) // 2 :]]
        r.shuffle(batches)
        for rank in range(world):
            sampler = TokenBucketBatchSampler(np.array(cost, np.uint16), 333, seed=seed, num_replicas=world,
                                              rank=rank, sort_keys=np.array(keys, np.uint16))
            sampler.set_epoch(epoch)
            assert list(sampler) == batches[rank::world]


def test_exact_resume_across_an_epoch_boundary():
    lengths = np.random.default_rng(0).integers(1, 30, 800)
    def sampler():
        return TokenBucketBatchSampler(lengths, 120, seed=6, num_replicas=2, rank=1)
    full = sampler()
    epochs = []
    for epoch in range(3):
        full.set_epoch(epoch)
        epochs.append(list(full))
    n = len(epochs[0])
    for epoch, taken in ((0, 5), (0, n), (1, 0), (1, n - 1)):  # mid-epoch, at its end, at the next's start
        resumed = sampler()
        resumed.resume_from(epoch=epoch, batches_taken=taken)
        rest = list(resumed)
        assert rest == epochs[epoch][taken:]
        resumed.set_epoch(epoch + 1)  # the following epoch is whole
        assert list(resumed) == epochs[epoch + 1]


def bad_line_far_into_gzip(tmp_path, line: int):
    write_corpus(tmp_path / "corpus", "dev", 20, seed=9)
    prefix = write_corpus(tmp_path / "corpus", "train", 60_000, gz=True)
    path = tmp_path / "corpus" / "train.en.gz"
    rows = gzip.decompress(path.read_bytes()).split(b"\n")
    rows[line - 1] = b"caf\xe9 \xff"
    path.write_bytes(gzip.compress(b"\n".join(rows)))
    return prefix, path


@pytest.mark.parametrize("stage", ["sentencepiece", "store"])
def test_bad_utf8_far_into_a_gzip_file_is_named_with_its_line(tmp_path, stage):
    prefix, path = bad_line_far_into_gzip(tmp_path, 54_321)
    overrides = ["data.num_proc=2"]
    if stage == "store":  # a model trained elsewhere: the first to read the training split is the store
        good = write_corpus(tmp_path / "other", "train", 500)
        dm = datamodule(tmp_path / "other", good)
        dm.build_tokenizer()
        overrides.append(f"data.spm_model={next((tmp_path / 'other' / 'cache').glob('spm-*.model'))}")
    with pytest.raises(DataError, match=rf"^{path}: line 54321 is not valid UTF-8$"):
        datamodule(tmp_path, prefix, *overrides).prepare_data()
    assert not stores(tmp_path) and not list((tmp_path / "cache").glob(".tmp-*"))


def test_line_count_mismatch_and_empty_corpus_found_while_streaming(corpus, tmp_path):
    good = write_corpus(tmp_path / "other", "train", 500)
    dm = datamodule(tmp_path / "other", good)
    dm.build_tokenizer()
    model = f"data.spm_model={next((tmp_path / 'other' / 'cache').glob('spm-*.model'))}"
    src = tmp_path / "corpus" / "train.de"
    src.write_bytes(src.read_bytes() + b"one more line\n")
    with pytest.raises(DataError, match=r"train\.de has 3001 lines but .*train\.en has 3000"):
        datamodule(tmp_path, corpus, model).prepare_data()
    for lang in ("de", "en"):
        (tmp_path / "corpus" / f"train.{lang}").write_bytes(b"")
    with pytest.raises(DataError, match=r"train\.de and .*train\.en are empty"):
        datamodule(tmp_path, corpus, model).prepare_data()
    assert not stores(tmp_path)


def test_dataloader_workers_read_the_store_like_the_main_process(corpus, tmp_path):
    """Two DataLoader worker processes give the batches of the sampler's plan, each equal to the
    in-memory pipeline's batch of the same pairs, as this process does."""
    batches, plans = {}, {}
    for workers in (0, 2):
        dm = datamodule(tmp_path, corpus, f"data.num_workers={workers}")
        dm.setup("fit")
        loader = dm.train_dataloader()
        plans[workers] = list(loader.batch_sampler)[:5]  # this epoch's first five batches of indices
        batches[workers] = [b for _, b in zip(range(5), loader)]
    reference, keep = in_memory_reference(corpus, dm.tokenizer)
    assert len(keep) > 2000 and len(dm.datasets["train"]) == len(keep)
    assert plans[0] == plans[2] and len(plans[0]) == 5 and all(plans[0])
    for workers in (0, 2):
        assert len(batches[workers]) == 5, workers
        for indices, got in zip(plans[workers], batches[workers]):
            want = reference.collate(indices)
            assert got.keys() == want.keys()
            assert got["src"].size(0) == len(indices) > 0
            assert all(torch.equal(got[k], want[k]) for k in want if k != "num_tgt_tokens"), workers
            assert got["num_tgt_tokens"] == want["num_tgt_tokens"] == int((want["tgt_out"] != 0).sum()) > 0
