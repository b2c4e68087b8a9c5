"""Checkpoint averaging, and the ``attnmt-average`` command.

``attnmt-average ckpt=RUN_DIR [last=5] [out=PATH]`` averages, parameter by parameter, the model
weights of a run's last ``last`` validation checkpoints (``RUN_DIR/checkpoints/val/``, kept when the
run was trained with ``callbacks.val_checkpoints.save_top_k=N``, N > 0 or -1 for all) and writes
one checkpoint that ``evaluate.py`` and ``attnmt-translate`` load like any other.
``ckpt=[a.ckpt,b.ckpt,...]`` averages the files given. Averaging the last checkpoints of a run
whose learning rate stays high to the end can decode better than any one of them (Vaswani et al.
(2017) average the last 5 or 20); after ``scheduler=linear``, which anneals the last epochs, it
can decode worse (docs/performance.md, "Time to quality").
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from attnmt.errors import CheckpointError, ConfigError
from attnmt.utils.schema import Ge

USAGE_HEAD = """usage: attnmt-average ckpt=RUN_DIR [last=N] [out=PATH]
       attnmt-average ckpt=[A.ckpt,B.ckpt,...] out=PATH

Average the model weights of several checkpoints of one run into one checkpoint.

keys:
"""
USAGE_TAIL = """
A bad key or value is one line on stderr (error: ...) and exit status 2.
"""


@dataclass
class AverageSettings:
    """The keys of ``attnmt-average`` (its ``--help`` is written from them)."""

    ckpt: str | list[str] = field(metadata={
        "help": "a training run's output folder: its validation checkpoints (checkpoints/val/*.ckpt), the newest "
                "`last` of them by training step; or a list [A.ckpt,B.ckpt,...] of .ckpt files of one run",
        "metavar": "RUN_DIR"})
    last: Annotated[int, Ge(1)] = field(default=5, metadata={
        "help": "how many of the newest validation checkpoints", "metavar": "N"})
    out: str | None = field(default=None, metadata={
        "help": "where to write the average (null: RUN_DIR/checkpoints/averaged.ckpt)", "metavar": "PATH"})


def select(ckpt, last: int) -> tuple[list[Path], Path | None]:
    """The checkpoint files to average, and the run folder they were found in (if one was given)."""
    if isinstance(ckpt, (list, tuple)):
        files = [Path(p) for p in ckpt]
        for f in files:
            if not f.is_file():
                raise CheckpointError(f"{f}: no such checkpoint file")
        return files, None
    run = Path(ckpt)
    folder = run / "checkpoints" / "val"
    if not run.is_dir():
        raise CheckpointError(f"{run}: no such run folder (give ckpt=RUN_DIR or ckpt=[A.ckpt,B.ckpt,...])")
    files = sorted(folder.glob("*.ckpt")) if folder.is_dir() else []
    if not files:
        raise CheckpointError(
            f"{folder}: no validation checkpoints; train with callbacks.val_checkpoints.save_top_k=N "
            "(N > 0, or -1 for all) or give ckpt=[A.ckpt,B.ckpt,...]"
        )
    steps = {f: _step(f) for f in files}
    return sorted(files, key=steps.get)[-last:], run


def _step(path: Path) -> int:
    ckpt = _read(path)
    return int(ckpt.get("global_step", -1))


def _read(path: Path) -> dict:
    from attnmt.decode.checkpoint import read_checkpoint

    return read_checkpoint(path)


def average_checkpoints(files: list[Path]) -> dict:
    """The newest file's checkpoint (by training step) with ``state_dict`` replaced by the mean of
    all files' weights. All files must hold the same model config, vocabulary and weight shapes."""
    from attnmt.decode.checkpoint import CHECKPOINT_KEY

    if not files:
        raise CheckpointError("nothing to average: no checkpoint files given")
    ckpts = [(f, _read(f)) for f in files]
    ckpts.sort(key=lambda fc: int(fc[1].get("global_step", -1)))
    ref_path, ref = ckpts[-1]
    ref_meta = ref[CHECKPOINT_KEY]
    total = {k: v.double() for k, v in ref["state_dict"].items() if v.is_floating_point()}
    for path, ckpt in ckpts[:-1]:
        meta, weights = ckpt[CHECKPOINT_KEY], ckpt["state_dict"]
        if meta.get("config", {}).get("model") != ref_meta.get("config", {}).get("model"):
            raise CheckpointError(f"{path}: another model config than {ref_path}: average checkpoints of one run")
        if meta.get("tokenizer") != ref_meta.get("tokenizer"):
            raise CheckpointError(f"{path}: another vocabulary than {ref_path}: average checkpoints of one run")
        if weights.keys() != ref["state_dict"].keys():
            raise CheckpointError(f"{path}: other weight names than {ref_path}: average checkpoints of one run")
        for key, acc in total.items():
            if weights[key].shape != acc.shape:
                raise CheckpointError(f"{path}: {key} is {tuple(weights[key].shape)}, {tuple(acc.shape)} in {ref_path}")
            acc += weights[key].double()
    averaged = {k: (total[k] / len(ckpts)).to(v.dtype) if k in total else v for k, v in ref["state_dict"].items()}
    out = {k: v for k, v in ref.items() if k not in ("optimizer_states", "lr_schedulers", "callbacks", "loops")}
    out["state_dict"] = averaged
    out[CHECKPOINT_KEY] = {**ref_meta, "averaged_from": [
        {"file": str(p), "global_step": int(c.get("global_step", -1))} for p, c in ckpts
    ]}
    return out


def parse_args(argv: list[str]) -> AverageSettings:
    from attnmt.utils.cli import parse_key_values

    (args,) = parse_key_values(argv, (AverageSettings,), "attnmt-average", "attnmt-average ckpt=RUN_DIR")
    return args


def run(args: AverageSettings) -> Path:
    import torch

    from attnmt.utils.io import atomic_path

    files, run_dir = select(args.ckpt, args.last)
    if args.out is None and run_dir is None:
        raise ConfigError("out=PATH is required when ckpt is a list of files")
    out = Path(args.out) if args.out is not None else run_dir / "checkpoints" / "averaged.ckpt"
    averaged = average_checkpoints(files)
    with atomic_path(out) as tmp:
        torch.save(averaged, tmp)
    from attnmt.decode.checkpoint import CHECKPOINT_KEY

    steps = ", ".join(str(x["global_step"]) for x in averaged[CHECKPOINT_KEY]["averaged_from"])
    print(f"averaged {len(files)} checkpoints (steps {steps}) -> {out}")
    return out


def main(argv: list[str] | None = None) -> None:
    from attnmt.errors import exit_on_user_error

    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "help") for a in argv):
        from attnmt.utils.cli import usage_text

        print(usage_text(USAGE_HEAD, (AverageSettings,), USAGE_TAIL), end="")
        return
    exit_on_user_error(lambda: run(parse_args(argv)))()


if __name__ == "__main__":
    main()
