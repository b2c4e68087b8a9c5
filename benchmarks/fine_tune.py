"""Fine-tuning with ``init=``: how many updates a model started from a trained one needs to reach the
validation BLEU that a from-scratch run reaches in a fixed time.

    nice -n 10 python benchmarks/fine_tune.py                 # 10-minute runs, about 30 minutes in all
    python benchmarks/fine_tune.py --minutes 2 --work /tmp/ft  # a quick look

Multi30k de-en's 29,000 training pairs (../shared/data/multi30k) are split into two halves, written
under ``--work`` (default ``data/bench/fine_tune``, git-ignored). Three runs of the reference
Transformer recipe (``experiment=multi30k_transformer_ref``, its sentencepiece model, its optimizer
and schedule, nothing tuned), each validated on Multi30k's val split (greedy, as during training):

1. general: trained ``--minutes`` on the first half;
2. scratch: trained ``--minutes`` on the second half from random weights; its best validation BLEU
   is the bar, reached after ``N`` updates;
3. fine-tuned: ``init=general`` on the second half, validated every ``--every`` updates, for
   ``N / 4`` updates (the target: the bar within a quarter of the scratch run's updates).

The general model's own validation BLEU (no update on the second half) is printed too: the two
halves are one domain, so part of the fine-tuned run's head start is there before its first update.
Prints one table and writes it as JSON to ``benchmarks/results/fine_tune.json``.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MULTI30K = ROOT.parent / "shared" / "data" / "multi30k"


def split_halves(work: Path) -> tuple[Path, Path]:
    """The training pairs in two halves (first and second 14,500 lines): ``work/half{1,2}.{de,en}``."""
    work.mkdir(parents=True, exist_ok=True)
    for lang in ("de", "en"):
        with gzip.open(MULTI30K / f"train.{lang}.gz", "rt", encoding="utf-8") as f:
            lines = f.readlines()
        middle = len(lines) // 2
        for name, part in (("half1", lines[:middle]), ("half2", lines[middle:])):
            path = work / f"{name}.{lang}"
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(part), encoding="utf-8")
            tmp.replace(path)
    return work / "half1", work / "half2"


def train(run: Path, prefix: Path, work: Path, extra: list[str]) -> None:
    cmd = [sys.executable, str(ROOT / "train.py"), "experiment=multi30k_transformer_ref", "data=parallel",
           f"data.train_prefix={prefix}", f"data.valid_prefix={MULTI30K / 'val'}", "data.src_lang=de",
           "data.tgt_lang=en", f"data.cache_dir={work / 'cache'}", "trainer.enable_progress_bar=false",
           f"hydra.run.dir={run}", *extra]
    print("+", " ".join(cmd[1:]), flush=True)
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"train.py failed for {run}:\n{done.stderr[-3000:]}")


def bleu_curve(run: Path) -> list[tuple[int, float]]:
    """(update, validation BLEU) for each validation of a run, from its metrics.csv."""
    with open(run / "csv" / "metrics.csv", newline="") as f:
        return [(int(r["step"]) + 1, float(r["val/bleu"])) for r in csv.DictReader(f) if r.get("val/bleu")]


def validate_only(run: Path, work: Path) -> float:
    """A run's best checkpoint's validation BLEU, greedy, as training computes it."""
    cmd = [sys.executable, str(ROOT / "evaluate.py"), f"ckpt={run}", "split=valid", "decode.beam_size=1",
           "eval.num_plots=0", f"hydra.run.dir={work / 'general_on_valid'}"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"evaluate.py failed for {run}:\n{done.stderr[-3000:]}")
    results = json.loads((work / "general_on_valid" / "results.json").read_text())
    return float(results["bleu"]["score"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="training time of the general and scratch runs")
    parser.add_argument("--every", type=int, default=20, help="validate the fine-tuned run every N updates")
    parser.add_argument("--work", type=Path, default=ROOT / "data" / "bench" / "fine_tune")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if not MULTI30K.is_dir():
        sys.exit(f"{MULTI30K}: the Multi30k files are not there (see ../shared/data/README.md)")

    half1, half2 = split_halves(args.work)
    seconds = int(args.minutes * 60)
    budget = [f"trainer.max_time=00:00:{seconds // 60:02d}:{seconds % 60:02d}", f"seed={args.seed}"]
    general, scratch, tuned = args.work / "general", args.work / "scratch", args.work / "fine_tuned"
    if not (general / "checkpoints" / "best.ckpt").is_file():
        train(general, half1, args.work, budget)
    if not (scratch / "checkpoints" / "best.ckpt").is_file():
        train(scratch, half2, args.work, budget)
    scratch_curve = bleu_curve(scratch)
    bar_step, bar = max(scratch_curve, key=lambda point: (point[1], -point[0]))
    quarter = math.ceil(bar_step / 4)
    steps = max(quarter, args.every)
    train(tuned, half2, args.work, [f"init={general}", f"seed={args.seed}", f"trainer.max_steps={steps}",
                                    "trainer.max_time=null", f"trainer.val_check_interval={args.every}",
                                    "trainer.check_val_every_n_epoch=null"])
    tuned_curve = bleu_curve(tuned)
    reached = next((step for step, score in tuned_curve if score >= bar), None)
    general_bleu = validate_only(general, args.work)

    print(f"\nMulti30k de-en val (1,014 sentences), greedy; reference Transformer recipe; {args.minutes:g}-minute runs")
    general_curve = bleu_curve(general)
    print(f"general (half 1, {general_curve[-1][0]} updates): val BLEU {max(s for _, s in general_curve):.2f}"
          f" during training, {general_bleu:.2f} for its best checkpoint before any update on half 2")
    print(f"scratch (half 2): best val BLEU {bar:.2f} at update {bar_step}; curve "
          + ", ".join(f"{step}:{score:.1f}" for step, score in scratch_curve))
    print("fine-tuned (init=general, half 2): curve " + ", ".join(f"{step}:{score:.1f}" for step, score in tuned_curve))
    if reached is None:
        print(f"fine-tuned did not reach {bar:.2f} within {steps} updates (target: {quarter})")
    else:
        print(f"fine-tuned reached {bar:.2f} at update {reached}: {reached / bar_step:.3f} of the scratch run's "
              f"{bar_step} (target <= 0.25)")
    out = ROOT / "benchmarks" / "results" / "fine_tune.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "minutes": args.minutes, "general_val_bleu": general_bleu, "scratch_curve": scratch_curve,
        "bar": bar, "bar_step": bar_step, "fine_tuned_curve": tuned_curve, "reached_at": reached,
        "ratio": None if reached is None else reached / bar_step,
    }, indent=2))


if __name__ == "__main__":
    main()
