"""A Hydra callback that checks the output folder can be written before anything runs.

Hydra creates the folder itself and would report a failure with a traceback; this names the
folder in one line (exit status 2) instead.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


def unwritable_reason(folder: Path) -> str | None:
    """Why ``folder`` cannot be created or written to, or None if it can."""
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


class CheckOutputDir(Callback):
    def _check(self, key: str, folder: str) -> None:
        reason = unwritable_reason(Path(folder))
        if reason:
            print(f"error: {key}={folder}: cannot write the output folder: {reason}", file=sys.stderr, flush=True)
            sys.exit(2)

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._check("hydra.run.dir", config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._check("hydra.sweep.dir", config.hydra.sweep.dir)
