"""Runs made before the packages-by-stage layout still load, translate, evaluate and resume.

``tests/data/legacy_run`` holds the text files of a run folder written by that layout
(``config.yaml`` and ``.hydra/overrides.yaml``; its classes under their old module paths such as
``attnmt.task.TranslationTask``). A checkpoint is binary, so the test makes one: the same tiny run
trained now, with the stored config in the checkpoint replaced by the old one, which is all a
checkpoint of that layout stored differently (weights and training state do not name modules).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from attnmt.decode.checkpoint import CHECKPOINT_KEY
from attnmt.utils.legacy import MOVED_TARGETS, upgrade_targets

from conftest import ROOT, compose_config

LEGACY = Path(__file__).parent / "data" / "legacy_run"


def test_every_moved_target_names_a_class_that_exists():
    from hydra.utils import get_class

    for old, new in MOVED_TARGETS.items():
        assert get_class(new).__name__ == old.rsplit(".", 1)[-1]
    with pytest.raises(ImportError):
        get_class(next(iter(MOVED_TARGETS)))  # the old path is gone: only the map reaches it


def test_the_saved_config_names_only_old_paths_and_upgrades_to_importable_ones():
    config = yaml.safe_load((LEGACY / "config.yaml").read_text())
    targets = [config["task"]["_target_"], config["scheduler"]["_target_"], config["callbacks"]["run_page"]["_target_"]]
    assert targets == ["attnmt.task.TranslationTask", "attnmt.optim.InverseSqrtWarmup", "attnmt.run_page.RunPage"]
    upgrade_targets(config)
    assert config["task"]["_target_"] == "attnmt.train.task.TranslationTask"
    assert config["task"]["guided_alignment"]["_target_"] == "attnmt.train.guided.GuidedAlignment"
    assert config["trainer"]["plugins"][0]["_target_"] == "attnmt.train.checkpoint_io.AtomicCheckpointIO"
    assert config["model"]["_target_"] == "attnmt.models.transformer.Transformer"  # not moved: unchanged


def legacy_folder(tmp_path: Path) -> tuple[Path, Path]:
    """The old run folder, its checkpoint made as described above: ``(run_dir, data_dir)``."""
    data_dir, run_dir, fresh = tmp_path / "data", tmp_path / "legacy", tmp_path / "fresh"
    overrides = [o.replace("DATA_DIR", str(data_dir))
                 for o in yaml.safe_load((LEGACY / ".hydra" / "overrides.yaml").read_text())]
    from attnmt.train.run import train

    train(compose_config("train", overrides, fresh))
    old_text = (LEGACY / "config.yaml").read_text().replace("DATA_DIR", str(data_dir)).replace("RUN_DIR", str(run_dir))
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(old_text)
    (run_dir / ".hydra" / "overrides.yaml").write_text(
        (LEGACY / ".hydra" / "overrides.yaml").read_text().replace("DATA_DIR", str(data_dir)))
    ckpt = torch.load(fresh / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    ckpt[CHECKPOINT_KEY]["config"] = yaml.safe_load(old_text)
    (run_dir / "checkpoints").mkdir()
    torch.save(ckpt, run_dir / "checkpoints" / "last.ckpt")
    return run_dir, data_dir


@pytest.mark.slow
def test_an_old_run_translates_evaluates_and_resumes(tmp_path):
    run_dir, _ = legacy_folder(tmp_path)

    from attnmt.decode.settings import DecodeSettings
    from attnmt.deploy.translate import TranslateSettings, translate_lines

    assert len(translate_lines(TranslateSettings(ckpt=str(run_dir)), DecodeSettings(beam_size=2), ["a dog", ""])) == 2

    from attnmt.eval.evaluate import evaluate

    results = evaluate(compose_config("evaluate", [f"ckpt={run_dir}", "eval.num_plots=1"], tmp_path / "eval"))
    assert results["num_sentences"] == 20 and "signature" in results["bleu"]
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["checkpoint"].startswith(str(run_dir))

    resumed = subprocess.run([sys.executable, str(ROOT / "train.py"), f"resume={run_dir}", "trainer.max_steps=6"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    step = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]
    assert step == 6
