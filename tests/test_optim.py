"""Learning-rate schedules: the plateau schedule's bookkeeping, and that training drives it."""

from __future__ import annotations

import csv

import pytest
import torch

from attnmt.errors import ConfigError
from attnmt.optim import PlateauWarmup, prefer_fused
from attnmt.utils.config import build
from attnmt.training import train
from conftest import compose_config, tiny_overrides


def plateau(**kwargs) -> tuple[torch.optim.Optimizer, PlateauWarmup]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    return opt, PlateauWarmup(opt, **kwargs)


def test_plateau_halves_after_patience_non_improving_validations():
    opt, sched = plateau(factor=0.5, patience=2, min_lr=0.2)
    lrs = []
    for score in [10, 12, 11, 12, 12, 13, 13, 13, 13, 9, 9, 9, 9, 9, 9]:
        sched.observe(score)
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    # 10 12 (best) 11 12 12 -> third validation without improvement: x0.5; 13 best; then 13 13 13 ->
    # x0.5 again; then 9 9 9 -> would be 0.125 but min_lr=0.2 holds it at 0.2.
    assert lrs == [1, 1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.2, 0.2, 0.2, 0.2]


def test_plateau_warms_up_and_resumes_from_its_state():
    opt, sched = plateau(warmup_steps=4, patience=0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.25)
    sched.observe(5.0)
    sched.observe(4.0)  # patience 0: one bad validation halves the rate
    state = sched.state_dict()
    opt2, sched2 = plateau(warmup_steps=4, patience=0)
    sched2.load_state_dict(state)
    assert (sched2.best, sched2.scale) == (5.0, 0.5)
    for s in (sched, sched2):
        for _ in range(5):
            s.optimizer.step()
            s.step()
    assert opt.param_groups[0]["lr"] == opt2.param_groups[0]["lr"] == pytest.approx(0.5)


@pytest.mark.parametrize("key,value", [("factor", 1.0), ("factor", 0.0), ("patience", -1), ("min_lr", -1.0),
                                       ("warmup_steps", -1)])
def test_plateau_refuses_bad_values(key, value):
    with pytest.raises(ConfigError, match=f"scheduler.{key}="):
        plateau(**{key: value})


@pytest.mark.parametrize("override,precision,fused", [
    ([], "32-true", True), ([], "bf16-mixed", True),
    ([], "16-mixed", False),  # Lightning cannot clip a fused step's gradients under the fp16 scaler
    (["optimizer.fused=false"], "32-true", False), (["optimizer.fused=true"], "16-mixed", True),
])
def test_adam_from_the_config_is_fused_unless_precision_or_user_says_otherwise(override, precision, fused):
    factory = build(compose_config("train", override).optimizer, "optimizer")
    param = torch.nn.Parameter(torch.ones(3))
    opt = prefer_fused(factory, precision, "cpu")(params=[param])
    assert opt.defaults["fused"] is fused
    param.grad = torch.full_like(param, 2.0)
    opt.step()
    # Adam's first step moves every weight by lr against the gradient's sign.
    assert torch.allclose(param.detach(), torch.full((3,), 1.0 - opt.defaults["lr"]))


@pytest.mark.parametrize("precision,fused", [("32-true", True), ("bf16-mixed", True)])
def test_the_task_picks_the_fused_adam_from_its_trainers_precision(precision, fused):
    """TranslationTask.configure_optimizers passes the attached Trainer's precision and device on."""
    import pytorch_lightning as pl

    from attnmt.task import TranslationTask
    from conftest import build_tiny_model

    cfg = compose_config("train", [])
    task = TranslationTask(build_tiny_model("rnn_bahdanau"), build(cfg.optimizer, "optimizer"))
    task.trainer = pl.Trainer(accelerator="cpu", devices=1, precision=precision, logger=False)
    assert task.configure_optimizers().defaults["fused"] is fused
    task.trainer = None  # without a Trainer: the config's value, left to torch
    assert task.configure_optimizers().defaults["fused"] is None


def test_training_with_scheduler_plateau_follows_validation_bleu(tiny_data_dir, tmp_path):
    """A learning rate too small to learn anything keeps validation BLEU flat; with patience 0 every
    validation after the first halves the rate, as the logged learning rate shows."""
    cfg = compose_config("train", tiny_overrides(tiny_data_dir) + [
        "scheduler=plateau", "scheduler.patience=0", "scheduler.min_lr=0", "optimizer.lr=1e-9",
        "trainer.max_steps=12", "trainer.max_epochs=100", "trainer.val_check_interval=3",
        "trainer.check_val_every_n_epoch=null", "trainer.log_every_n_steps=1", "data.num_valid=20",
    ], tmp_path)
    train(cfg)
    with open(tmp_path / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    bleu = [float(r["val/bleu"]) for r in rows if r.get("val/bleu")]
    lr_key = next(k for k in rows[0] if k.startswith("lr-"))
    lr = {int(r["step"]): float(r[lr_key]) for r in rows if r.get(lr_key)}
    assert len(bleu) == 4 and len(set(bleu)) == 1  # flat: nothing learnt
    # Validations after steps 3, 6, 9 (and 12): the 2nd and 3rd halve the rate for the steps after.
    assert lr[3] == pytest.approx(1e-9) and lr[6] == pytest.approx(1e-9)
    assert lr[7] == pytest.approx(0.5e-9) and lr[10] == pytest.approx(0.25e-9)
