"""Watching a run: the loggers chosen by config, the attention monitor and the run page.

The monitor and the page are on by default, so the runs of the shared ``trained_runs`` fixture
(400 steps, validations at steps 200 and 400) already hold their outputs; one more short run
writes TensorBoard event files, read back with TensorBoard's own reader.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from attnmt.train.monitor import read_records, row_entropy
from attnmt.train.run import train

from conftest import ROOT, compose_config, tiny_overrides
from test_typed_input import entry_point, one_line_error

VALIDATIONS = [200, 400]  # trained_runs: trainer.val_check_interval=200, max_steps=400


def test_row_entropy_is_zero_for_one_hot_rows_and_log_n_for_uniform_ones():
    assert row_entropy(np.eye(3)) == 0.0
    assert row_entropy(np.full((2, 5), 0.2)) == pytest.approx(np.log(5))
    # rows are renormalised first: a row that lost the weight of </s> still reads as a distribution
    assert row_entropy(np.array([[0.3, 0.3, 0.0]])) == pytest.approx(np.log(2))


@pytest.mark.parametrize("logger, cls, package", [
    ("tensorboard", "TensorBoardLogger", "tensorboard"),
    ("wandb", "WandbLogger", "wandb"),
    ("mlflow", "MLFlowLogger", "mlflow"),
    ("many_loggers", "TensorBoardLogger", "tensorboard"),
])
def test_a_logger_whose_package_is_missing_is_a_one_line_error(logger, cls, package, monkeypatch, capsys):
    real = importlib.util.find_spec
    missing = {"tensorboard", "tensorboardX", "wandb", "mlflow"}
    monkeypatch.setattr(
        "attnmt.train.loggers.importlib.util.find_spec", lambda name, *a: None if name in missing else real(name, *a)
    )
    cfg = compose_config("train", [f"logger={logger}"], Path("/nonexistent/out"))
    module = entry_point("train.py")
    monkeypatch.setattr(module, "train", lambda *_: pytest.fail("training started"))
    line = one_line_error(lambda: module.main(cfg), capsys)
    assert line == (
        f"error: logger.{'tensorboard' if logger == 'many_loggers' else logger}: {cls} needs the {package} package, "
        f'which is not installed: pip install -e ".[{package}]" (or pip install {package})'
    )


# -- the monitor's outputs in the shared runs -----------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", ["rnn_bahdanau", "transformer"])
def test_monitor_writes_pictures_and_a_record_per_validation(trained_runs, name):
    _, runs = trained_runs
    run_dir = runs[name][1]
    records = read_records(run_dir / "attention")
    assert [r["step"] for r in records] == VALIDATIONS
    for r in records:
        assert len(r["sentences"]) == 4 and [s["index"] for s in r["sentences"]] == [0, 1, 2, 3]
        for s in r["sentences"]:
            assert s["hypothesis"] and s["entropy"] >= 0 and 0 <= s["aer"] <= 1
            pictures = [run_dir / "attention" / p for p in s["images"]]
            assert all(p.parent.name == f"step_{r['step']:07d}" and p.suffix == ".png" for p in pictures)
            assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pictures)
            # Transformer (several layers and heads): the last layer's picture and the grid
            assert len(pictures) == (2 if name == "transformer" else 1)
    metrics = (run_dir / "csv" / "metrics.csv").read_text()
    assert "attention/entropy" in metrics and "attention/aer" in metrics


@pytest.mark.slow
def test_attention_sharpens_and_aligns_better_as_the_model_learns(trained_runs):
    """On the embedded corpus (gold alignments), between the first and the last validation the
    Bahdanau model's attention gets sharper and closer to the gold links."""
    _, runs = trained_runs
    first, last = read_records(runs["rnn_bahdanau"][1] / "attention")
    assert last["entropy"] < first["entropy"] - 0.05, (first["entropy"], last["entropy"])
    assert last["aer"] < first["aer"] - 0.05, (first["aer"], last["aer"])


