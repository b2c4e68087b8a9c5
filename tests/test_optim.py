"""Optimizers and learning-rate schedules: each schedule's curve, the bookkeeping of the plateau
and time-budget schedules, and that training drives them."""

from __future__ import annotations

import csv

import pytest
import torch

from attnmt.errors import ConfigError
from attnmt.train.optim import LinearDecayWarmup, PlateauWarmup, prefer_fused
from attnmt.train.run import train
from attnmt.utils.config import build

from conftest import compose_config, tiny_overrides


def logged_lrs(run) -> dict[int, float]:
    """The learning rate logged at each step of a training run (csv/metrics.csv)."""
    with open(run / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    lr_key = next(k for k in rows[0] if k.startswith("lr-"))
    return {int(r["step"]): float(r[lr_key]) for r in rows if r.get(lr_key)}


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


@pytest.mark.parametrize("precision,fused", [("32-true", True), ("bf16-mixed", True), ("16-mixed", False)])
def test_the_task_picks_the_fused_adam_from_its_trainers_precision(precision, fused):
    """TranslationTask.configure_optimizers passes the attached Trainer's precision and device on."""
    import pytorch_lightning as pl
    from pytorch_lightning.plugins import MixedPrecision

    from attnmt.train.task import TranslationTask

    from conftest import build_tiny_model

    cfg = compose_config("train", [])
    task = TranslationTask(build_tiny_model("rnn_bahdanau"), build(cfg.optimizer, "optimizer"))
    # On a CPU, Trainer(precision="16-mixed") turns itself into bf16-mixed; the plugin keeps fp16
    # with its gradient scaler, as on a GPU.
    kwargs = {"plugins": [MixedPrecision("16-mixed", "cpu")]} if precision == "16-mixed" else {"precision": precision}
    task.trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, **kwargs)
    assert str(task.trainer.precision) == precision
    assert task.configure_optimizers().defaults["fused"] is fused
    task.trainer = None  # without a Trainer: the config's value, left to torch
    assert task.configure_optimizers().defaults["fused"] is None


@pytest.mark.slow
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
        bleu = [float(r["val/bleu"]) for r in csv.DictReader(f) if r.get("val/bleu")]
    lr = logged_lrs(tmp_path)
    assert len(bleu) == 4 and len(set(bleu)) == 1  # flat: nothing learnt
    # Validations after steps 3, 6, 9 (and 12): the 2nd and 3rd halve the rate for the steps after.
    assert lr[3] == pytest.approx(1e-9) and lr[6] == pytest.approx(1e-9)
    assert lr[7] == pytest.approx(0.5e-9) and lr[10] == pytest.approx(0.25e-9)


def schedule_lrs(name: str, steps: list[int], *overrides: str, lr: float = 2.0) -> list[float]:
    """The learning rate of updates ``steps`` (counted from 0) under ``conf/scheduler/<name>.yaml``."""
    cfg = compose_config("train", [f"scheduler={name}", *overrides])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = build(cfg.scheduler, "scheduler")(optimizer=opt)
    out = {}
    for step in range(max(steps) + 1):
        out[step] = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
    return [out[s] for s in steps]


def test_noam_schedule_warms_up_linearly_then_decays_with_the_inverse_square_root():
    # Peak lr at update warmup_steps - 1, then lr * sqrt(warmup_steps / (step + 1)).
    lrs = schedule_lrs("noam", [0, 1, 3, 4, 15, 99, 399], "scheduler.warmup_steps=4")
    assert lrs == pytest.approx([0.5, 1.0, 2.0, 2.0 * (4 / 5) ** 0.5, 1.0, 0.4, 0.2])


def test_constant_schedule_warms_up_then_holds_the_optimizers_rate():
    assert schedule_lrs("constant", [0, 1, 50]) == [2.0, 2.0, 2.0]
    assert schedule_lrs("constant", [0, 1, 2, 3, 50], "scheduler.warmup_steps=3") == pytest.approx(
        [2 / 3, 4 / 3, 2.0, 2.0, 2.0])


@pytest.mark.slow
def test_linear_schedule_ends_with_trainer_max_steps(tiny_data_dir, tmp_path):
    cfg = compose_config("train", tiny_overrides(tiny_data_dir) + [
        "scheduler=linear", "scheduler.warmup_steps=1", "trainer.max_steps=6", "trainer.log_every_n_steps=1",
    ], tmp_path)
    train(cfg)
    # Warm-up to the peak at update 1, then down a fifth per update: the last (update 5) at peak / 5.
    peak = cfg.optimizer.lr
    assert list(logged_lrs(tmp_path).values()) == pytest.approx(
        [peak, peak, 0.8 * peak, 0.6 * peak, 0.4 * peak, 0.2 * peak]
    )


