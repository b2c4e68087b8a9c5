"""When the training state is saved: LastCheckpoint's timer (every_n_minutes), on a fake clock."""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch

from attnmt.train.run import train

from conftest import compose_config, tiny_overrides

CLOCK = [0.0]  # seconds; what time.monotonic() returns during the test


class SlowUpdates(pl.Callback):
    """Makes every update take ``seconds`` of the fake clock."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        CLOCK[0] = (trainer.global_step + 1) * self.seconds  # the time when this update ends


@pytest.mark.parametrize(
    "minutes,seconds_per_update,saved_after",
    [
        (1.0, 30, [2, 4, 6, 7]),  # every second update, and at the end (7 updates)
        (1.5, 40, [3, 6, 7]),  # 90 s have passed after 120 s, i.e. every third update
    ],
)
def test_last_checkpoint_every_n_minutes(
    minutes, seconds_per_update, saved_after, tiny_data_dir, tmp_path, monkeypatch
):
    cfg = compose_config(
        "train",
        tiny_overrides(tiny_data_dir)
        + [
            "trainer.max_steps=7",
            "callbacks.last_checkpoint.every_n_train_steps=null",
            f"callbacks.last_checkpoint.every_n_minutes={minutes}",
            "+callbacks.slow_updates._target_=test_callbacks.SlowUpdates",
            f"+callbacks.slow_updates.seconds={seconds_per_update}",
        ],
        tmp_path,
    )
    # The fake clock for the callback's module only (a frozen clock everywhere stalls other waits).
    module = importlib.import_module(cfg.callbacks.last_checkpoint._target_.rsplit(".", 1)[0])
    CLOCK[0] = 0.0
    fake_time = SimpleNamespace(
        **{k: getattr(time, k) for k in dir(time) if not k.startswith("__")}
    )
    fake_time.monotonic = lambda: CLOCK[0]
    monkeypatch.setattr(module, "time", fake_time)
    saves = []
    save_checkpoint = pl.Trainer.save_checkpoint

    def recorded(trainer, filepath, *args, **kwargs):
        if Path(filepath).name.startswith("last"):
            saves.append(trainer.global_step)
        return save_checkpoint(trainer, filepath, *args, **kwargs)

    monkeypatch.setattr(pl.Trainer, "save_checkpoint", recorded)
    train(cfg)
    assert saves == saved_after
    folder = tmp_path / "checkpoints"
    steps = [
        torch.load(folder / name, weights_only=False)["global_step"]
        for name in ("last.prev.ckpt", "last.ckpt")
    ]
    assert steps == saved_after[-2:]