@pytest.mark.slow
def test_run_page_lists_every_validation_and_its_images_exist(trained_runs):
    folder, runs = trained_runs
    run_dir = runs["rnn_bahdanau"][1]
    page = (run_dir / "index.html").read_text()
    assert "Training finished" in page and (run_dir / "curves.png").read_bytes()[:4] == b"\x89PNG"
    table = page.split("<table id=validations>")[1].split("</table>")[0]
    assert [int(s) for s in re.findall(r"<tr><td>(\d+)</td>", table)] == VALIDATIONS
    data = json.loads(page.split("const DATA = ")[1].split(";\n")[0].replace("<\\/", "</"))
    assert data["steps"] == VALIDATIONS and len(data["sentences"]) == 4
    for frames in data["sentences"]:
        assert [f["step"] for f in frames] == VALIDATIONS
        assert all((run_dir / src).is_file() for f in frames for src in f["images"])
    for src in re.findall(r'src="([^"]+)"', page):  # every picture the page shows, GIFs included
        assert (run_dir / src).is_file(), src
    assert len(list((run_dir / "attention").glob("*.gif"))) == 4


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.slow
@pytest.mark.skipif(chromium() is None, reason="no headless Chromium installed (apt-get install chromium)")
def test_run_page_slider_flips_the_picture_in_a_browser(trained_runs):
    """The page's script, run by Chromium: moving the sliders (``#step=N`` sets every slider and
    fires its input event, as a drag does) shows that step's picture and hypothesis."""
    run_dir = trained_runs[1]["rnn_bahdanau"][1]
    record = {r["step"]: r for r in read_records(run_dir / "attention")}

    def rendered(fragment: str) -> str:
        proc = subprocess.run(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
             (run_dir / "index.html").as_uri() + fragment],
            capture_output=True, text=True, timeout=120,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout

    def shown(dom: str) -> tuple[str, str]:
        src = re.search(r'<img id="img0_0" src="([^"]+)"', dom).group(1)
        step = re.search(r'<b id="step0">(\d+)</b>', dom).group(1)
        return src, step

    assert shown(rendered("")) == ("attention/" + record[400]["sentences"][0]["images"][0], "400")
    dom = rendered("#step=200")
    assert shown(dom) == ("attention/" + record[200]["sentences"][0]["images"][0], "200")
    assert re.search(r'<input type="range" class="steps" data-s="0"[^>]*>', dom)


@pytest.mark.slow
def test_compare_links_each_runs_page(trained_runs):
    from attnmt.eval.compare import run_page_link

    folder, runs = trained_runs
    for i, (_, run_dir, _) in enumerate(runs.values()):
        assert run_page_link(run_dir, folder) == f"[index.html]({i}/index.html)"


# -- the loggers ---------------------------------------------------------------------------------------
LOGGER_PACKAGES = {
    "csv": None, "tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "many_loggers": "tensorboard"
}


def test_every_logger_option_is_tested_here():
    from conftest import CONF

    assert sorted(p.stem for p in (CONF / "logger").glob("*.yaml")) == sorted(LOGGER_PACKAGES)


@pytest.mark.parametrize("name", sorted(LOGGER_PACKAGES))
def test_every_logger_config_instantiates_lightnings_class_writing_under_the_run_folder(name, tmp_path, monkeypatch):
    from hydra.utils import instantiate
    from pytorch_lightning.loggers import Logger

    package = LOGGER_PACKAGES[name]
    if package and importlib.util.find_spec(package) is None:
        pytest.skip(f'{package} is not installed (pip install -e ".[{package}]")')
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    cfg = compose_config("train", [f"logger={name}"], tmp_path / "run")
    loggers = {key: instantiate(node) for key, node in cfg.logger.items()}
    assert sorted(loggers) == {"many_loggers": ["csv", "tensorboard"]}.get(name, [name])
    for key, logger in loggers.items():
        # Lightning's own class (csv: attnmt's subclass of Lightning's, which continues a resumed run)
        assert isinstance(logger, Logger)
        assert type(logger).__module__.split(".")[0] == ("attnmt" if key == "csv" else "pytorch_lightning")
        if key == "mlflow":
            assert cfg.logger.mlflow.tracking_uri == f"sqlite:///{tmp_path / 'run'}/mlflow.db"
        elif key == "wandb":
            assert cfg.logger.wandb.offline is True and Path(logger.save_dir) == tmp_path / "run"
        else:
            assert Path(logger.log_dir) == tmp_path / "run" / key