def lrs_of(sched: LinearDecayWarmup, n: int) -> list[float]:
    out = []
    for _ in range(n):
        out.append(sched.optimizer.param_groups[0]["lr"])
        sched.optimizer.step()
        sched.step()
    return out


def linear(**kwargs) -> LinearDecayWarmup:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    return LinearDecayWarmup(opt, **{"warmup_steps": 0, **kwargs})  # no warm-up unless a test asks


def test_linear_schedule_warms_up_then_reaches_min_lr_after_the_last_update():
    assert lrs_of(linear(total_steps=10, warmup_steps=2), 12) == pytest.approx(
        [0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0.0, 0.0])
    assert lrs_of(linear(total_steps=4, min_lr=0.2), 6) == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2, 0.2])


@pytest.mark.parametrize("kwargs,key", [({"total_steps": -1}, "total_steps"),
                                        ({"total_steps": 5, "warmup_steps": 5}, "warmup_steps"),
                                        ({"total_steps": 5, "min_lr": -1.0}, "min_lr")])
def test_linear_schedule_refuses_bad_values(kwargs, key):
    with pytest.raises(ConfigError, match=f"scheduler.{key}="):
        linear(**kwargs)


def lrs_at_times(sched: LinearDecayWarmup, times: list[float]) -> list[float]:
    """The rate of each update when the clock reads ``times[i]`` as its schedule steps."""
    out = []
    for now in times:
        out.append(sched.optimizer.param_groups[0]["lr"])
        sched.optimizer.step()
        sched.tick(now)
        sched.step()
    return out


def test_linear_schedule_with_a_time_budget_reaches_min_lr_when_the_time_ends(monkeypatch):
    monkeypatch.setattr("attnmt.train.optim.time.monotonic", lambda: 0.0)  # time moves only by tick()
    # Warm-up (2 updates) ends at second 20; the line then runs from the peak at 20 s to 0 at 100 s.
    sched = linear(total_time=100, warmup_steps=2)
    assert lrs_at_times(sched, [10, 20, 60, 80, 100, 150, 160]) == pytest.approx(
        [0.5, 1.0, 1.0, 0.5, 0.25, 0.0, 0.0])
    # Both budgets: whichever ends first sets the rate (here the 4 updates).
    sched = linear(total_time="00:00:01:40", total_steps=4)
    assert lrs_at_times(sched, [0, 10, 20, 30, 40]) == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    # Without any update budget, trainer.max_steps=-1 is fine when there is a time budget.
    sched = linear(total_steps=-1, total_time=10, min_lr=0.5)
    assert lrs_at_times(sched, [5, 10, 20]) == pytest.approx([1.0, 0.75, 0.5])


def test_linear_schedule_time_budget_resumes_with_the_elapsed_time(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("attnmt.train.optim.time.monotonic", lambda: clock[0])
    sched = linear(total_time=100)
    clock[0] += 30
    sched.optimizer.step()
    sched.step()
    assert sched.optimizer.param_groups[0]["lr"] == pytest.approx(0.7)  # (100 - 30) / 100
    state = sched.state_dict()
    clock[0] = 5.0  # another process: its own monotonic clock
    resumed = linear(total_time=100)
    resumed.load_state_dict(state)
    assert resumed.elapsed() == pytest.approx(30)
    clock[0] += 20
    resumed.optimizer.step()
    resumed.step()
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(0.5)


@pytest.mark.parametrize("value", ["1h", "01:00:00", 0, -5])
def test_linear_schedule_refuses_a_bad_time_budget(value):
    with pytest.raises(ConfigError, match="scheduler.total_time=.*'DD:HH:MM:SS'"):
        linear(total_time=value)


@pytest.mark.slow
def test_training_with_a_time_budget_ticks_the_schedule_each_step(tiny_data_dir, tmp_path, monkeypatch):
    # A budget far shorter than one update: after warm-up the rate is min_lr (0) from the next update.
    ticks = []
    tick = LinearDecayWarmup.tick
    monkeypatch.setattr(LinearDecayWarmup, "tick", lambda self, now=None: (ticks.append(now), tick(self, now))[1])
    run = tmp_path / "run"
    cfg = compose_config("train", tiny_overrides(tiny_data_dir) + [
        "scheduler=linear", "scheduler.warmup_steps=1", "scheduler.total_time=0.001", "trainer.max_steps=4",
        "trainer.log_every_n_steps=1",
    ], run)
    train(cfg)
    lr = logged_lrs(run)
    assert lr[0] == pytest.approx(cfg.optimizer.lr) and lr[2] == 0.0 and lr[3] == 0.0
    assert len(ticks) == 4 and all(isinstance(t, float) for t in ticks)  # the task's, once per update
