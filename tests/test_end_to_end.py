"""Train each model briefly on the embedded data, evaluate it, and check that it learned."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnmt.decode.search import translate_dataset
from attnmt.decode.settings import DecodeSettings
from attnmt.eval.compare import compare
from attnmt.eval.evaluate import evaluate
from attnmt.eval.metrics import bleu
from attnmt.train.run import build_model_for
from attnmt.utils.config import build

from conftest import MODELS, ROOT, compose_config


def is_png(path) -> tuple[int, int] | None:
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def untrained_bleu(cfg) -> float:
    """BLEU of the same model, freshly initialised, on the same test split."""
    dm = build(cfg.data, "data")
    dm.prepare_data()
    torch.manual_seed(cfg.seed)
    model = build_model_for(cfg.model, dm).eval()
    dataset = dm.eval_dataset("test")
    nbest = translate_dataset(model, dataset, DecodeSettings(beam_size=1, batch_tokens=4000), progress=False)
    hyps = dm.tokenizer.decode_tgt([h[0].tokens for h in nbest])
    return bleu(hyps, dm.references("test"))


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_training_then_evaluation_learns_the_task(name, trained_runs, tmp_path):
    cfg, run_dir, best = trained_runs[1][name]
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "config.yaml").is_file()

    eval_dir = tmp_path / "eval"
    ecfg = compose_config("evaluate", [f"ckpt={run_dir}", "eval.num_plots=3", "eval.plot_grid=true"], eval_dir)
    results = evaluate(ecfg)

    saved = json.loads((eval_dir / "results.json").read_text())
    assert saved["bleu"]["score"] == results["bleu"]["score"]
    assert saved["bleu"]["signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    assert "chrf" in saved and "ter" in saved and saved["num_sentences"] == 200
    hyps = (eval_dir / "hypotheses.txt").read_text().splitlines()
    assert len(hyps) == 200
    # The file on disk scores the same as the reported figure.
    refs = Path(saved["reference_file"]).read_text().splitlines()
    assert bleu(hyps, refs) == saved["bleu"]["score"]

    baseline = untrained_bleu(cfg)
    assert baseline < 5.0
    assert results["bleu"]["score"] > baseline + 30.0, (results["bleu"], baseline, best)

    pngs = sorted((eval_dir / "heatmaps").glob("*.png"))
    main = "cross.layer3" if name == "transformer" else "cross"
    assert [p.name for p in pngs if ".grid" not in p.name] == [f"000{i}.{main}.png" for i in range(3)]
    for p in pngs:
        size = is_png(p)
        assert size is not None and size[0] > 200 and size[1] > 150, p
    if name == "transformer":
        assert (eval_dir / "heatmaps" / "0000.cross.grid.png").is_file()


@pytest.mark.slow
def test_compare_tabulates_every_run(trained_runs):
    folder, runs = trained_runs
    rows = compare(folder)
    assert [r["model"] for r in rows] == ["BahdanauRNN", "LuongRNN", "Transformer"]
    for row, (_, (_, _, best)) in zip(rows, runs.items()):
        assert row["best_val_bleu"] == round(best, 2)
        assert row["params"] > 0 and row["train_seconds"] > 0 and row["test_bleu"] > 30
    table = (folder / "comparison.md").read_text()
    assert table.startswith("| run | model | params |") and "sacreBLEU" in table
    assert len((folder / "comparison.csv").read_text().splitlines()) == 4
    assert is_png(folder / "val_bleu.png") is not None


def run_entry(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda d: d / "missing.ckpt", "missing.ckpt: no such checkpoint file or run folder"),
        (lambda d: (d / "junk.ckpt").write_bytes(b"\x00not a checkpoint") and d / "junk.ckpt",
         "junk.ckpt: not a readable checkpoint"),
        (lambda d: torch.save({"a": 1}, d / "foreign.ckpt") or d / "foreign.ckpt",
         "foreign.ckpt: not an attnmt checkpoint"),
        (lambda d: d, "a folder without checkpoints/best.ckpt"),
    ],
    ids=["missing", "garbage", "foreign", "empty-folder"],
)
def test_evaluate_bad_checkpoint_gives_one_line_error(make, expected, tmp_path):
    path = make(tmp_path)
    proc = run_entry("evaluate.py", f"ckpt={path}", f"hydra.run.dir={tmp_path / 'out'}")
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith("error: ") and expected in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "results.json").exists()


@pytest.mark.slow
def test_train_with_mismatched_data_gives_one_line_error(tmp_path):
    data = tmp_path / "data"
    from attnmt.data.synthetic import ensure_synthetic

    ensure_synthetic(data, num_train=50, num_valid=5, num_test=5)
    with open(data / "train.syn", "a") as f:
        f.write("one extra line\n")
    proc = run_entry(
        "train.py", f"data.data_dir={data}", "data.num_train=50", "data.num_valid=5", "data.num_test=5",
        f"hydra.run.dir={tmp_path / 'out'}",
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "train.en has 50 lines" in lines[0] and "train.syn has 51" in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_train_with_bad_model_value_gives_one_line_error(tmp_path):
    proc = run_entry("train.py", "model=rnn_luong", "model.attention.score=cosine",
                     f"data.data_dir={tmp_path}", "data.num_train=50", "data.num_valid=5", "data.num_test=5",
                     f"hydra.run.dir={tmp_path / 'out'}")
    assert proc.returncode == 2
    assert "error: model.attention.score='cosine' is not one of dot, general, concat" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_train_help_lists_the_config_groups():
    proc = run_entry("train.py", "--help")
    assert proc.returncode == 0
    for group in ("model:", "data:", "trainer:"):
        assert group in proc.stdout
    assert "rnn_bahdanau" in proc.stdout and "transformer" in proc.stdout