def short_run(tiny_data_dir, out: Path, logger: str, steps: int = 40, command: bool = False) -> Path:
    """A short run with two validations. ``command``: as ``python train.py`` in a process of its own,
    for loggers that leave threads behind (wandb's service threads), which would make every later
    fork of the test process (a DataLoader worker) unsafe."""
    overrides = tiny_overrides(tiny_data_dir, pictures=True) + [
        f"logger={logger}", f"trainer.max_steps={steps}", "trainer.max_epochs=100",
        f"trainer.val_check_interval={steps // 2}", "trainer.check_val_every_n_epoch=null",
        "trainer.log_every_n_steps=10", "callbacks.attention_monitor.num_sentences=2",
    ]
    if command:
        done = subprocess.run([sys.executable, str(ROOT / "train.py"), *overrides, f"hydra.run.dir={out}"],
                              cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
    else:
        train(compose_config("train", overrides, out))
    return out


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                    reason='tensorboard is not installed (pip install -e ".[tensorboard]")')
def test_tensorboard_events_hold_the_scalars_and_the_pictures_of_every_validation(tiny_data_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = short_run(tiny_data_dir, tmp_path / "run", "many_loggers")
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    for scalar in ("train/loss", "val/bleu", "attention/entropy", "attention/aer"):
        assert scalar in tags["scalars"], tags["scalars"]
    # The monitor's scalars sit at the steps of the validation metrics they go with (Lightning's
    # logging step); its pictures are named by the optimizer step, as its folders are.
    aer_steps = [e.step for e in events.Scalars("attention/aer")]
    assert len(aer_steps) == 2 and aer_steps == [e.step for e in events.Scalars("val/bleu")]
    for sentence in (0, 1):
        images = events.Images(f"attention/sentence_{sentence}")
        assert [e.step for e in images] == [20, 40]
        assert all(e.encoded_image_string[:4] == b"\x89PNG" and e.width > 200 for e in images)
    assert "attention/hypotheses/text_summary" in tags["tensors"]
    assert (run_dir / "csv" / "metrics.csv").is_file()  # many_loggers: CSV too


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("wandb") is None,
                    reason='wandb is not installed (pip install -e ".[wandb]")')
def test_wandb_offline_run_holds_the_pictures(tiny_data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    run_dir = short_run(tiny_data_dir, tmp_path / "run", "wandb", steps=20, command=True)
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    pictures = list((offline[0] / "files" / "media" / "images").rglob("*.png"))
    assert len(pictures) >= 4  # two sentences, two validations
    assert list(offline[0].glob("*.wandb"))


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None,
                    reason='mlflow is not installed (pip install -e ".[mlflow]")')
def test_mlflow_local_run_holds_the_pictures(tiny_data_dir, tmp_path):
    from mlflow.tracking import MlflowClient

    run_dir = short_run(tiny_data_dir, tmp_path / "run", "mlflow", steps=20)
    for step in (10, 20):  # two validations, two sentences each
        pictures = list((run_dir / "mlartifacts").glob(f"*/artifacts/attention/step_{step:07d}/*.png"))
        assert len(pictures) == 2, step
    client = MlflowClient(f"sqlite:///{run_dir}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("attnmt").experiment_id])
    # The monitor's scalars sit at the steps of the validation metrics they go with.
    entropy_steps = [m.step for m in client.get_metric_history(run.info.run_id, "attention/entropy")]
    bleu_steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/bleu")]
    assert len(entropy_steps) == 2 and entropy_steps == bleu_steps
