"""Interrupting and resuming: SIGKILL and SIGTERM mid-run, damaged checkpoints, refused overrides."""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ROOT

STEPS = 80
EVERY = 10


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> Path:
    """Small enough for an epoch of a few batches: a run crosses many epoch boundaries."""
    from attnmt.data.synthetic import ensure_synthetic

    return ensure_synthetic(tmp_path_factory.mktemp("corpus"), num_train=600, num_valid=40, num_test=40)


def train_cmd(corpus: Path, run: Path, *extra: str) -> list[str]:
    return [
        sys.executable, str(ROOT / "train.py"), f"hydra.run.dir={run}",
        f"data.data_dir={corpus}", "data.num_train=600", "data.num_valid=40", "data.num_test=40",
        "data.vocab_size=300", "data.max_tokens=2048",
        "model.emb_size=32", "model.hidden_size=64", "model.dropout=0.3",
        f"trainer.max_steps={STEPS}", "trainer.max_epochs=1000", "trainer.log_every_n_steps=1",
        "trainer.val_check_interval=25", "trainer.check_val_every_n_epoch=null",
        f"callbacks.last_checkpoint.every_n_train_steps={EVERY}",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
        "callbacks.attention_monitor=null", "callbacks.run_page=null", *extra,  # pictures are tested elsewhere
    ]


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)


def logged(run_dir: Path, key: str) -> dict[int, float]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return {int(r["step"]): float(r[key]) for r in csv.DictReader(f) if r.get(key)}


def start_and_kill(cmd: list[str], cwd: Path, ckpt_dir: Path, sig: int) -> tuple[int, str]:
    """Start a run, send it ``sig`` once it has written its second periodic checkpoint; its exit
    status and output."""
    out = cwd / "killed.out"
    with open(out, "w") as f:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 300
        while not (ckpt_dir / "last.prev.ckpt").exists():
            assert proc.poll() is None, out.read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(sig)
        proc.wait(timeout=300)
    return proc.returncode, out.read_text()


@pytest.fixture(scope="module")
def uninterrupted(small_corpus, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("uninterrupted")
    done = run(train_cmd(small_corpus, work / "run"), work)
    assert done.returncode == 0, done.stderr[-3000:]
    return work / "run"


KILLER = """
import os, signal
from pytorch_lightning import Callback

class KillAt(Callback):
    # Runs before attnmt's LastCheckpoint (Lightning moves checkpoint callbacks last).
    def __init__(self, step):
        self.step = step

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
"""


def with_killer(tmp_path: Path) -> dict:
    (tmp_path / "killer.py").write_text(KILLER)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}


def kill_at_worst_moment(corpus: Path, run_dir: Path, tmp_path: Path) -> int:
    """SIGKILL a run when step 4*EVERY's checkpoint is written but the loggers have not yet
    written that step's metrics (Lightning logs them after ``on_train_batch_end``)."""
    cmd = train_cmd(corpus, run_dir, "+callbacks.kill._target_=killer.KillAt", f"+callbacks.kill.step={4 * EVERY}")
    return subprocess.run(cmd, cwd=tmp_path, env=with_killer(tmp_path), capture_output=True, timeout=600).returncode


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["after_second_checkpoint", "before_its_metrics_are_written"])
def test_killed_run_resumes_with_the_same_losses(small_corpus, uninterrupted, tmp_path, moment):
    run_dir = tmp_path / "run"
    if moment == "after_second_checkpoint":
        status, _ = start_and_kill(train_cmd(small_corpus, run_dir), tmp_path, run_dir / "checkpoints", signal.SIGKILL)
    else:
        status = kill_at_worst_moment(small_corpus, run_dir, tmp_path)
    assert status == -signal.SIGKILL  # really killed mid-run, not finished

    if moment == "after_second_checkpoint":
        resumed = run([sys.executable, str(ROOT / "train.py"), f"resume={run_dir}"], tmp_path)
    else:  # the killer callback is part of the run's command line: disarm it (its _target_ is code: a
        # resume takes it only from the user's own command line)
        cmd = [sys.executable, str(ROOT / "train.py"), f"resume={run_dir}", "+callbacks.kill._target_=killer.KillAt",
               "callbacks.kill.step=-1"]
        resumed = subprocess.run(
            cmd, cwd=tmp_path, env=with_killer(tmp_path), capture_output=True, text=True, timeout=600
        )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    found = re.search(rf"Resuming {run_dir} from \S+ \(step (\d+), epoch (\d+)\)", resumed.stdout)
    step_at_kill, epoch = int(found[1]), int(found[2])
    assert EVERY <= step_at_kill < STEPS and epoch > 0  # mid-run, past an epoch boundary
    if moment == "before_its_metrics_are_written":  # not from the checkpoint whose log row was lost
        assert step_at_kill == 3 * EVERY

    reference, got = logged(uninterrupted, "train/loss"), logged(run_dir, "train/loss")
    # One history: every step logged once, those after the checkpoint by the resumed run.
    assert sorted(got) == list(range(STEPS)), sorted(set(range(STEPS)) - set(got))
    after = [s for s in range(step_at_kill, STEPS)]
    assert len(after) >= 30
    for s in after:
        assert got[s] == pytest.approx(reference[s], rel=1e-5, abs=1e-6), f"step {s}"
    # Validation and the best checkpoint's bookkeeping carried over too.
    assert logged(run_dir, "val/bleu") == pytest.approx(logged(uninterrupted, "val/bleu"), abs=1e-6)
    summary, ref_summary = (yaml.safe_load((d / "summary.yaml").read_text()) for d in (run_dir, uninterrupted))
    assert summary["global_step"] == STEPS and summary["best_val_bleu"] == pytest.approx(ref_summary["best_val_bleu"])
    starts = yaml.safe_load((run_dir / "run_info.yaml").read_text())
    assert [s["global_step"] for s in starts] == [0, step_at_kill]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl_c"])
