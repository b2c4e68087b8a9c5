"""Two-process DDP on CPU (gloo), launched by Lightning from the real entry point."""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys

import pytest
import torch
import yaml

from attnmt.decode.checkpoint import CHECKPOINT_KEY, load_for_decoding
from attnmt.eval.evaluate import evaluate

from conftest import ROOT, compose_config, tiny_overrides


@pytest.mark.slow
def test_two_process_ddp_run_matches_single_process_evaluation(tiny_data_dir, tmp_path):
    """With guided alignment on when eflomal is installed: both ranks need its links."""
    guided = importlib.util.find_spec("eflomal") is not None
    run = tmp_path / "run"
    cmd = [
        sys.executable, str(ROOT / "train.py"), "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu",
        *tiny_overrides(tiny_data_dir), "trainer.max_steps=300", "trainer.max_epochs=100",
        "trainer.val_check_interval=150", "trainer.check_val_every_n_epoch=null", f"hydra.run.dir={run}",
        *(["task.guided_alignment.weight=0.05"] if guided else []),
    ]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in log  # really two processes
    # The first process prepares the training data (or finds it cached); the other only reads it.
    # (eflomal's own "Prepared N sentences for alignment" is not the data pipeline's.)
    prepared = [line for line in log.splitlines() if "Prepared " in line and "for alignment" not in line]
    assert len(prepared) <= 1, prepared
    rank1 = (run / "train_ddp_process_1.log").read_text()
    assert "Reusing token store" in rank1
    assert not [line for line in rank1.splitlines() if "Prepared " in line and "for alignment" not in line]
    if guided:  # one rank aligns the training corpus, the other reads the cached links; both train on them
        logs = (run / "train.log").read_text() + rank1  # each rank's own log file
        aligned, read = logs.count("with eflomal (both directions"), logs.count("sentence pairs read from")
        assert aligned <= 1 and aligned + read == 2, (aligned, read)  # none when an earlier run cached them
        assert logs.count("Guided alignment: eflomal links (subwords) for 6000 training pairs") == 2
        with open(run / "csv" / "metrics.csv", newline="") as f:
            align = [float(r["train/align_loss"]) for r in csv.DictReader(f) if r.get("train/align_loss")]
        assert len(align) > 5 and sum(align[-3:]) < sum(align[:3])

    # One output folder (nothing stray in the working directory), one set of checkpoints.
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt", "last.prev.ckpt"]
    summary = yaml.safe_load((run / "summary.yaml").read_text())
    assert summary["global_step"] == 300

    # Validation BLEU, computed over both ranks' shares, equals one process decoding the same split.
    cfg = compose_config("evaluate", [f"ckpt={run}", "split=valid", "decode.beam_size=1", "eval.num_plots=0",
                                      "decode.batch_tokens=2048"], tmp_path / "eval")
    results = evaluate(cfg)
    assert results["num_sentences"] == 200
    assert results["bleu"]["score"] == pytest.approx(summary["best_val_bleu"], abs=1e-4)
    assert summary["best_val_bleu"] > 1.0  # a model that translates something, so equality means something


@pytest.mark.slow
def test_a_two_process_ddp_run_starts_from_init(trained_runs, tiny_data_dir, tmp_path):
    """``init=`` under DDP: every rank starts from the source's weights; the new corpus is encoded
    once, with the source's tokenizer, and read by the other rank."""
    source_run = trained_runs[1]["transformer"][1]
    _, source_tokenizer, _, source_ckpt = load_for_decoding(source_run)
    run = tmp_path / "run"
    cmd = [
        sys.executable, str(ROOT / "train.py"), "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu",
        *tiny_overrides(tiny_data_dir, "transformer", tiny_model=False), f"init={source_run}",
        "data.vocab_size=300",  # the new run's data alone would train another sentencepiece model
        f"data.cache_dir={tmp_path / 'cache'}", "trainer.max_steps=4", "trainer.max_epochs=10",
        "trainer.log_every_n_steps=1", "trainer.val_check_interval=4", "trainer.check_val_every_n_epoch=null",
        f"hydra.run.dir={run}",
    ]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in done.stdout + done.stderr
    rank0, rank1 = (run / "train.log").read_text(), (run / "train_ddp_process_1.log").read_text()
    assert "Prepared " in rank0 and "Reusing token store" in rank1 and "Prepared " not in rank1
    for log in (rank0, rank1):  # each rank loads the source's weights itself
        assert log.count(f"Weights and sentencepiece model from {source_ckpt}") == 1

    saved = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)[CHECKPOINT_KEY]
    assert saved["tokenizer"] == source_tokenizer.state()
    assert yaml.safe_load((run / "run_info.yaml").read_text())[0]["initialized_from"] == str(source_ckpt)
    with open(run / "csv" / "metrics.csv", newline="") as f:
        first = next(float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss"))
    # A trained model's loss, not a fresh one's (the log of the vocabulary size).
    assert first < 0.6 * torch.log(torch.tensor(float(source_tokenizer.tgt_vocab_size)))
