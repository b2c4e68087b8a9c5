"""``task.compile``: the compiled training step computes what the eager one does, and what it
saves is the same (no wrapper prefix in the state dict); batch lengths padded to a multiple change
no loss."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attnmt import ops  # noqa: E402
from attnmt.errors import ConfigError  # noqa: E402
from attnmt.ops import switch  # noqa: E402
from attnmt.train.run import train  # noqa: E402
from attnmt.utils.compiling import compile_options  # noqa: E402

from conftest import compose_config, tiny_overrides  # noqa: E402


def test_compile_values():
    assert compile_options(False) is None and compile_options(None) is None
    assert compile_options(True) == {"dynamic": True}
    assert compile_options("max-autotune") == {"dynamic": True, "mode": "max-autotune"}
    with pytest.raises(ConfigError, match=r"^task.compile='fast' must be false, true or one of default, "):
        compile_options("fast")


def test_compile_is_checked_before_any_work(tiny_data_dir, tmp_path):
    from attnmt.train.run import check_train_config

    cfg = compose_config("train", tiny_overrides(tiny_data_dir) + ["task.compile=fast"], tmp_path)
    with pytest.raises(ConfigError, match="task.compile='fast'"):
        check_train_config(cfg)


def test_compiled_code_runs_the_plain_formulation():
    """Inside a compiled region the hand-written CPU kernels step aside: the compiler fuses the
    plain formulation itself (and cannot see into the kernels' custom autograd functions)."""
    seen = []

    def probe(x):
        seen.append(ops.enabled())
        return x + 1

    torch.compile(probe, backend="eager")(torch.zeros(2))
    assert seen == [False] and ops.enabled() == switch.ENABLED


def run(data_dir: Path, out: Path, model: str, *extra: str) -> tuple[list[float], dict]:
    cfg = compose_config("train", tiny_overrides(data_dir, model) + [
        "model.dropout=0", "trainer.max_steps=5", "trainer.log_every_n_steps=1", "+trainer.limit_val_batches=0",
        "trainer.num_sanity_val_steps=0", "callbacks.last_checkpoint.every_n_train_steps=5", "seed=3",
        "scheduler=constant", "scheduler.warmup_steps=0", "optimizer.lr=0.003", *extra], out)
    train(cfg)
    with open(out / "csv" / "metrics.csv", newline="") as f:
        losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    return losses, state


def test_padding_lengths_to_a_multiple_changes_no_loss(tiny_data_dir, tmp_path):
    """Padding is masked everywhere: a batch padded to a multiple of 8 gives the same losses."""
    plain, _ = run(tiny_data_dir, tmp_path / "plain", "transformer")
    padded, _ = run(tiny_data_dir, tmp_path / "padded", "transformer", "data.pad_to_multiple=8")
    assert len(plain) == 5 and padded == pytest.approx(plain, rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["rnn_bahdanau", "transformer"])  # Luong's step compiles as Bahdanau's does
def test_compiled_training_equals_eager_and_saves_the_same_keys(model, tiny_data_dir, tmp_path):
    eager, eager_state = run(tiny_data_dir, tmp_path / "eager", model)
    compiled, compiled_state = run(tiny_data_dir, tmp_path / "compiled", model, "task.compile=true",
                                   "data.pad_to_multiple=8")
    assert list(compiled_state) == list(eager_state) and not any("_orig_mod" in k for k in compiled_state)
    assert len(compiled) == 5 and compiled == pytest.approx(eager, rel=2e-3)
    assert compiled[-1] < compiled[0] - 0.1  # the losses moved well beyond rounding
