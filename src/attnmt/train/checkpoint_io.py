"""Checkpoints written to a temporary file and renamed, so a crash mid-save never leaves a
truncated ``.ckpt`` that looks valid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from attnmt.utils.io import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        with atomic_path(Path(path)) as tmp:
            torch.save(checkpoint, tmp)
