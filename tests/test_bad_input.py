"""Bad input of every kind, through the real entry points: exit status, a one-line message naming
the file, line or key, and no artefact left half-written. Also non-finite losses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from attnmt.data.synthetic import ensure_synthetic
from attnmt.errors import TrainingError, exit_on_user_error
from attnmt.eval.evaluate import evaluate
from attnmt.train.run import train
from attnmt.train.task import TranslationTask

from conftest import ROOT, compose_config

TINY = ["model.emb_size=32", "model.hidden_size=64", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false", "data.vocab_size=200"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Clean user-corpus files (``<prefix>.<lang>``) that each case copies and spoils."""
    folder = ensure_synthetic(tmp_path_factory.mktemp("clean"), num_train=300, num_valid=20, num_test=20)
    for split in ("train", "valid", "test"):
        for lang, suffix in (("en", "en"), ("xx", "syn")):
            (folder / f"{split}.{lang}").write_bytes((folder / f"{split}.{suffix}").read_bytes())
    return folder


def user_corpus_args(folder: Path) -> list[str]:
    return ["data=parallel", f"data.train_prefix={folder}/train", f"data.valid_prefix={folder}/valid",
            f"data.test_prefix={folder}/test", "data.src_lang=en", "data.tgt_lang=xx", f"data.cache_dir={folder}/cache"]


