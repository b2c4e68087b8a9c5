"""``python train.py resume=RUN_DIR``: continue an interrupted run in its own folder.

The entry point rewrites the command line before Hydra composes the config: the run's own
overrides (``RUN_DIR/.hydra/overrides.yaml``) come first, then the user's, then
``hydra.run.dir=RUN_DIR``. :func:`check_unchanged` then refuses overrides that would change what
is being trained, and :func:`resume_checkpoint` picks the newest checkpoint that loads. Hydra does
not write the run's ``.hydra/`` folder on a resume (a refused one would leave its overrides in
there for the next); :func:`save_overrides` does, once the resume is accepted.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import yaml

from attnmt.errors import CheckpointError, ConfigError
from attnmt.utils.io import atomic_write_text
from attnmt.utils.legacy import upgrade_targets

log = logging.getLogger(__name__)

# What a resumed run may not change: the model, what it learns from and how, and the seed.
PROTECTED = ("model", "data", "task", "optimizer", "scheduler", "seed", "init", "trainer.accumulate_grad_batches")
# Within those, settings that do not change the computation.
UNPROTECTED = ("data.num_workers", "data.pin_memory", "task.compile")
# Settings added after runs were made with the behaviour these values give: a run whose saved
# config lacks one resumes with this value, so a newer default does not change what it trains.
ADDED_LATER = {
    "task.guided_alignment._target_": "attnmt.train.guided.GuidedAlignment",
    "task.guided_alignment.weight": 0.0,
    "task.guided_alignment.layer": -1,
    "task.guided_alignment.heads": 1,
    "task.guided_alignment.full_context": False,
    "task.guided_alignment.units": "words",
    "data.pad_to_multiple": 1,
}
_REWRITTEN = "ATTNMT_RESUME_ARGV_REWRITTEN"


def resume_argv(argv: list[str]) -> list[str]:
    """``argv`` with the run's saved overrides put in front when it holds ``resume=RUN_DIR``."""
    given = [a for a in argv[1:] if a.startswith("resume=")]
    # Lightning starts DDP ranks 1.. with the (already rewritten) command line of rank 0.
    if not given or given[-1] in ("resume=", "resume=null") or os.environ.get(_REWRITTEN):
        return argv
    run_dir = Path(given[-1].split("=", 1)[1])
    if any(a in ("-m", "--multirun") for a in argv[1:]):
        raise ConfigError("resume=RUN_DIR continues one run; it cannot be combined with -m/--multirun")
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    if not (run_dir / "config.yaml").is_file() or not overrides_file.is_file():
        raise ConfigError(
            f"resume={run_dir}: not a training run folder (expected config.yaml and .hydra/overrides.yaml in it)"
        )
    saved = yaml.safe_load(overrides_file.read_text(encoding="utf-8")) or []
    # The folder is data: it may hold settings, never code to run. An override that names a
    # _target_ (a function to call) is taken only from the user's own command line.
    for o in saved:
        if not isinstance(o, str) or ("_target_" in o and o not in argv[1:]):
            raise ConfigError(
                f"resume={run_dir}: {overrides_file} holds {str(o)[:80]!r}, which names a _target_ (a function "
                "to call); a resumed run takes only settings from its folder: remove that line, or, if you "
                "trust it, give that override on the command line yourself"
            )
    saved = [o for o in saved if not o.startswith(("resume=", "hydra.run.dir=")) and o not in argv[1:]]
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    choices = (yaml.safe_load(hydra_file.read_text(encoding="utf-8")) or {}).get("hydra", {}).get(
        "runtime", {}).get("choices", {}) if hydra_file.is_file() else {}
    for arg in argv[1:]:  # another config group option would not even compose with the saved overrides
        key, _, value = arg.partition("=")
        if key in PROTECTED and key in choices and value != choices[key]:
            raise ConfigError(
                f"resume={run_dir}: {arg} (run: {key}={choices[key]}); a resumed run keeps its "
                f"{', '.join(PROTECTED)}: start a new run to change them"
            )
    os.environ[_REWRITTEN] = "1"
    return [argv[0], *saved, *_added_later(run_dir), *argv[1:], f"hydra.run.dir={run_dir}", "hydra.output_subdir=null"]


