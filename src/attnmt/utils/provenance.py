"""What produced a run: package versions and the git commit of the code."""

from __future__ import annotations

import functools
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("attnmt", "torch", "pytorch-lightning", "hydra-core", "omegaconf", "sentencepiece", "sacrebleu", "numpy")


def git_commit(path: Path) -> dict | None:
    """HEAD of the git checkout holding ``path`` and whether it has uncommitted changes; None outside one."""
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=path, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


@functools.lru_cache(maxsize=1)
def provenance() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions,
        "git": git_commit(Path(__file__).resolve().parent),
    }
