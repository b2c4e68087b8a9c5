"""Multi30k task 1 (Elliott et al., 2016): image captions in en, de, fr and cs, raw (cased,
untokenized, gzip). Read from a local folder, or downloaded once from the dataset's repository,
checked against pinned SHA-256 sums, and cached."""

from __future__ import annotations

import hashlib
import logging
import urllib.error
import urllib.request
from pathlib import Path

from attnmt.data.datamodule import SPLITS, TranslationDataModule
from attnmt.errors import ConfigError, DataError
from attnmt.utils.io import atomic_path
from attnmt.utils.schema import PositiveInt

log = logging.getLogger(__name__)

LANGS = ("en", "de", "fr", "cs")
# The multi30k/dataset repository at a fixed commit: data/task1/raw/<stem>.<lang>.gz
UPSTREAM = "https://raw.githubusercontent.com/multi30k/dataset/a3d2e0d26b56f3846f66a952536ffed4e401d05a/data/task1/raw"
TEST_SETS = ("test_2016_flickr",)
SHA256 = {
    "test_2016_flickr.cs.gz": "200a4a74cc9560f051924abb9803be008d1908d77f747e9141aeb86dfd2797f1",
    "test_2016_flickr.de.gz": "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8",
    "test_2016_flickr.en.gz": "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
    "test_2016_flickr.fr.gz": "6d326e188d259fb1d04ac19eae3af956559b3a0b93d7635e56c90987c40c8b90",
    "train.cs.gz": "a65adb8b32e3bc664f21ecba7a6e7f6950fd1f405e135f7c312faabdb6255077",
    "train.de.gz": "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6",
    "train.en.gz": "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
    "train.fr.gz": "622e75069e9f4c577425c4f277116ce66e63a2401c0a2312d90073cb12379a3c",
    "val.cs.gz": "b63226e05c4bd5dd6a42897d74b86a1b9d2c31498252c572b1ea7f7996927fcc",
    "val.de.gz": "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a",
    "val.en.gz": "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
    "val.fr.gz": "ca3106f1a72390591d25f6c45cb4cd39dec4cd3f123e099748a3ce5256c160e9",
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def download(url: str, path: Path, expected: str, timeout: float = 60.0) -> None:
    """Fetch ``url`` into ``path`` atomically; a failed fetch or a checksum mismatch leaves nothing."""
    log.info("Downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            data = response.read()
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise DataError(
            f"{url}: download failed ({getattr(e, 'reason', e)}); give data.source_dir=FOLDER holding the raw files"
        ) from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise DataError(f"{url}: checksum mismatch (sha256 {actual[:12]}..., expected {expected[:12]}...); "
                        "nothing was cached")
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


class Multi30kDataModule(TranslationDataModule):
    """``src_lang`` -> ``tgt_lang``, any two of en, de, fr, cs. Splits: train, valid (``val``),
    test (``test_2016_flickr``). Files come from ``source_dir`` when that folder exists, else from
    ``cache_dir`` (downloaded there from ``base_url`` when missing)."""

    def __init__(
        self,
        source_dir: str | None,
        cache_dir: str,
        src_lang: str = "de",
        tgt_lang: str = "en",
        test_set: str = "test_2016_flickr",
        base_url: str = UPSTREAM,
        max_len: PositiveInt = 100,
        **kwargs,
    ):
        for key, lang in (("src_lang", src_lang), ("tgt_lang", tgt_lang)):
            if lang not in LANGS:
                raise ConfigError(f"data.{key}={lang!r} is not a Multi30k language ({', '.join(LANGS)})")
        if src_lang == tgt_lang:
            raise ConfigError(f"data.src_lang and data.tgt_lang are both {src_lang!r}: pick two languages")
        if test_set not in TEST_SETS:
            raise ConfigError(f"data.test_set={test_set!r} is not one of {', '.join(TEST_SETS)}")
        super().__init__(src_lang=src_lang, tgt_lang=tgt_lang, cache_dir=cache_dir, max_len=max_len, **kwargs)
        self.source_dir = Path(source_dir) if source_dir else None
        self.stems = {"train": "train", "valid": "val", "test": test_set}
        self.base_url = base_url.rstrip("/")
        self._checked = False

    @property
    def folder(self) -> Path:
        if self.source_dir is not None and self.source_dir.is_dir():
            return self.source_dir
        return Path(self.cache_dir)

    def needed(self) -> list[str]:
        return [f"{self.stems[s]}.{lang}.gz" for s in SPLITS for lang in (self.src_lang, self.tgt_lang)]

    def prepare_corpus(self) -> None:
        if self._checked:
            return
        folder = self.folder
        local = folder == self.source_dir
        if not local and self.source_dir is not None:
            log.info("data.source_dir=%s does not exist: using %s (downloading what is missing)",
                     self.source_dir, folder)
        for name in self.needed():
            path = folder / name
            if not path.is_file():
                if local:
                    raise DataError(
                        f"{path}: no such file (data.source_dir must hold Multi30k's raw <split>.<lang>.gz files)"
                    )
                download(f"{self.base_url}/{name}", path, SHA256[name])
            elif sha256(path) != SHA256[name]:
                hint = "replace it with the original file" if local else "delete it to download it again"
                raise DataError(f"{path}: checksum mismatch with Multi30k's {name}; {hint}")
        self._checked = True

    def split_files(self, split: str) -> tuple[Path, Path]:
        if split not in self.stems:
            raise ConfigError(f"split={split!r} is not one of {', '.join(SPLITS)}")
        stem = self.stems[split]
        return self.folder / f"{stem}.{self.src_lang}.gz", self.folder / f"{stem}.{self.tgt_lang}.gz"