def save_overrides(run_dir: Path) -> None:
    """Record the overrides an accepted resume composed (the run's, then the user's) in
    ``RUN_DIR/.hydra/overrides.yaml``, so that the next resume continues with them."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    task = [str(o) for o in HydraConfig.get().overrides.task if not str(o).startswith("resume=")]
    atomic_write_text(run_dir / ".hydra" / "overrides.yaml", yaml.safe_dump(task, sort_keys=False))


def _added_later(run_dir: Path) -> list[str]:
    """Overrides that give a run made before a setting existed the behaviour it was trained with."""
    saved = _flatten(yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {})
    keys = [k for k in ADDED_LATER if k not in saved and not k.endswith("._target_")]
    return [f"{k}={str(ADDED_LATER[k]).lower() if isinstance(ADDED_LATER[k], bool) else ADDED_LATER[k]}" for k in keys]


def _flatten(node, prefix: str = "") -> dict[str, object]:
    if isinstance(node, dict):
        out: dict[str, object] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): node}


def check_unchanged(run_dir: Path, config: dict) -> None:
    """Refuse a resumed config that trains something else than the run's saved ``config.yaml``."""
    saved_file = run_dir / "config.yaml"
    saved = _flatten(upgrade_targets(yaml.safe_load(saved_file.read_text(encoding="utf-8"))))
    now = _flatten(config)

    def protected(key: str) -> bool:
        return key.startswith(tuple(p + "." for p in PROTECTED) + PROTECTED) and not key.startswith(UNPROTECTED)

    saved = {**{k: v for k, v in ADDED_LATER.items() if k in now}, **saved}
    changed = sorted(k for k in set(saved) | set(now) if protected(k) and saved.get(k) != now.get(k))
    if changed:
        diffs = ", ".join(f"{k}={now.get(k)!r} (run: {saved.get(k)!r})" for k in changed[:3])
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        raise ConfigError(
            f"resume={run_dir}: {diffs}{more} differ from {saved_file}; a resumed run keeps its "
            f"{', '.join(PROTECTED)}: start a new run to change them"
        )


def requeued() -> bool:
    """Whether SLURM restarted this job (pre-emption or requeue): it then continues its own run."""
    return os.environ.get("SLURM_RESTART_COUNT", "0") not in ("", "0")


def find_checkpoints(run_dir: Path) -> list[Path]:
    """A run's checkpoints, newest first: ours, and Lightning's SLURM ``hpc_ckpt_N.ckpt``.

    ``last.next.ckpt`` is left out: it was written but not yet published (its step's metrics may
    not have reached the disk), see :class:`attnmt.train.callbacks.LastCheckpoint`."""
    from attnmt.train.callbacks import NEXT  # Lightning: imported when a run is resumed, not for --help

    ours = [p for p in (run_dir / "checkpoints").glob("*.ckpt") if p.name != NEXT]
    found = [*ours, *run_dir.glob("hpc_ckpt_*.ckpt")]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def resume_checkpoint(run_dir: Path) -> tuple[Path, dict]:
    """The newest checkpoint of a run that loads, and its contents; a damaged one is skipped with
    a warning naming it."""
    from attnmt.decode.checkpoint import read_checkpoint

    folder = run_dir / "checkpoints"
    candidates = find_checkpoints(run_dir)
    problems = []
    for path in candidates:
        try:
            ckpt = read_checkpoint(path)
        except CheckpointError as e:
            log.warning("Skipping %s", e)
            problems.append(str(e))
            continue
        if problems:
            log.warning("Resuming from %s instead (step %d)", path, ckpt.get("global_step", -1))
        return path, ckpt
    detail = f": {'; '.join(problems)}" if problems else ""
    raise CheckpointError(f"resume={run_dir}: no valid checkpoint in {folder}{detail}")
