"""The linear-decay schedule, validation checkpoints and checkpoint averaging (attnmt-average)."""

from __future__ import annotations

import csv

import pytest
import torch

from attnmt.average import main as average_main
from attnmt.checkpoint import load_for_decoding
from attnmt.errors import ConfigError
from attnmt.optim import LinearDecayWarmup
from attnmt.training import train
from conftest import compose_config, tiny_overrides


def lrs_of(sched: LinearDecayWarmup, n: int) -> list[float]:
    out = []
    for _ in range(n):
        out.append(sched.optimizer.param_groups[0]["lr"])
        sched.optimizer.step()
        sched.step()
    return out


def linear(**kwargs) -> LinearDecayWarmup:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    return LinearDecayWarmup(opt, **kwargs)


def test_linear_schedule_warms_up_then_reaches_min_lr_after_the_last_update():
    assert lrs_of(linear(total_steps=10, warmup_steps=2), 12) == pytest.approx(
        [0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0.0, 0.0])
    assert lrs_of(linear(total_steps=4, warmup_steps=0, min_lr=0.2), 6) == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2, 0.2])


@pytest.mark.parametrize("kwargs,key", [({"total_steps": -1}, "total_steps"), ({"total_steps": 5, "warmup_steps": 5}, "warmup_steps"),
                                        ({"total_steps": 5, "min_lr": -1.0}, "min_lr")])
def test_linear_schedule_refuses_bad_values(kwargs, key):
    with pytest.raises(ConfigError, match=f"scheduler.{key}="):
        linear(**kwargs)


def logged_lrs(run) -> dict[int, float]:
    """The learning rate logged at each step of a training run (csv/metrics.csv)."""
    with open(run / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    lr_key = next(k for k in rows[0] if k.startswith("lr-"))
    return {int(r["step"]): float(r[lr_key]) for r in rows if r.get(lr_key)}


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
    monkeypatch.setattr("attnmt.optim.time.monotonic", lambda: 0.0)  # time moves only by tick()
    # Warm-up (2 updates) ends at second 20; the line then runs from the peak at 20 s to 0 at 100 s.
    sched = linear(total_time=100, warmup_steps=2)
    assert lrs_at_times(sched, [10, 20, 60, 80, 100, 150, 160]) == pytest.approx(
        [0.5, 1.0, 1.0, 0.5, 0.25, 0.0, 0.0])
    # Both budgets: whichever ends first sets the rate (here the 4 updates).
    sched = linear(total_time="00:00:01:40", total_steps=4)
    assert lrs_at_times(sched, [0, 10, 20, 30, 40]) == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    # Without any update budget, trainer.max_steps=-1 is fine when there is a time budget.
    assert lrs_at_times(linear(total_steps=-1, total_time=10, min_lr=0.5), [5, 10, 20]) == pytest.approx([1.0, 0.75, 0.5])


def test_linear_schedule_time_budget_resumes_with_the_elapsed_time(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("attnmt.optim.time.monotonic", lambda: clock[0])
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


def test_averaging_the_last_validation_checkpoints_gives_their_mean_weights(tiny_data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    cfg = compose_config("train", tiny_overrides(tiny_data_dir) + [
        "scheduler=linear", "scheduler.warmup_steps=2", "trainer.max_steps=12", "trainer.max_epochs=100",
        "trainer.val_check_interval=3", "trainer.check_val_every_n_epoch=null", "trainer.log_every_n_steps=1",
        "data.num_valid=20", "callbacks.val_checkpoints.save_top_k=3",
    ], run)
    train(cfg)

    # The schedule's end follows trainer.max_steps: the last update (step 11) runs at 1/10 of the peak.
    lr = logged_lrs(run)
    peak = cfg.optimizer.lr
    assert lr[1] == pytest.approx(peak) and lr[11] == pytest.approx(peak / 10)

    # Validations after steps 3, 6, 9, 12: the newest 3 are kept.
    files = {torch.load(f, weights_only=False)["global_step"]: f for f in (run / "checkpoints" / "val").glob("*.ckpt")}
    assert sorted(files) == [6, 9, 12]

    average_main([f"ckpt={run}", "last=2"])
    out = run / "checkpoints" / "averaged.ckpt"
    assert f"averaged 2 checkpoints (steps 9, 12) -> {out}" in capsys.readouterr().out
    averaged = torch.load(out, weights_only=False)
    nine, twelve = (torch.load(files[s], weights_only=False)["state_dict"] for s in (9, 12))
    moved = 0
    for key, value in averaged["state_dict"].items():
        torch.testing.assert_close(value, (nine[key] + twelve[key]) / 2)
        moved += int(not torch.equal(nine[key], twelve[key]))
    assert moved > 0  # the two checkpoints differ, so the mean is neither of them
    assert [x["global_step"] for x in averaged["attnmt"]["averaged_from"]] == [9, 12]
    model, _, _, _ = load_for_decoding(out)  # decodes like any checkpoint
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, averaged["state_dict"][f"model.{key}"])


def test_averaging_refuses_a_folder_without_validation_checkpoints(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        average_main([f"ckpt={tmp_path}"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"error: {tmp_path / 'checkpoints' / 'val'}: no validation checkpoints")
    with pytest.raises(SystemExit):
        average_main(["ckpt=[a.ckpt,b.ckpt]"])
    assert capsys.readouterr().err.strip() == "error: a.ckpt: no such checkpoint file"
