"""attnmt-translate streams its input: peak memory, time to the first output line, and what a run
stopped with Ctrl-C keeps. Prints figures; asserts nothing about timings.

    python benchmarks/translate_stream.py --ckpt RUN_OR_CKPT              # about 80 s on 2 cores
    python benchmarks/translate_stream.py --ckpt RUN --src ../shared/data/multi30k/test_2016_flickr.de.gz
    python benchmarks/translate_stream.py --ckpt RUN --sweep 250,500,1000,2000   # the chunk_lines sweep only

A checkpoint comes from any training run; the quickest (a Transformer, 3 minutes on 2 cores):

    python train.py model=transformer trainer.max_time=00:00:03:00 trainer.max_epochs=100
    # the run folder is printed at the end: outputs/train/runs/<date>_<time>

Inputs are built by cycling through source sentences (by default the embedded synthetic corpus'
test set, generated here as ``python train.py`` generates it; ``--src`` any UTF-8 text file, .gz
too): a small file (``--small`` lines, 1,000) and a big one (``--big`` lines, 1,870,000: 100 to
120 MB). ``attnmt-translate ckpt=... input=FILE`` runs on each as a child process, whose peak RSS
(``VmHWM`` of ``/proc/PID/status``) is sampled every 50 ms and whose stdout is read as it comes.
The small run goes to its end; the big one gets SIGINT (Ctrl-C) after ``--seconds`` (60), and the
lines it wrote by then are counted and checked to be whole lines.

``--sweep`` (instead) times, in this process with the model loaded once, the whole ``--sweep-lines``
input (3,000) translated at once (the path before streaming) against streaming it in chunks of
each size given, over ``--sweep-rounds`` rounds (3) in rotated order, keeping each one's best
time; and counts the output rows that differ from the whole-input path.
"""

from __future__ import annotations

import argparse
import io
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def source_sentences(src: str | None) -> list[str]:
    from attnmt.data.io import read_lines

    if src:
        return [line for line in read_lines(src) if line.strip()]
    from attnmt.data.synthetic import generate_pairs

    # ensure_synthetic's defaults: 24,000 train, 1,000 valid, 1,000 test pairs of seed 7, in this order.
    return [" ".join(p.src) for p in generate_pairs(26_000, 7)[-1000:]]


def write_cycled(sentences: list[str], n: int, path: Path) -> int:
    """``n`` lines cycling through ``sentences``; the file's size in bytes."""
    lines = itertools.islice(itertools.cycle(sentences), n)
    with open(path, "w", encoding="utf-8") as f:
        while block := list(itertools.islice(lines, 10_000)):
            f.write("\n".join(block) + "\n")
    return path.stat().st_size


def translate_command() -> list[str]:
    script = Path(sys.executable).parent / "attnmt-translate"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "attnmt.deploy.translate"]


def peak_rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None  # the child has exited
    return None


def run_child(ckpt: str, input_file: Path, stop_after: float | None, workdir: Path) -> dict:
    """Run attnmt-translate on ``input_file``; SIGINT after ``stop_after`` seconds (None: to its end)."""
    out_path, err_path = workdir / "out.txt", workdir / "err.txt"
    with open(out_path, "wb") as out_file, open(err_path, "wb") as err_file:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [*translate_command(), f"ckpt={ckpt}", f"input={input_file}"],
            stdout=subprocess.PIPE, stderr=err_file, cwd=ROOT,
            # Python turns SIGINT into KeyboardInterrupt only where it is not ignored (as it is for a
            # background job of a non-interactive shell).
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        first_line: list[float] = []

        def read_stdout() -> None:
            while block := os.read(proc.stdout.fileno(), 1 << 16):
                if not first_line and b"\n" in block:
                    first_line.append(time.perf_counter() - start)
                out_file.write(block)

        reader = threading.Thread(target=read_stdout, daemon=True)
        reader.start()
        peak, peak_at_first_line, interrupted_at = 0.0, None, None
        while proc.poll() is None:
            peak = max(peak, peak_rss_mib(proc.pid) or 0.0)
            if first_line and peak_at_first_line is None:
                peak_at_first_line = peak
            if stop_after is not None and interrupted_at is None and time.perf_counter() - start >= stop_after:
                interrupted_at = time.perf_counter() - start
                proc.send_signal(signal.SIGINT)
            time.sleep(0.05)
        reader.join()
        wall = time.perf_counter() - start
    output = out_path.read_bytes()
    return {
        "status": proc.returncode, "wall_s": wall, "peak_rss_mib": peak, "peak_at_first_line": peak_at_first_line,
        "interrupted_at_s": interrupted_at,
        "first_line_s": first_line[0] if first_line else None, "lines": output.count(b"\n"),
        "whole_lines": not output or output.endswith(b"\n"), "bytes": len(output),
        "stderr": err_path.read_text(errors="replace").strip().splitlines()[-1:] or [""],
    }


