"""What a folder written by ``attnmt-export`` is: its metadata file, read and checked, and the
optional ctranslate2 package. Nothing heavy is imported here (``--help`` and ``is_exported`` answer
at once); :mod:`attnmt.decode.ct2` decodes an export."""

from __future__ import annotations

import json
from pathlib import Path

from attnmt.errors import CheckpointError, ConfigError
from attnmt.utils.legacy import upgrade_targets
from attnmt.utils.trust import check_stored_targets

METADATA = "attnmt.json"
FORMAT = "attnmt-ctranslate2"
EXTRA_HINT = "pip install 'attnmt[ctranslate2]' (or pip install ctranslate2)"


def import_ctranslate2():
    """``ctranslate2``, or a one-line error naming the extra to install."""
    try:
        import ctranslate2
    except ImportError:
        raise ConfigError(f"CTranslate2 is not installed: {EXTRA_HINT}") from None
    return ctranslate2


def is_exported(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by :func:`attnmt.deploy.export.export`."""
    return Path(path).is_dir() and (Path(path) / METADATA).is_file()


def read_metadata(path: str | Path) -> dict:
    file = Path(path) / METADATA
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{file}: not readable as JSON ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{file}: not an attnmt CTranslate2 export (format {found!r})")
    config = upgrade_targets(meta.get("config"))
    if isinstance(config, dict):  # only its data node is ever built (to find the splits)
        for key in ("model", "data"):
            if key in config:
                check_stored_targets(config[key], key, str(file))
    return meta
