"""Behaviour kept across refactors: the training losses of a few steps, per model, for a fixed
seed, against the values stored in ``tests/data/loss_fingerprint.json``.

Regenerate that file only for a change that is meant to alter training arithmetic (and say so in
the commit): ``python tests/test_fingerprint.py``.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import MODELS, compose_config, tiny_overrides  # noqa: E402

FINGERPRINT = Path(__file__).resolve().parent / "data" / "loss_fingerprint.json"
STEPS = 8
# Same machine kind, same code: equal to float rounding; other CPUs' kernels round differently.
RTOL = 2e-4


def losses(model: str, data_dir: Path, out: Path) -> list[float]:
    """``train/loss`` of the first STEPS optimizer steps (dropout on, fast kernels as configured), at
    a learning rate high enough from the first update that the losses move well beyond rounding."""
    from attnmt.train.run import train

    cfg = compose_config(
        "train",
        tiny_overrides(data_dir, model)
        + [f"trainer.max_steps={STEPS}", "trainer.log_every_n_steps=1", "trainer.num_sanity_val_steps=0",
           "+trainer.limit_val_batches=0", "callbacks.last_checkpoint=null", "seed=7",
           "scheduler=constant", "scheduler.warmup_steps=0", "optimizer.lr=0.003"],
        out,
    )
    train(cfg)
    with open(out / "csv" / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    return [float(r["train/loss"]) for r in rows]


@pytest.mark.parametrize("model", MODELS)
def test_training_losses_match_the_stored_fingerprint(model, tiny_data_dir, tmp_path):
    stored = json.loads(FINGERPRINT.read_text())[model]
    got = losses(model, tiny_data_dir, tmp_path)
    assert got == pytest.approx(stored, rel=RTOL), f"{model}: {got} != stored {stored}"


if __name__ == "__main__":
    import tempfile

    from attnmt.data.synthetic import ensure_synthetic

    with tempfile.TemporaryDirectory() as tmp:
        data = ensure_synthetic(Path(tmp) / "synthetic", num_train=6000, num_valid=200, num_test=200)
        result = {m: losses(m, data, Path(tmp) / m) for m in MODELS}
    FINGERPRINT.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
