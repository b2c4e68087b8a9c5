"""Side-by-side comparison of the runs of a multirun (``python train.py -m model=a,b,c``).

    attnmt-compare outputs/train/multiruns/<date>_<time>

writes ``comparison.md``, ``comparison.csv`` and ``val_bleu.png`` (validation BLEU against
training step, one line per run) into that folder, and prints the table. Test BLEU is decoded
here, greedily, from each run's best checkpoint on the test split of its own data. The ``page``
column links each run's page (``<run>/index.html``, :mod:`attnmt.train.run_page`).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from attnmt.errors import DataError, exit_on_user_error
from attnmt.utils.cli import ArgumentParser
from attnmt.utils.io import atomic_write_text

COLUMNS = ["run", "model", "params", "train_seconds", "best_val_bleu", "test_bleu", "page"]


def find_runs(folder: Path) -> list[Path]:
    runs = sorted(p.parent for p in folder.glob("*/summary.yaml"))
    if not runs:
        raise DataError(f"{folder}: no finished training runs (no */summary.yaml); give a multirun folder")
    return runs


def run_overrides(run: Path) -> list[str]:
    import yaml

    path = run / ".hydra" / "overrides.yaml"
    return (yaml.safe_load(path.read_text()) or []) if path.is_file() else []


def run_labels(runs: list[Path]) -> list[str]:
    """Each run's command-line overrides, less those every run shares (or its folder name)."""
    overrides = [run_overrides(r) for r in runs]
    shared = set.intersection(*(set(o) for o in overrides)) if len(runs) > 1 else set()
    return [" ".join(o for o in items if o not in shared) or run.name for run, items in zip(runs, overrides)]


def validation_curve(run: Path) -> list[tuple[int, float]]:
    metrics = run / "csv" / "metrics.csv"
    if not metrics.is_file():
        return []
    with open(metrics, newline="") as f:
        return [(int(r["step"]), float(r["val/bleu"])) for r in csv.DictReader(f) if r.get("val/bleu")]


def run_page_link(run: Path, folder: Path) -> str:
    """The run's page as a Markdown link relative to ``folder``, or "" if the run has none."""
    page = run / "index.html"
    return f"[index.html]({page.relative_to(folder).as_posix()})" if page.is_file() else ""


def summarize(run: Path, label: str, split: str = "test", device: str = "cpu", compute_type: str = "auto") -> dict:
    import yaml

    from attnmt.data.io import read_parallel
    from attnmt.decode.backends import load_backend
    from attnmt.decode.settings import DecodeSettings
    from attnmt.eval.evaluate import decode_lines, split_files
    from attnmt.utils.stored import target_name

    summary = yaml.safe_load((run / "summary.yaml").read_text())
    backend = load_backend(run, device, compute_type)
    src, ref, _ = split_files(backend.config, split, None, None)
    *_, scores = decode_lines(backend, *read_parallel(src, ref), DecodeSettings(beam_size=1), progress=False)
    return {
        "run": label,
        "model": target_name(summary["model"]),
        "params": summary["num_parameters"],
        "train_seconds": summary["train_seconds"],
        "best_val_bleu": round(summary["best_val_bleu"], 2) if summary["best_val_bleu"] is not None else None,
        "test_bleu": scores["bleu"]["score"],
        "signature": scores["bleu"]["signature"],
        "decoding": f"greedy, {backend.device}, {backend.compute_type}",
    }


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plot_curves(curves: dict[str, list[tuple[int, float]]], path: Path) -> None:
    from attnmt.viz.plotting import plt, save_figure

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, points in curves.items():
        if points:
            ax.plot(*zip(*points), marker="o", label=label)
    ax.set_xlabel("training step")
    ax.set_ylabel("validation BLEU (greedy)")
    ax.set_title("Validation BLEU during training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path.with_suffix(""), (path.suffix.lstrip("."),))


def compare(folder: str | Path, device: str = "auto", compute_type: str = "auto") -> list[dict]:
    """``device`` and ``compute_type``: where and how the test split is decoded (as evaluate.py's
    ``decode.device`` and ``decode.compute_type``)."""
    from attnmt.utils.device import decode_device

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder")
    where = str(decode_device(device, "--device"))
    runs = find_runs(folder)
    rows = [summarize(run, label, device=where, compute_type=compute_type) | {"page": run_page_link(run, folder)}
            for run, label in zip(runs, run_labels(runs))]
    signature, decoding = rows[0]["signature"], rows[0]["decoding"]
    atomic_write_text(
        folder / "comparison.md",
        markdown_table(rows) + f"\nTest BLEU: {decoding} decoding, sacreBLEU `{signature}`.\n",
    )
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS + ["signature", "decoding"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(folder / "comparison.csv", buf.getvalue())
    plot_curves({r["run"]: validation_curve(run) for r, run in zip(rows, runs)}, folder / "val_bleu.png")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(
        prog="attnmt-compare",
        description="Compare the training runs of a multirun folder: a Markdown/CSV table and a plot "
        "of validation BLEU against step.",
    )
    parser.add_argument("folder", help="a multirun folder, e.g. outputs/train/multiruns/<date>_<time>")
    parser.add_argument("--device", default="auto", help="where to decode the test split: auto (the first CUDA GPU "
                        "where one is visible, else the CPU), cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--compute-type", default="auto", help="float32, bfloat16 or float16; auto: bfloat16 on a "
                        "GPU with fast bf16, else float32 (default: auto)")
    args = parser.parse_args(argv)
    rows = exit_on_user_error(compare)(args.folder, args.device, args.compute_type)
    print(markdown_table(rows))
    print(f"Written: {Path(args.folder) / 'comparison.md'}, comparison.csv, val_bleu.png")


if __name__ == "__main__":
    main()
