"""The GPU tier (``pytest -m gpu``): every documented command once on a CUDA GPU, small.

Each model trains a few steps in each precision the GPU has; one run is interrupted and resumed;
guided alignment trains; one Transformer run (validating and keeping checkpoints, with the attention
monitor) then serves the decoding commands: averaging, evaluation with heatmaps and AER,
attnmt-translate (float32 equal to the CPU's, bfloat16), export and CTranslate2 on CUDA,
attnmt-serve with one request, attnmt-compare. Skipped, saying why, where no CUDA device is visible;
``ATTNMT_GPU_TIER_ON_CPU=1`` runs it on the CPU to check the tests' own code.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from attnmt.train.run import train

from conftest import GPU_TIER_ON_CPU, MODELS, ROOT, compose_config, tiny_overrides

pytestmark = pytest.mark.gpu

DEVICE = "cpu" if GPU_TIER_ON_CPU else "cuda:0"
ACCELERATOR = "cpu" if GPU_TIER_ON_CPU else "gpu"


def precisions() -> list[str]:
    """The training precisions this device runs: 32 everywhere, 16-mixed on any CUDA GPU, bf16-mixed
    where it is fast (compute capability 8.0 or higher; on the CPU dry run, always)."""
    if GPU_TIER_ON_CPU:
        return ["32", "bf16-mixed"]
    if not torch.cuda.is_available():
        return ["32"]  # skipped in any case
    return ["32", "16-mixed"] + (["bf16-mixed"] if torch.cuda.get_device_capability() >= (8, 0) else [])


def on_device(data_dir: Path, model: str, steps: int, *extra: str, pictures: bool = False) -> list[str]:
    return tiny_overrides(data_dir, model, pictures=pictures) + [
        f"trainer.accelerator={ACCELERATOR}", "trainer.devices=1", f"trainer.max_steps={steps}",
        "trainer.max_epochs=100", f"trainer.val_check_interval={steps}", "trainer.check_val_every_n_epoch=null",
        "data.num_valid=40", "trainer.log_every_n_steps=1", *extra,
    ]


def logged(run: Path, key: str) -> dict[int, float]:
    with open(run / "csv" / "metrics.csv", newline="") as f:
        return {int(r["step"]): float(r[key]) for r in csv.DictReader(f) if r.get(key)}


def summary(run: Path) -> dict:
    return yaml.safe_load((run / "summary.yaml").read_text())


@pytest.mark.parametrize("precision", precisions())
@pytest.mark.parametrize("model", MODELS)
def test_each_model_trains_in_each_precision(model, precision, tiny_data_dir, tmp_path):
    run = tmp_path / "run"
    train(compose_config("train", on_device(tiny_data_dir, model, 6, f"trainer.precision={precision}"), run))
    assert summary(run)["global_step"] == 6 and (run / "checkpoints" / "last.ckpt").is_file()
    losses = logged(run, "train/loss")
    assert sorted(losses) == list(range(6)) and all(math.isfinite(v) for v in losses.values())
    stored = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert stored["global_step"] == 6 and all(torch.isfinite(v).all() for v in stored["state_dict"].values()
                                               if v.is_floating_point())


def test_the_gpu_recipe_trains_compiled(tiny_data_dir, tmp_path):
    """trainer=gpu as documented: precision auto, the compiled step, pinned-memory loader workers."""
    run = tmp_path / "run"
    extra = ["trainer=gpu", "data.max_tokens=2048", "trainer.log_every_n_steps=1"]
    if GPU_TIER_ON_CPU:
        extra += ["trainer.accelerator=cpu", "task.compile=false", "data.num_workers=0", "data.pin_memory=false"]
    train(compose_config("train", on_device(tiny_data_dir, "transformer", 6) + extra, run))
    assert summary(run)["global_step"] == 6


def test_an_interrupted_run_resumes_on_the_gpu(tiny_data_dir, tmp_path):
    """SIGKILL after step 4's checkpoint, then ``train.py resume=RUN``: the run finishes its steps."""
    run = tmp_path / "run"
    (tmp_path / "killer.py").write_text(
        "import os, signal\nfrom pytorch_lightning import Callback\n\n"
        "class KillAt(Callback):\n    def __init__(self, step):\n        self.step = step\n\n"
        "    def on_train_batch_start(self, trainer, *args):\n        if trainer.global_step == self.step:\n"
        "            os.kill(os.getpid(), signal.SIGKILL)\n")
    cmd = [sys.executable, str(ROOT / "train.py"), f"hydra.run.dir={run}",
           *on_device(tiny_data_dir, "transformer", 10, "callbacks.last_checkpoint.every_n_train_steps=2")]
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}:{ROOT / 'src'}"}
    killed = subprocess.run(cmd + ["+callbacks.kill._target_=killer.KillAt", "+callbacks.kill.step=5"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    disarmed = ["+callbacks.kill._target_=killer.KillAt", "callbacks.kill.step=-1"]  # code: only from the user
    resumed = subprocess.run([sys.executable, str(ROOT / "train.py"), f"resume={run}", *disarmed], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert summary(run)["global_step"] == 10
    starts = yaml.safe_load((run / "run_info.yaml").read_text())
    assert [s["global_step"] for s in starts] == [0, 4]


@pytest.mark.parametrize("model", ["rnn_bahdanau", "transformer"])
def test_guided_alignment_trains(model, tiny_data_dir, tmp_path):
    run = tmp_path / "run"
    train(compose_config("train", on_device(tiny_data_dir, model, 6, "task.guided_alignment.weight=0.5"), run))
    assert summary(run)["global_step"] == 6
    header = (run / "csv" / "metrics.csv").read_text().splitlines()[0]
    align = [k for k in header.split(",") if "align" in k and k.startswith("train/")]
    assert align and all(math.isfinite(v) for v in logged(run, align[0]).values()), header


@pytest.fixture(scope="module")
def gpu_run(tiny_data_dir, tmp_path_factory) -> Path:
    """A Transformer trained 150 steps on the device, validating every 50 with the attention
    monitor and the run page, keeping its validation checkpoints; as run 0 of a multirun folder."""
    folder = tmp_path_factory.mktemp("multirun")
    train(compose_config("train", on_device(tiny_data_dir, "transformer", 150, pictures=True) + [
        "trainer.val_check_interval=50", "callbacks.val_checkpoints.save_top_k=3"], folder / "0"))
    return folder / "0"


def test_the_attention_monitor_and_run_page_on_the_gpu(gpu_run):
    pictures = sorted((gpu_run / "attention").glob("**/*.png"))
    assert len(pictures) >= 3 and (gpu_run / "index.html").is_file()


def test_averaging_and_decoding_the_average(gpu_run, capsys):
    from attnmt.decode.settings import DecodeSettings
    from attnmt.deploy.translate import TranslateSettings, Translator
    from attnmt.train.average import main as average_main

    average_main([f"ckpt={gpu_run}", "last=2"])
    averaged = gpu_run / "checkpoints" / "averaged.ckpt"
    assert f"averaged 2 checkpoints (steps 100, 150) -> {averaged}" in capsys.readouterr().out
    lines = Translator(TranslateSettings(ckpt=str(averaged)), DecodeSettings(device=DEVICE)).translate(["a b c"])
    assert len(lines) == 1


def test_evaluation_writes_scores_aer_and_heatmaps(gpu_run, tmp_path):
    from attnmt.eval.evaluate import evaluate

    out = tmp_path / "eval"
    results = evaluate(compose_config("evaluate", [
        f"ckpt={gpu_run}", f"decode.device={DEVICE}", "decode.beam_size=5", "eval.num_plots=2",
        "eval.formats=[png]"], out))
    assert results["decoding"]["device"] == DEVICE and "aer" in results and results["bleu"]["score"] > 0
    assert len(list(out.glob("**/*.png"))) >= 2 and json.loads((out / "results.json").read_text())["heatmaps"] >= 2


def translations(ckpt, lines: list[str], **decode) -> list[str]:
    from attnmt.decode.settings import DecodeSettings
    from attnmt.deploy.translate import TranslateSettings, Translator

    return Translator(TranslateSettings(ckpt=str(ckpt), scores=True), DecodeSettings(**decode), False).translate(lines)


def test_translate_in_float32_equals_the_cpu_and_bfloat16_runs(gpu_run, tiny_data_dir):
    lines = (tiny_data_dir / "test.en").read_text().splitlines()[:100]
    cpu = translations(gpu_run, lines, device="cpu", compute_type="float32", beam_size=5)
    gpu = translations(gpu_run, lines, device=DEVICE, compute_type="float32", beam_size=5)
    text = [(a.split(" ||| ")[1], b.split(" ||| ")[1]) for a, b in zip(cpu, gpu)]
    assert sum(a == b for a, b in text) >= 97, [p for p in text if p[0] != p[1]][:3]
    for a, b in zip(cpu, gpu):
        if a.split(" ||| ")[1] == b.split(" ||| ")[1]:
            assert float(a.split(" ||| ")[2]) == pytest.approx(float(b.split(" ||| ")[2]), abs=1e-3)
    # bfloat16 rounds each step's scores: a small, briefly trained model has many near ties, so only
    # most outputs stay the same (benchmarks/decode_speed.py measures the share on a real model).
    half = translations(gpu_run, lines, device=DEVICE, compute_type="bfloat16", beam_size=5)
    assert len(half) == len(lines) and sum(a.split(" ||| ")[1] == b.split(" ||| ")[1] for a, b in zip(gpu, half)) >= 50


def test_export_and_ctranslate2_on_the_device(gpu_run, tiny_data_dir, tmp_path):
    ctranslate2 = pytest.importorskip("ctranslate2", reason="the ctranslate2 extra is not installed")
    if not GPU_TIER_ON_CPU and ctranslate2.get_cuda_device_count() == 0:
        pytest.skip("this ctranslate2 build sees no CUDA device (a CPU-only wheel, or no CUDA runtime for it)")
    from attnmt.deploy.export import export

    lines = (tiny_data_dir / "test.en").read_text().splitlines()[:50]
    ours = translations(gpu_run, lines, device=DEVICE, compute_type="float32", beam_size=1)
    for quantization, compute_type in (("float32", "float32"), ("float32", "auto"), ("int8", "auto")):
        folder = export(gpu_run, tmp_path / quantization, quantization)
        got = translations(folder, lines, device=DEVICE, compute_type=compute_type, beam_size=1)
        same = sum(a.split(" ||| ")[1] == b.split(" ||| ")[1] for a, b in zip(ours, got))
        # float32 on float32 is the same computation; float16 and int8 round a briefly trained model's near ties.
        assert same >= (48 if (quantization, compute_type) == ("float32", "float32") else 25), (quantization, same)


def test_serve_answers_one_request(gpu_run):
    from starlette.testclient import TestClient

    from attnmt.decode.backends import load_backend
    from attnmt.deploy.serve import ServeSettings, create_app

    backend = load_backend(gpu_run, DEVICE, "auto")
    settings = ServeSettings(ckpt=str(gpu_run), device=DEVICE)
    with TestClient(create_app(backend, settings), base_url="http://localhost") as client:
        reply = client.post("/translate", json={"text": ["a b c", "d e"], "beam_size": 4, "attention": True})
        assert reply.status_code == 200, reply.text
        assert len(reply.json()["translations"]) == 2
        assert client.get("/metadata").json()["device"] == DEVICE


def test_compare_decodes_on_the_device(gpu_run):
    from attnmt.eval.compare import compare

    rows = compare(gpu_run.parent, device=DEVICE)
    assert len(rows) == 1 and DEVICE in rows[0]["decoding"]
    assert DEVICE in (gpu_run.parent / "comparison.md").read_text()


def test_beam_search_on_cuda_waits_for_the_gpu_only_every_few_steps():
    """torch's sync debug mode warns at each operation that waits for the GPU: far fewer than the
    search's steps (the CPU tier counts the same reads exactly)."""
    if GPU_TIER_ON_CPU:
        pytest.skip("needs CUDA's sync debug mode")
    from attnmt.decode.search import beam_search, max_output_lengths

    from conftest import build_tiny_model

    model = build_tiny_model("transformer", vocab_size=40).cuda()
    src = torch.randint(4, 40, (8, 5), device="cuda")
    mask = torch.ones_like(src, dtype=torch.bool)
    steps = int(max_output_lengths(mask, 4.0, 4).max()) + 1
    beam_search(model, src, mask, 5, 0.6, 4.0, 4, check_every=8)  # warm-up
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            beam_search(model, src, mask, 5, 0.6, 4.0, 4, check_every=8)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    waits = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(waits) < steps, (len(waits), steps, [str(w.message)[:80] for w in waits[:5]])
