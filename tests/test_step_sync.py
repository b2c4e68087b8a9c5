"""A training step never waits for the host: nothing in the forward pass, loss, backward, non-finite
guard, clipping or optimizer step reads a value back from the device.

On a CPU every tensor is already on the host, so the test makes each way Python code has of reading
one back (``item``, ``tolist``, ``bool(t)``, ``int(t)``, ...) raise while Lightning runs the
optimizer step (the closure inside it runs ``training_step``, backward, ``on_before_optimizer_step``
and clipping). On CUDA, ``torch.cuda.set_sync_debug_mode("error")`` catches every synchronising
call, also those made from C++.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attnmt.train.run import train  # noqa: E402
from attnmt.train.task import TranslationTask  # noqa: E402

from conftest import MODELS, compose_config, tiny_overrides  # noqa: E402

READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__")


class HostRead(AssertionError):
    pass


@contextlib.contextmanager
def no_host_reads():
    def refuse(name):
        def read(self, *args, **kwargs):
            raise HostRead(f"Tensor.{name}() read a value back inside the training step")
        return read

    saved = {name: getattr(torch.Tensor, name) for name in READS}
    try:
        for name in READS:
            setattr(torch.Tensor, name, refuse(name))
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


def guard_steps(monkeypatch, counter: list[int]) -> None:
    real = TranslationTask.optimizer_step

    def optimizer_step(self, *args, **kwargs):
        with no_host_reads():
            result = real(self, *args, **kwargs)
        counter.append(1)
        return result

    monkeypatch.setattr(TranslationTask, "optimizer_step", optimizer_step)


def step_config(data_dir: Path, out: Path, model: str, *extra: str):
    return compose_config("train", tiny_overrides(data_dir, model) + [
        "trainer.max_steps=4", "trainer.log_every_n_steps=1", "+trainer.limit_val_batches=0",
        "trainer.num_sanity_val_steps=0", *extra], out)


@pytest.mark.parametrize("model", MODELS)
def test_a_training_step_reads_nothing_back_from_the_device(model, tiny_data_dir, tmp_path, monkeypatch):
    steps: list[int] = []
    guard_steps(monkeypatch, steps)
    train(step_config(tiny_data_dir, tmp_path, model))
    assert len(steps) == 4


def test_a_skipped_non_finite_step_reads_nothing_back_either(tiny_data_dir, tmp_path, monkeypatch):
    """nonfinite=skip with a poisoned loss: the update is skipped on the device, and counted."""
    real = TranslationTask.loss

    def loss(self, batch, label_smoothing):
        value, ntokens = real(self, batch, label_smoothing)
        return (value * float("nan") if self.training and self.trainer.global_step == 1 else value), ntokens

    monkeypatch.setattr(TranslationTask, "loss", loss)
    steps: list[int] = []
    guard_steps(monkeypatch, steps)
    train(step_config(tiny_data_dir, tmp_path, "transformer", "task.nonfinite=skip"))
    assert len(steps) == 4
    assert yaml.safe_load((tmp_path / "summary.yaml").read_text())["skipped_batches"] == 1


def test_the_check_catches_a_host_read(tiny_data_dir, tmp_path, monkeypatch):
    """The guard itself works: a step that reads its loss back fails the run."""
    real = TranslationTask.training_step

    def training_step(self, batch, batch_idx):
        loss = real(self, batch, batch_idx)
        if loss > 100:  # bool(tensor): a read
            pass
        return loss

    monkeypatch.setattr(TranslationTask, "training_step", training_step)
    guard_steps(monkeypatch, [])
    with pytest.raises(HostRead):
        train(step_config(tiny_data_dir, tmp_path, "rnn_bahdanau"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none here")
@pytest.mark.parametrize("model", MODELS)
def test_a_cuda_training_step_does_not_synchronize(model, tiny_data_dir, tmp_path, monkeypatch):
    real = TranslationTask.optimizer_step

    def optimizer_step(self, *args, **kwargs):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return real(self, *args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(TranslationTask, "optimizer_step", optimizer_step)
    train(step_config(tiny_data_dir, tmp_path, model, "trainer=gpu", "trainer.precision=bf16-mixed"))
