"""What produced a run: the torch build, package versions, the git commit and the hardware used."""

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


def torch_build() -> dict:
    """The torch that runs, as it names itself: ``version`` keeps the build tag (``2.14.1+cu130``,
    ``2.14.1+cpu``) that the installed distribution's metadata drops; ``cuda`` and ``cudnn`` are
    the versions this build was made with (None for a CPU-only build)."""
    import torch

    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"version": str(torch.__version__), "cuda": torch.version.cuda, "cudnn": cudnn}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(trainer) -> dict:
    """The accelerator, devices and precision a Lightning ``trainer`` runs on in this process."""
    import torch

    device = trainer.strategy.root_device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {
        "accelerator": type(trainer.accelerator).__name__.removesuffix("Accelerator").lower(),
        "device": str(device),
        "device_name": name,
        "devices_per_node": trainer.num_devices,
        "num_nodes": trainer.num_nodes,
        "precision": str(trainer.precision),
        "threads": torch.get_num_threads(),
    }


@functools.lru_cache(maxsize=1)
def provenance() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    build = torch_build()
    versions["torch"] = build["version"]
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": build,
        "packages": versions,
        "git": git_commit(Path(__file__).resolve().parent),
    }
