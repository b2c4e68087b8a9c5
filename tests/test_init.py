"""``train.py init=RUN``: a new run starting from a trained model's weights and tokenizer."""

from __future__ import annotations

import csv

import pytest
import torch
import yaml
from pytorch_lightning import Callback

from attnmt.decode.checkpoint import CHECKPOINT_KEY, load_for_decoding
from attnmt.errors import ConfigError
from attnmt.train.run import train
from attnmt.train.task import token_loss

from conftest import MODELS, compose_config, tiny_overrides


class FirstBatch(Callback):
    """Keeps the first training batch, as the model saw it."""

    def __init__(self):
        self.batch = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.batch is None:
            self.batch = {k: v.detach().cpu().clone() if torch.is_tensor(v) else v for k, v in batch.items()}


def first_loss(run) -> float:
    with open(run / "csv" / "metrics.csv", newline="") as f:
        return next(float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss") and r["step"] == "0")


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_a_run_from_init_starts_with_the_source_models_loss_and_tokenizer(name, trained_runs, tiny_data_dir,
                                                                          tmp_path, monkeypatch):
    source_run = trained_runs[1][name][1]
    source, source_tokenizer, source_config, source_ckpt = load_for_decoding(source_run)
    seen = FirstBatch()
    import attnmt.train.run as run_module

    real_build_run = run_module.build_run
    monkeypatch.setattr(run_module, "build_run",
                        lambda cfg, callbacks=(), **kw: real_build_run(cfg, [*callbacks, seen], **kw))
    out = tmp_path / "finetuned"
    cfg = compose_config("train", tiny_overrides(tiny_data_dir, name, tiny_model=False) + [
        f"init={source_run}", "model.dropout=0.0", "data.vocab_size=300",  # data that would train another spm
        "trainer.max_steps=3", "trainer.log_every_n_steps=1", "trainer.val_check_interval=3",
        "trainer.check_val_every_n_epoch=null", "trainer.max_epochs=10", "seed=7"], out)
    train(cfg)

    # The first step's loss is the source model's on the same batch: its weights, nothing else.
    batch = seen.batch
    with torch.no_grad():
        logits = source(batch["src"], batch["src_mask"], batch["tgt_in"])
        loss_sum, ntokens = token_loss(logits, batch["tgt_out"], cfg.task.label_smoothing)
    assert first_loss(out) == pytest.approx(float(loss_sum / ntokens), rel=1e-4)
    # ... and far below a fresh model's (log of the vocabulary size).
    assert first_loss(out) < 0.6 * torch.log(torch.tensor(float(source_tokenizer.tgt_vocab_size)))

    saved = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)[CHECKPOINT_KEY]
    assert saved["tokenizer"] == source_tokenizer.state()  # not the 300-piece model the new data asks for
    starts = yaml.safe_load((out / "run_info.yaml").read_text())
    assert starts[0]["initialized_from"] == str(source_ckpt)


@pytest.mark.slow
def test_a_model_that_does_not_fit_is_refused_naming_the_key(trained_runs, tiny_data_dir, tmp_path):
    source_run = trained_runs[1]["transformer"][1]
    cfg = compose_config("train", tiny_overrides(tiny_data_dir, "transformer", tiny_model=False) + [
        f"init={source_run}", "model.dropout=0.3", "model.d_ff=128", "trainer.max_steps=1"], tmp_path / "run")
    with pytest.raises(ConfigError, match=r"^init=.*: its weights do not fit this run's model: model.d_ff=128 "
                                          r"\(the source has \d+\); give the source's model settings$"):
        train(cfg)
    assert not list((tmp_path / "run").rglob("*.ckpt"))


def test_init_of_a_missing_run_is_a_one_line_error(tiny_data_dir, tmp_path):
    cfg = compose_config("train", tiny_overrides(tiny_data_dir) + [f"init={tmp_path / 'nowhere'}"], tmp_path / "run")
    with pytest.raises(ConfigError, match=r"^init=.*nowhere: .*no such checkpoint file or run folder"):
        train(cfg)