def describe(name: str, r: dict) -> None:
    first = "none" if r["first_line_s"] is None else f"{r['first_line_s']:.1f} s"
    print(f"{name}: exit status {r['status']}, {r['wall_s']:.1f} s, {r['lines']:,} lines written "
          f"({'whole lines' if r['whole_lines'] else 'LAST LINE CUT'}), first output line after {first}, "
          f"peak RSS {r['peak_rss_mib']:,.0f} MiB")
    if r["peak_at_first_line"]:
        print(f"  peak RSS when the first line came out: {r['peak_at_first_line']:,.0f} MiB")
    if r["stderr"][0]:
        print(f"  last stderr line: {r['stderr'][0]}")


def sweep(ckpt: str, sentences: list[str], n: int, sizes: list[int], rounds: int) -> None:
    from attnmt.decode.settings import DecodeSettings
    from attnmt.deploy.translate import TranslateSettings, Translator
    from attnmt.deploy.translate_stream import translate_stream

    lines = list(itertools.islice(itertools.cycle(sentences), n))
    translator = Translator(TranslateSettings(ckpt=ckpt), DecodeSettings(), progress=False)
    translator.translate(lines[:50])  # warm-up
    names = ["whole", *map(str, sizes)]
    seconds: dict[str, list[float]] = {name: [] for name in names}
    outputs: dict[str, list[str]] = {}
    for r in range(rounds):  # each round in another order: a neighbour's load spreads over all
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            if name == "whole":
                outputs[name] = translator.translate(lines)
            else:
                out = io.StringIO()
                translate_stream(lines, lambda: translator.translate, int(name), out)
                outputs[name] = out.getvalue().split("\n")[:-1]
            seconds[name].append(time.perf_counter() - start)
            print(f"  round {r + 1}, {name:>5}: {seconds[name][-1]:.1f} s", flush=True)
    best = {name: min(t) for name, t in seconds.items()}
    print(f"chunk_lines sweep on {n:,} lines (beam 5, batch_tokens 8000), best of {rounds} rounds:")
    print(f"  whole input at once: {n / best['whole']:.1f} lines/s")
    for name in map(str, sizes):
        diff = sum(a != b for a, b in zip(outputs[name], outputs["whole"]))
        print(f"  chunk_lines={name:>5}: {n / best[name]:.1f} lines/s, {best[name] / best['whole'] - 1:+.1%} time "
              f"against the whole input; {diff} of {n} rows differ from it")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="a run folder, a .ckpt or an attnmt-export folder")
    parser.add_argument("--src", help="source sentences to cycle through (default: the synthetic test set)")
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--big", type=int, default=1_870_000)
    parser.add_argument("--seconds", type=float, default=60.0, help="SIGINT the big run after this long")
    parser.add_argument("--sweep", help="chunk sizes to time against the whole input, e.g. 250,500,1000")
    parser.add_argument("--sweep-lines", type=int, default=3000)
    parser.add_argument("--sweep-rounds", type=int, default=3)
    args = parser.parse_args()

    sentences = source_sentences(args.src)
    print(f"source: {args.src or 'the synthetic test set'} ({len(sentences):,} sentences); checkpoint {args.ckpt}")
    if args.sweep:
        sweep(args.ckpt, sentences, args.sweep_lines, [int(s) for s in args.sweep.split(",")], args.sweep_rounds)
        return
    workdir = Path(tempfile.mkdtemp(prefix="translate_stream_"))
    try:
        small, big = workdir / "small.txt", workdir / "big.txt"
        write_cycled(sentences, args.small, small)
        size = write_cycled(sentences, args.big, big)
        print(f"inputs: {args.small:,} lines; {args.big:,} lines ({size / 1e6:.0f} MB)")
        s = run_child(args.ckpt, small, None, workdir)
        describe(f"{args.small:,}-line input, to its end", s)
        b = run_child(args.ckpt, big, args.seconds, workdir)
        describe(f"{args.big:,}-line input, SIGINT after {args.seconds:g} s", b)
        if s["peak_rss_mib"] and b["peak_rss_mib"]:
            print(f"peak RSS big / small: {b['peak_rss_mib'] / s['peak_rss_mib']:.2f}")
        if b["interrupted_at_s"] and b["first_line_s"]:
            rate = b["lines"] / (b["interrupted_at_s"] - b["first_line_s"])
            print(f"big run: {b['lines']:,} lines by SIGINT at {b['interrupted_at_s']:.1f} s "
                  f"(about {rate:.0f} lines/s after the first chunk); exit status {b['status']}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
