"""Every documented precision trains: loss finite and falling, gradients clipped, auto chosen by the hardware."""

from __future__ import annotations

import csv

import pytest
import pytorch_lightning as pl
import torch
import yaml

from attnmt.train.run import train
from attnmt.utils import precision as precision_mod

from conftest import compose_config, tiny_overrides

CLIP = 0.05  # far below the gradient norms of these steps: every update is clipped
STEPS = 40
HAS_CUDA = torch.cuda.is_available()
GPU_BF16 = HAS_CUDA and torch.cuda.get_device_capability() >= (8, 0)


class ClipProbe(pl.Callback):
    """Records the gradient norm each optimizer step used (after clipping): the gradients are
    still there when the batch ends (they are cleared when the next step begins)."""

    norms: list[float] = []

    def on_train_start(self, trainer, pl_module) -> None:
        ClipProbe.norms = []

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        ClipProbe.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))


def logged(run_dir, key: str) -> list[float]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return [float(r[key]) for r in csv.DictReader(f) if r.get(key)]


CASES = [
    ("rnn_bahdanau", "cpu", "32"),
    ("rnn_bahdanau", "cpu", "bf16-mixed"),
    ("rnn_luong", "cpu", "bf16-mixed"),
    ("transformer", "cpu", "bf16-mixed"),
    pytest.param("transformer", "gpu", "bf16-mixed", marks=[pytest.mark.gpu, pytest.mark.skipif(
        not GPU_BF16, reason="GPU bf16-mixed needs a CUDA GPU of compute capability >= 8.0; none here")]),
    pytest.param("transformer", "gpu", "16-mixed", marks=[pytest.mark.gpu, pytest.mark.skipif(
        not HAS_CUDA, reason="16-mixed needs a CUDA GPU; none here")]),
]


@pytest.mark.slow
@pytest.mark.parametrize("model, accelerator, precision", CASES)
def test_each_precision_trains_with_clipped_gradients(tiny_data_dir, tmp_path, model, accelerator, precision):
    cfg = compose_config("train", tiny_overrides(tiny_data_dir, model) + [
        f"trainer.accelerator={accelerator}", f"trainer.precision={precision}", f"trainer.max_steps={STEPS}",
        "trainer.log_every_n_steps=1", f"trainer.gradient_clip_val={CLIP}", "+trainer.limit_val_batches=0",
        "scheduler=constant", "+callbacks.probe._target_=test_precision.ClipProbe",
    ], tmp_path)
    train(cfg)
    losses, norms = logged(tmp_path, "train/loss"), ClipProbe.norms
    assert len(losses) == STEPS and all(map(torch.isfinite, torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5, losses  # it learns
    assert len(norms) == STEPS and max(norms) <= CLIP * (1 + 1e-3), norms  # every update clipped
    if precision != "16-mixed":  # its gradient scaler skips non-finite steps itself: no norm logged
        assert min(logged(tmp_path, "train/grad_norm")) > CLIP  # ... from a larger norm
    start = yaml.safe_load((tmp_path / "run_info.yaml").read_text())[0]
    assert start["precision"]["used"] == precision and precision in start["hardware"]["precision"]


def test_auto_is_bf16_only_where_the_hardware_runs_it_fast(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision_mod, "cpu_bf16", lambda: "AVX512-BF16")
    assert precision_mod.choose_precision("cpu") == ("bf16-mixed", "the CPU has AVX512-BF16 instructions")
    assert precision_mod.choose_precision("auto")[0] == "bf16-mixed"
    monkeypatch.setattr(precision_mod, "cpu_bf16", lambda: None)
    used, why = precision_mod.choose_precision("cpu")
    assert used == "32" and "neither AVX512-BF16 nor AMX-BF16" in why
    assert precision_mod.choose_precision("gpu") == ("32", "no CUDA device is visible")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Some GPU")
    for capability, expected in [((7, 5), "32"), ((8, 0), "bf16-mixed"), ((9, 0), "bf16-mixed")]:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, c=capability: c)
        used, why = precision_mod.choose_precision("gpu")
        assert used == expected and f"{capability[0]}.{capability[1]}" in why


def test_cpu_bf16_is_read_from_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    for flags, expected in [({"avx2", "avx512f"}, None), ({"avx512f", "avx512_bf16"}, "AVX512-BF16"),
                            ({"avx512_bf16", "amx_bf16", "amx_tile"}, "AMX-BF16")]:
        monkeypatch.setattr(precision_mod, "cpu_flags", lambda f=flags: f)
        assert precision_mod.cpu_bf16() == expected


def test_auto_precision_is_recorded_with_its_reason(tiny_data_dir, tmp_path):
    cfg = compose_config("train", tiny_overrides(tiny_data_dir) + [
        "trainer.precision=auto", "trainer.max_steps=2", "+trainer.limit_val_batches=0"], tmp_path)
    train(cfg)
    start = yaml.safe_load((tmp_path / "run_info.yaml").read_text())[0]
    used, why = precision_mod.choose_precision("cpu")
    assert start["precision"] == {"asked": "auto", "used": used, "why": why}
    assert used in start["hardware"]["precision"]


@pytest.mark.slow
def test_bf16_run_resumes_exactly_averages_and_evaluates(tiny_data_dir, tmp_path, capsys):
    """bf16-mixed keeps float32 weights and optimizer state: a run stopped at step 12 and resumed
    to 24 logs the uninterrupted run's losses; its validation checkpoints average and decode."""
    from attnmt.eval.evaluate import evaluate
    from attnmt.train.average import main as average_main

    def run(folder, steps, *extra):
        cfg = compose_config("train", tiny_overrides(tiny_data_dir) + [
            "trainer.precision=bf16-mixed", f"trainer.max_steps={steps}", "trainer.max_epochs=100",
            "trainer.log_every_n_steps=1", "trainer.val_check_interval=6", "trainer.check_val_every_n_epoch=null",
            "data.num_valid=20", "callbacks.val_checkpoints.save_top_k=-1", *extra], folder)
        train(cfg)
        return {i: loss for i, loss in enumerate(logged(folder, "train/loss"))}

    whole = run(tmp_path / "whole", 24)
    run(tmp_path / "split", 12)
    resumed = run(tmp_path / "split", 24, f"resume={tmp_path / 'split'}")
    assert len(whole) == len(resumed) == 24
    for step in range(12, 24):
        assert resumed[step] == pytest.approx(whole[step], rel=1e-5), step

    average_main([f"ckpt={tmp_path / 'split'}", "last=2"])
    assert "averaged 2 checkpoints (steps 18, 24)" in capsys.readouterr().out
    cfg = compose_config("evaluate", [f"ckpt={tmp_path / 'split' / 'checkpoints' / 'averaged.ckpt'}",
                                      "decode.beam_size=1", "eval.num_plots=0"], tmp_path / "eval")
    results = evaluate(cfg)
    assert results["num_sentences"] == 200 and 0 <= results["bleu"]["score"] <= 100