def test_signal_saves_a_checkpoint_and_resume_finishes_the_run(small_corpus, uninterrupted, tmp_path, sig):
    run_dir = tmp_path / "run"
    status, out = start_and_kill(train_cmd(small_corpus, run_dir), tmp_path, run_dir / "checkpoints", sig)
    assert status == 128 + sig, out[-3000:]
    assert f"Stopped by {'Ctrl-C' if sig == signal.SIGINT else 'SIGTERM'} after step" in out
    assert f"continue with: python train.py resume={run_dir}" in out
    assert "Traceback" not in out and not list((run_dir / "checkpoints").glob("*.tmp*"))
    # The checkpoint holds the step the run stopped at, not just the last periodic save.
    step = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    summary = yaml.safe_load((run_dir / "summary.yaml").read_text())
    assert summary["interrupted"] is True and summary["global_step"] == step < STEPS

    resumed = run([sys.executable, str(ROOT / "train.py"), f"resume={run_dir}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    reference, got = logged(uninterrupted, "train/loss"), logged(run_dir, "train/loss")
    for s in range(step, STEPS):
        assert got[s] == pytest.approx(reference[s], rel=1e-5, abs=1e-6), f"step {s}"


@pytest.mark.slow
def test_damaged_last_checkpoint_falls_back_to_the_previous_one(uninterrupted, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(uninterrupted, run_dir)
    (run_dir / "checkpoints" / "best.ckpt").unlink()
    last = run_dir / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # truncated
    previous_step = torch.load(run_dir / "checkpoints" / "last.prev.ckpt", weights_only=False)["global_step"]

    proc = run([sys.executable, str(ROOT / "train.py"), f"resume={run_dir}", f"trainer.max_steps={STEPS + 10}"],
               tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Skipping {last}: not a readable checkpoint" in proc.stdout
    assert f"Resuming from {run_dir / 'checkpoints' / 'last.prev.ckpt'} instead (step {previous_step})" in proc.stdout
    assert yaml.safe_load((run_dir / "summary.yaml").read_text())["global_step"] == STEPS + 10

    # With nothing valid left, a one-line error naming the folder.
    for ckpt in (run_dir / "checkpoints").glob("*.ckpt"):
        ckpt.write_bytes(b"garbage")
    proc = run([sys.executable, str(ROOT / "train.py"), f"resume={run_dir}"], tmp_path)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"no valid checkpoint in {run_dir / 'checkpoints'}" in errors[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "override, named",
    [("model.hidden_size=128", "model.hidden_size=128 (run: 64)"), ("seed=7", "seed=7 (run: 1234)"),
     ("model=transformer", "model=transformer (run: model=rnn_bahdanau)")],
)
def test_resume_refuses_overrides_that_change_the_model(uninterrupted, override, named, tmp_path):
    record = {p.name: p.read_bytes() for p in (uninterrupted / ".hydra").iterdir()}
    proc = run([sys.executable, str(ROOT / "train.py"), f"resume={uninterrupted}", override], tmp_path)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and named in errors[0] and "start a new run" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    # The refused overrides are not left in the run's record, where the next resume would read them.
    assert {p.name: p.read_bytes() for p in (uninterrupted / ".hydra").iterdir()} == record


def test_resume_of_a_folder_that_is_not_a_run(tmp_path):
    proc = run([sys.executable, str(ROOT / "train.py"), f"resume={tmp_path}"], tmp_path)
    assert proc.returncode == 2
    assert f"error: resume={tmp_path}: not a training run folder" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_same_seed_gives_the_same_metrics_and_another_seed_does_not(small_corpus, uninterrupted, tmp_path):
    steps = 40  # the first 40 steps of the reference run (schedules do not depend on max_steps)
    for name, extra in (("same", []), ("other", ["seed=99"])):
        done = run(train_cmd(small_corpus, tmp_path / name, *extra, f"trainer.max_steps={steps}"), tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
    reference = {s: v for s, v in logged(uninterrupted, "train/loss").items() if s < steps}
    assert logged(tmp_path / "same", "train/loss") == reference  # exactly, every step
    bleu = logged(tmp_path / "same", "val/bleu")
    assert list(bleu) == [24] and bleu[24] == logged(uninterrupted, "val/bleu")[24]
    other = logged(tmp_path / "other", "train/loss")
    assert sorted(other) == sorted(reference) and sum(other[s] != reference[s] for s in reference) > 0.9 * steps


@pytest.mark.slow
def test_killed_guided_run_resumes_with_the_same_translation_and_alignment_losses(small_corpus, tmp_path):
    pytest.importorskip("eflomal", reason="eflomal is not installed (pip install attnmt[align])")
    steps, kill_at = 60, 30
    guided = ["task.guided_alignment.weight=0.5", f"trainer.max_steps={steps}"]
    reference = tmp_path / "reference"
    done = run(train_cmd(small_corpus, reference, *guided), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp_path / "run"
    killed = train_cmd(small_corpus, run_dir, *guided, "+callbacks.kill._target_=killer.KillAt",
                       f"+callbacks.kill.step={kill_at}")
    env = with_killer(tmp_path)
    status = subprocess.run(killed, cwd=tmp_path, env=env, capture_output=True, timeout=600).returncode
    assert status == -signal.SIGKILL
    resumed = subprocess.run([sys.executable, str(ROOT / "train.py"), f"resume={run_dir}",
                              "+callbacks.kill._target_=killer.KillAt", "callbacks.kill.step=-1"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    step_at_kill = int(re.search(r"\(step (\d+), epoch", resumed.stdout)[1])
    assert 0 < step_at_kill <= kill_at
    # eflomal's links come from the cache the first run wrote, for the resumed run as for the killed one.
    assert "eflomal links for 600 sentence pairs read from" in resumed.stdout + resumed.stderr
    for key in ("train/loss", "train/align_loss"):
        want, got = logged(reference, key), logged(run_dir, key)
        assert sorted(got) == list(range(steps)), key
        for s in range(step_at_kill, steps):
            assert got[s] == pytest.approx(want[s], rel=1e-5, abs=1e-6), f"{key}, step {s}"


def test_versions_and_commit_saved_with_the_run_and_in_the_checkpoint(uninterrupted):
    start = yaml.safe_load((uninterrupted / "run_info.yaml").read_text())[0]
    assert start["argv"][0].endswith("train.py") and start["resumed_from"] is None
    meta = torch.load(uninterrupted / "checkpoints" / "last.ckpt", weights_only=False)["attnmt"]
    for record in (start, meta["provenance"]):
        # What ran, build tag included (2.14.1+cu130 and 2.14.1+cpu are different builds).
        assert record["packages"]["torch"] == record["torch"]["version"] == torch.__version__
        assert record["torch"]["cuda"] == torch.version.cuda
        assert record["hardware"]["accelerator"] == "cpu" and record["hardware"]["device"] == "cpu"
        assert record["hardware"]["precision"] == "32-true" and record["hardware"]["device_name"]
        assert record["packages"]["attnmt"] and record["python"] == sys.version.split()[0]
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        if head.returncode == 0:  # a git checkout: the commit the code came from
            assert record["git"]["commit"] == head.stdout.strip()
    assert meta["config"]["seed"] == 1234 and meta["config"]["model"]["hidden_size"] == 64


DOUBLE_CTRL_C = """
import os, signal, sys
from pytorch_lightning import Callback

class CtrlCTwice(Callback):
    # Two Ctrl-Cs inside one step: the first only asks for a stop at the end of the step (training
    # goes on), the second must not wait for the step to end.
    def __init__(self, step):
        self.step = step

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)
            print("still running after the first Ctrl-C", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGINT)
            raise AssertionError("still running after the second Ctrl-C")
"""


@pytest.mark.slow
def test_second_ctrl_c_aborts_at_once_without_saving(small_corpus, tmp_path):
    (tmp_path / "twice.py").write_text(DOUBLE_CTRL_C)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    run_dir = tmp_path / "run"
    cmd = train_cmd(
        small_corpus, run_dir, "+callbacks.twice._target_=twice.CtrlCTwice", f"+callbacks.twice.step={EVERY + 3}"
    )
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode not in (0, 128 + signal.SIGINT), out[-3000:]
    # The first Ctrl-C did not abort: it announced a stop with a checkpoint, and training went on.
    first = "Ctrl-C: stopping at the end of this step and saving last.ckpt (Ctrl-C again aborts at once)"
    assert out.count(first) == 1 and out.count("still running after the first Ctrl-C") == 1, out[-3000:]
    assert out.index(first) < out.index("still running after the first Ctrl-C")
    # The second aborted at once: the step did not end, nothing was saved.
    assert "still running after the second Ctrl-C" not in out and "Stopped by Ctrl-C" not in out
    # Nothing new was saved: last.ckpt is the periodic one from before the Ctrl-Cs.
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == EVERY


@pytest.mark.slow
def test_requeued_slurm_job_continues_its_own_run(small_corpus, uninterrupted, tmp_path):
    """SLURM re-runs a requeued job's command as it was (no resume=): its run continues."""
    import os
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(uninterrupted, run_dir)
    env = {**os.environ, "SLURM_RESTART_COUNT": "1"}
    proc = subprocess.run(train_cmd(small_corpus, run_dir, f"trainer.max_steps={STEPS + 10}"), cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SLURM requeued this job (SLURM_RESTART_COUNT=1): resuming its run" in proc.stdout
    assert f"Resuming {run_dir} from {run_dir / 'checkpoints' / 'last.ckpt'} (step {STEPS}" in proc.stdout
    assert yaml.safe_load((run_dir / "summary.yaml").read_text())["global_step"] == STEPS + 10


def made_before_guided_units(run_dir: Path, tmp_path: Path) -> Path:
    """A copy of ``run_dir`` whose config lacks the keys added since (as a run made before them)."""
    old = tmp_path / "old_run"
    shutil.copytree(run_dir, old)
    config = yaml.safe_load((old / "config.yaml").read_text())
    for key in ("units", "full_context"):
        del config["task"]["guided_alignment"][key]
    (old / "config.yaml").write_text(yaml.safe_dump(config))
    return old


@pytest.mark.slow
def test_run_made_before_a_setting_existed_resumes_with_the_behaviour_it_had(uninterrupted, tmp_path, monkeypatch):
    from attnmt.errors import ConfigError
    from attnmt.train.resume import check_unchanged, resume_argv

    old = made_before_guided_units(uninterrupted, tmp_path)
    # resume_argv marks the process as rewritten (for DDP ranks 1..); "" unmarks it, and the
    # monkeypatch restores this process's environment afterwards.
    monkeypatch.setenv("ATTNMT_RESUME_ARGV_REWRITTEN", "")
    argv = resume_argv(["train.py", f"resume={old}"])
    assert "task.guided_alignment.units=words" in argv and "task.guided_alignment.full_context=false" in argv
    monkeypatch.setenv("ATTNMT_RESUME_ARGV_REWRITTEN", "")
    assert not any(a.startswith("task.guided_alignment") for a in resume_argv(["train.py", f"resume={uninterrupted}"]))

    config = yaml.safe_load((uninterrupted / "config.yaml").read_text())
    check_unchanged(uninterrupted, config)
    config["task"]["guided_alignment"]["units"] = "words"
    check_unchanged(old, config)  # the value it was trained with
    config["task"]["guided_alignment"]["units"] = "subwords"
    with pytest.raises(ConfigError, match=r"task.guided_alignment.units='subwords' \(run: 'words'\)"):
        check_unchanged(old, config)

    monkeypatch.setenv("ATTNMT_RESUME_ARGV_REWRITTEN", "")
    proc = run([sys.executable, str(ROOT / "train.py"), f"resume={old}", f"trainer.max_steps={STEPS + 10}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The accepted resume records what it composed: the next resume continues with the same values.
    recorded = yaml.safe_load((old / ".hydra" / "overrides.yaml").read_text())
    assert f"trainer.max_steps={STEPS + 10}" in recorded and "task.guided_alignment.units=words" in recorded
    assert "model.hidden_size=64" in recorded and not any(o.startswith("resume=") for o in recorded)
    assert yaml.safe_load((old / "config.yaml").read_text())["task"]["guided_alignment"]["units"] == "words"
