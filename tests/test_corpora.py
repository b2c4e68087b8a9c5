"""Multi30k (read in place, or downloaded and checked) and a user's own parallel files."""

from __future__ import annotations

import gzip
import shutil

import pytest

from attnmt.data.io import read_parallel
from attnmt.data.multi30k import SHA256
from attnmt.errors import ConfigError, DataError
from attnmt.utils.config import build

from conftest import SHARED_DATA, compose_config

MULTI30K = SHARED_DATA / "multi30k"
needs_multi30k = pytest.mark.skipif(
    not (MULTI30K / "train.de.gz").is_file(),
    reason=f"Multi30k raw files not found in {MULTI30K} (see ../shared/data/README.md)",
)
LINES = {"train": 29000, "valid": 1014, "test": 1000}
# The first line of test_2016_flickr in each language, untokenized.
FIRST_TEST_LINE = {
    "de": "Ein Mann mit einem orangefarbenen Hut, der etwas anstarrt.",
    "en": "A man in an orange hat starring at something.",
    "fr": "Un homme avec un chapeau orange regardant quelque chose.",
    "cs": "Muž v oranžovém klobouku na něco zírá.",
}


def multi30k(tmp_path, *overrides):
    cfg = compose_config("train", ["data=multi30k", f"data.cache_dir={tmp_path / 'cache'}", *overrides], tmp_path)
    return build(cfg.data, "data")


@needs_multi30k
@pytest.mark.parametrize(("src", "tgt"), [("de", "en"), ("en", "de"), ("fr", "en"), ("en", "cs")])
def test_multi30k_reads_the_local_folder_in_both_directions(src, tgt, tmp_path):
    dm = multi30k(tmp_path, f"data.source_dir={MULTI30K}", f"data.src_lang={src}", f"data.tgt_lang={tgt}")
    dm.prepare_corpus()
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").glob("*.gz"))  # nothing copied
    for split, n in LINES.items():
        src_file, tgt_file = dm.split_files(split)
        assert src_file.parent == MULTI30K and src_file.name.endswith(f".{src}.gz")
        s, t = read_parallel(src_file, tgt_file)
        assert len(s) == len(t) == n
    assert dm.split_files("test")[0].name == f"test_2016_flickr.{src}.gz"
    src_line, tgt_line = (lines[0] for lines in read_parallel(*dm.split_files("test")))
    assert (src_line, tgt_line) == (FIRST_TEST_LINE[src], FIRST_TEST_LINE[tgt])  # each side's language, raw
    assert dm.references("test")[0] == tgt_line


@needs_multi30k
def test_multi30k_downloads_verifies_and_caches(tmp_path):
    # The shared folder stands in for the upstream repository (tests never use the network).
    dm = multi30k(tmp_path, f"data.source_dir={tmp_path / 'absent'}", f"data.base_url={MULTI30K.as_uri()}")
    dm.prepare_corpus()
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert cached == sorted(
        f"{stem}.{lang}.gz" for stem in ("train", "val", "test_2016_flickr") for lang in ("de", "en")
    )
    assert len(read_parallel(*dm.split_files("train"))[0]) == 29000


def fake_upstream(folder, wrong: str):
    folder.mkdir()
    for name in SHA256:
        with gzip.open(folder / name, "wt") as f:
            f.write("not the real file\n" if name == wrong else "")
    return folder


def test_checksum_mismatch_on_download_leaves_no_cache(tmp_path):
    upstream = fake_upstream(tmp_path / "upstream", "train.de.gz")
    dm = multi30k(tmp_path, "data.source_dir=null", f"data.base_url={upstream.as_uri()}")
    with pytest.raises(DataError, match=r"train\.de\.gz: checksum mismatch"):
        dm.prepare_corpus()
    assert not list((tmp_path / "cache").glob("*train*"))  # not even a temporary file


def test_failed_download_names_the_url_and_the_way_out(tmp_path):
    dm = multi30k(tmp_path, "data.source_dir=null", f"data.base_url={(tmp_path / 'nowhere').as_uri()}")
    with pytest.raises(DataError, match=r"nowhere/train\.de\.gz: download failed.*data\.source_dir"):
        dm.prepare_corpus()
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


@needs_multi30k
def test_a_damaged_local_file_is_refused(tmp_path):
    local = tmp_path / "local"
    shutil.copytree(MULTI30K, local)
    (local / "val.en.gz").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"val\.en\.gz: checksum mismatch"):
        multi30k(tmp_path, f"data.source_dir={local}").prepare_corpus()
    (local / "val.en.gz").unlink()
    with pytest.raises(DataError, match=r"val\.en\.gz: no such file"):
        multi30k(tmp_path, f"data.source_dir={local}").prepare_corpus()


@pytest.mark.parametrize(("overrides", "message"), [
    (["data.src_lang=es"], "data.src_lang='es' is not a Multi30k language"),
    (["data.src_lang=en", "data.tgt_lang=en"], "both 'en'"),
    (["data.test_set=test_2018"], "data.test_set='test_2018'"),
])
def test_multi30k_bad_languages(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        multi30k(tmp_path, *overrides)


def test_user_corpus_in_plain_and_gzip_files(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "train.de").write_text("".join(f"das haus {i}\n" for i in range(50)))
    with gzip.open(corpus / "train.en.gz", "wt") as f:
        f.write("".join(f"the house {i}\n" for i in range(50)))
    (corpus / "dev.de").write_text("ein haus\n")
    (corpus / "dev.en").write_text("a house\n")
    (corpus / "dev.align").write_text("0-0 1-1\n")
    cfg = compose_config("train", [
        "data=parallel", f"data.train_prefix={corpus}/train", f"data.valid_prefix={corpus}/dev",
        "data.src_lang=de", "data.tgt_lang=en", f"data.cache_dir={tmp_path}/cache", "data.vocab_size=40",
    ], tmp_path)
    dm = build(cfg.data, "data")
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 50 and len(dm.datasets["valid"]) == 1
    assert dm.split_files("train")[1].name == "train.en.gz"
    assert dm.alignment_file("valid") == corpus / "dev.align" and dm.alignment_file("train") is None
    assert list((tmp_path / "cache").glob("spm-joint-*.model"))
    with pytest.raises(ConfigError, match="data.test_prefix is not set"):
        dm.split_files("test")
    (corpus / "dev.en").unlink()
    with pytest.raises(DataError, match=r"dev\.en: no such file \(also tried .*dev\.en\.gz\)"):
        build(cfg.data, "data").prepare_corpus()