def copy_corpus(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for split in ("train", "valid", "test"):
        for lang in ("en", "xx"):
            (dst / f"{split}.{lang}").write_bytes((src / f"{split}.{lang}").read_bytes())
    return dst


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


# Each case spoils a copy of the clean corpus (or the arguments) and says what the user must see.
def empty_files(d: Path) -> list[str]:
    (d / "train.en").write_bytes(b"")
    (d / "train.xx").write_bytes(b"")
    return [f"{d}/train.en and {d}/train.xx are empty"]


def invalid_utf8(d: Path) -> list[str]:
    rows = lines(d / "train.xx")
    rows[6] = b"caf\xe9 \xff\n"
    (d / "train.xx").write_bytes(b"".join(rows))
    return [f"{d}/train.xx: line 7 is not valid UTF-8"]


def mismatched_counts(d: Path) -> list[str]:
    (d / "valid.en").write_bytes(b"".join(lines(d / "valid.en")[:-2]))
    return [f"{d}/valid.en has 18 lines but {d}/valid.xx has 20"]


def missing_file(d: Path) -> list[str]:
    (d / "test.xx").unlink()
    return [f"{d}/test.xx: no such file"]


FAILING = {
    "empty files": (empty_files, []),
    "invalid UTF-8": (invalid_utf8, []),
    "mismatched line counts": (mismatched_counts, []),
    "missing file": (missing_file, []),
    "bad config value": (lambda d: ["task.nonfinite='ignore' is not one of stop, skip"], ["task.nonfinite=ignore"]),
}


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``python ROOT/<script> args...`` from ``cwd``."""
    script, *rest = args
    return subprocess.run([sys.executable, str(ROOT / script), *rest], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def call_entry(fn, cfg, capsys) -> tuple[int, list[str]]:
    """What the entry point does with ``fn(cfg)``, in this process: exit status and stderr lines."""
    with pytest.raises(SystemExit) as exited:
        exit_on_user_error(fn)(cfg)
    return exited.value.code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def no_half_written_files(root: Path) -> None:
    leftovers = [p for p in root.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers, leftovers


@pytest.mark.parametrize("case", list(FAILING))
def test_bad_training_input_gives_one_line_error(case, corpus, tmp_path, capsys):
    data = copy_corpus(corpus, tmp_path / "data")
    spoil, extra = FAILING[case]
    expected = spoil(data)
    cfg = compose_config("train", [*user_corpus_args(data), *TINY, "trainer.max_steps=2", *extra], tmp_path / "out")
    status, stderr = call_entry(train, cfg, capsys)
    assert status == 2 and len(stderr) == 1 and stderr[0].startswith("error: "), stderr
    for fragment in expected:
        assert fragment in stderr[0], (fragment, stderr[0])
    # Nothing that looks like a result: no checkpoint, no summary, no temporary file.
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("summary.yaml"))
    no_half_written_files(tmp_path)


@pytest.mark.slow
def test_unknown_key_and_unwritable_output_are_refused_before_anything_runs(tmp_path):
    proc = run(["train.py", "trainer.max_stepz=3", f"hydra.run.dir={tmp_path / 'out'}"], tmp_path)
    # Hydra's own message (struct mode kept on); its first line names the key.
    assert proc.returncode == 1 and proc.stderr.splitlines()[0] == "Could not override 'trainer.max_stepz'."
    assert "Traceback" not in proc.stderr

    (tmp_path / "afile").write_text("x")
    proc = run(["train.py", f"hydra.run.dir={tmp_path / 'afile' / 'run'}"], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [
        f"error: hydra.run.dir={tmp_path / 'afile' / 'run'}: cannot write the output folder: "
        f"{tmp_path / 'afile'} is a file, not a folder"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # nothing created
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        proc = run(["train.py", f"hydra.run.dir={locked / 'run'}"], tmp_path)
        assert proc.returncode == 2 and f"{locked} is not writable" in proc.stderr


@pytest.mark.slow
def test_crlf_blank_and_overlong_lines_are_handled_and_counted(corpus, tmp_path):
    data = copy_corpus(corpus, tmp_path / "data")
    src, tgt = lines(data / "train.en"), lines(data / "train.xx")
    src = [r.replace(b"\n", b"\r\n") for r in src]  # a file written on Windows
    src[3], tgt[3] = b"   \r\n", b"something\n"  # whitespace-only source
    src[5], tgt[5] = b"a lone target follows\r\n", b"\t\n"  # whitespace-only target
    src[8] = b"word " * 5000 + b"\r\n"  # far longer than data.max_len
    (data / "train.en").write_bytes(b"".join(src))
    (data / "train.xx").write_bytes(b"".join(tgt))
    (data / "valid.xx").write_bytes(b"".join(r.replace(b"\n", b"\r\n") for r in lines(data / "valid.xx")))

    out = tmp_path / "out"
    proc = run(["train.py", *user_corpus_args(data), *TINY, "trainer.max_steps=2", f"hydra.run.dir={out}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = yaml.safe_load((out / "summary.yaml").read_text())
    assert summary["data"]["train"] == {"pairs": 300, "kept": 297, "blank": 2, "too_long": 1}
    log = (out / "train.log").read_text()
    assert f"{data}/train.en: 300 of 300 lines end in CRLF; read without the CR" in log
    assert f"{data}/valid.xx: 20 of 20 lines end in CRLF" in log
    assert "297 pairs kept of 300; dropped 2 blank or whitespace-only, 1 longer than data.max_len=128" in log
    # The CR is gone from what the model sees and from the references BLEU is computed against.
    from attnmt.decode.checkpoint import load_for_decoding

    _, tokenizer, _, _ = load_for_decoding(out)
    assert "\r" not in tokenizer.decode_tgt([tokenizer.encode_tgt(["a\r"])[0]])[0]


def test_gzip_that_is_not_gzip_is_named(corpus, tmp_path, capsys):
    data = copy_corpus(corpus, tmp_path / "data")
    (data / "train.en").unlink()
    (data / "train.en.gz").write_bytes(b"plain text, not gzip\n")
    cfg = compose_config("train", [*user_corpus_args(data), *TINY, "trainer.max_steps=2"], tmp_path / "out")
    status, stderr = call_entry(train, cfg, capsys)
    assert status == 2 and len(stderr) == 1 and stderr[0].startswith(f"error: {data}/train.en.gz: cannot be read")


# -- checkpoints given to evaluate.py ---------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained")
    train(compose_config("train", [*user_corpus_args(corpus), *TINY, "trainer.max_steps=3"], out))
    return out / "checkpoints" / "last.ckpt"


def other_vocabulary(ckpt: dict, tmp: Path) -> None:
    from attnmt.data.tokenizer import Tokenizer, train_sentencepiece

    words = [f"w{i} x{i % 7} y{i % 13}" for i in range(2000)]
    settings = {"vocab_size": 150, "model_type": "bpe", "character_coverage": 1.0}
    ckpt["attnmt"]["tokenizer"] = Tokenizer(train_sentencepiece(words, tmp, "joint", settings, [])).state()


def other_model(ckpt: dict, tmp: Path) -> None:
    ckpt["attnmt"]["config"]["model"]["hidden_size"] = 96


def foreign_model(ckpt: dict, tmp: Path) -> None:
    ckpt["state_dict"] = {"model.layer.weight": torch.zeros(3, 3)}


def damaged_entry(ckpt: dict, tmp: Path) -> None:
    del ckpt["attnmt"]["config"]["model"]


CHECKPOINTS = {
    "vocabulary of another run": (other_vocabulary, "its vocabulary has 150 pieces but"),
    "weights of another size": (other_model, "weights do not match its model config"),
    "weights of another model": (foreign_model, "weights do not match its model config (missing"),
    "damaged attnmt entry": (damaged_entry, "damaged 'attnmt' entry"),
    "truncated file": (None, "not a readable checkpoint"),
}


@pytest.mark.parametrize("case", list(CHECKPOINTS))
def test_mismatched_checkpoint_given_to_evaluate(case, trained, tmp_path, capsys):
    spoil, expected = CHECKPOINTS[case]
    bad = tmp_path / "bad.ckpt"
    if spoil is None:
        bad.write_bytes(trained.read_bytes()[:5000])
    else:
        ckpt = torch.load(trained, weights_only=False)
        spoil(ckpt, tmp_path)
        torch.save(ckpt, bad)
    status, stderr = call_entry(evaluate, compose_config("evaluate", [f"ckpt={bad}"], tmp_path / "out"), capsys)
    assert status == 2 and len(stderr) == 1, stderr
    assert stderr[0].startswith(f"error: {bad}: ") and expected in stderr[0], stderr
    assert not (tmp_path / "out" / "results.json").exists() and not (tmp_path / "out" / "hypotheses.txt").exists()
    no_half_written_files(tmp_path)


# -- non-finite losses ------------------------------------------------------------------------------
def poison_steps(monkeypatch, steps: set[int]) -> None:
    """Make the loss NaN at the given optimizer steps (the hook the issue asks for)."""
    real = TranslationTask.loss

    def loss(self, batch, label_smoothing):
        value, ntokens = real(self, batch, label_smoothing)
        if self.training and self.trainer.global_step in steps:
            value = value * float("nan")
        return value, ntokens

    monkeypatch.setattr(TranslationTask, "loss", loss)


def nan_config(corpus: Path, out: Path, *extra: str):
    return compose_config("train", [*user_corpus_args(corpus), *TINY, "trainer.max_steps=12",
                                    "callbacks.last_checkpoint.every_n_train_steps=5",
                                    "trainer.log_every_n_steps=1", *extra], out)


@pytest.mark.slow
def test_non_finite_loss_stops_naming_step_and_last_good_checkpoint(corpus, tmp_path, monkeypatch):
    poison_steps(monkeypatch, {7})
    with pytest.raises(TrainingError) as err:
        train(nan_config(corpus, tmp_path))
    message = str(err.value)
    assert message.startswith("step 7: loss is nan")
    assert f"Last good checkpoint: {tmp_path / 'checkpoints' / 'last.ckpt'} (step 5)" in message
    good = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert good["global_step"] == 5
    assert all(torch.isfinite(v).all() for v in good["state_dict"].values())


@pytest.mark.slow
@pytest.mark.parametrize("fused", ["null", "false"])  # skipped on the device, or by reading the verdict
def test_non_finite_loss_skipped_and_counted_by_config(corpus, tmp_path, monkeypatch, fused):
    poison_steps(monkeypatch, {3, 8})
    train(nan_config(corpus, tmp_path, "task.nonfinite=skip", f"optimizer.fused={fused}"))
    summary = yaml.safe_load((tmp_path / "summary.yaml").read_text())
    assert summary["skipped_batches"] == 2 and summary["global_step"] == 12
    import csv

    rows = list(csv.DictReader(open(tmp_path / "csv" / "metrics.csv")))
    assert max(float(r["train/skipped_batches"]) for r in rows if r.get("train/skipped_batches")) == 2
    losses = {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}
    assert sorted(losses) == list(range(12))
    assert {s for s, v in losses.items() if not torch.isfinite(torch.tensor(v))} == {3, 8}  # logged as they were
    final = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert all(torch.isfinite(v).all() for v in final["state_dict"].values())


@pytest.mark.slow
def test_diverging_learning_rate_stops_with_one_line(corpus, tmp_path):
    # LayerNorm of weights pushed to 1e30 overflows: a real divergence, no hook.
    transformer = ["model=transformer", "model.d_model=32", "model.d_ff=64", "model.num_heads=2",
                   "model.encoder_layers=1", "model.decoder_layers=1", "data.vocab_size=200"]
    proc = run(["train.py", *user_corpus_args(corpus), *transformer, "optimizer.lr=1e30", "scheduler=constant",
                "trainer.max_steps=20", f"hydra.run.dir={tmp_path / 'out'}"], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "step 1: loss is nan" in errors[0] and "task.nonfinite=skip" in errors[0]
    assert not (tmp_path / "out" / "summary.yaml").exists()


def test_trainer_gpu_without_a_gpu_is_one_line_before_any_work(monkeypatch, tmp_path):
    from attnmt.errors import ConfigError
    from attnmt.train.run import check_train_config

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = compose_config("train", ["trainer=gpu"], tmp_path)
    with pytest.raises(ConfigError, match=r"^trainer.accelerator=gpu: no CUDA GPU is visible here; train on the CPU"):
        check_train_config(cfg)
