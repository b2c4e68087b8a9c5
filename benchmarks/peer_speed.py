"""Joey NMT's training speed on this machine, now: the peer half of a side-by-side comparison.

    MODELS="" bash ../shared/bench/joeynmt/run.sh ../shared/data/multi30k /tmp/peers   # once: venv + data
    python benchmarks/peer_speed.py --work /tmp/peers                 # about 8 minutes
    python benchmarks/speed.py --peer benchmarks/results/peer.json    # ours, ratios against it

The reference table in ``../shared/bench/joeynmt/RESULTS.md`` was measured on one machine; the
machines this project runs on are not all alike (CPU model, AVX-512 or only AVX2), and the peer's
speed changes with them more than ours does. This runs ``joeynmt train`` with the benchmark's own
configs (``../shared/bench/joeynmt/configs``: the reference sizes, 4,096-token batches) for a fixed
number of seconds per model, stops it with SIGINT as ``run.sh`` does, and reads Joey's own
``Tokens per Sec`` log lines (non-padding target tokens per second of each 20-step window). It
writes their median, every window, and the process's peak resident memory. Only training is
measured: decoding speed depends on how well the model is trained, and a few minutes of training
are not the reference's 12.4.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from attnmt.utils.provenance import cpu_name

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT.parent / "shared" / "bench" / "joeynmt"
WINDOW = re.compile(r"Tokens per Sec:\s+(\d+)")


def run_peer(python: Path, work: Path, model: str, seconds: float) -> dict:
    cfg = work / "cfg" / f"{model}.sbs.yaml"
    subprocess.run([str(python), str(BENCH / "mk_cfg.py"), str(BENCH / "configs" / f"{model}.yaml"), str(cfg),
                    "--warmup", "80"], cwd=work, check=True, stdout=subprocess.DEVNULL)
    shutil.rmtree(work / "runs" / model, ignore_errors=True)  # Joey refuses an existing model_dir
    log_path = work / "logs" / f"{model}.sbs.out"
    with open(log_path, "w") as log:
        # SIGINT back to its default in the child: a shell starts background jobs with SIGINT
        # ignored, and a Python started that way never raises KeyboardInterrupt (Joey would then
        # train on to its last epoch).
        proc = subprocess.Popen([str(python), "-m", "joeynmt", "train", str(cfg), "--skip-test"], cwd=work,
                                stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            pid, _, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:  # ended by itself (an error, or a budget longer than Joey's epochs)
                break
            time.sleep(1)
        else:
            proc.send_signal(signal.SIGINT)  # Joey catches it, saves and exits
            for _ in range(120):
                pid, _, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                time.sleep(1)
            else:  # still training two minutes later: stop it for good
                proc.terminate()
                _, _, usage = os.wait4(proc.pid, 0)
    windows = [int(m) for m in WINDOW.findall(log_path.read_text())]
    if not windows:
        sys.exit(f"error: {log_path}: no 'Tokens per Sec' lines; Joey NMT failed or {seconds:.0f} s were too few")
    return {
        "train_tok_s": statistics.median(windows),
        "windows": windows,
        "seconds": seconds,
        "peak_rss_mib": usage.ru_maxrss / 1024,  # Linux: KiB
        "log": str(log_path),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "peers",
                        help="run.sh's work folder (Joey's venv in joey/, data in data/)")
    parser.add_argument("--models", nargs="+", choices=["rnn", "transformer"], default=["rnn", "transformer"])
    parser.add_argument("--seconds", type=float, default=200, help="training time per model (default 200)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "peer.json")
    args = parser.parse_args()

    work = args.work.resolve()
    python = work / "joey" / "bin" / "python"
    if not python.is_file() or not (work / "data").is_dir():
        sys.exit(f"error: --work {work}: no Joey NMT venv or data there; set them up with "
                 f"`MODELS=\"\" bash {os.path.relpath(BENCH, Path.cwd())}/run.sh ../shared/data/multi30k {work}`")
    results = {"peer": "joeynmt 2.3.0", "machine": {"cpu": cpu_name(), "cpus": os.cpu_count()}, "models": {}}
    for model in args.models:
        print(f"[{model}] joeynmt train for {args.seconds:.0f} s ...", file=sys.stderr, flush=True)
        results["models"][model] = r = run_peer(python, work, model, args.seconds)
        print(f"[{model}] median {r['train_tok_s']:.0f} tok/s over {len(r['windows'])} windows {r['windows']}, "
              f"peak RSS {r['peak_rss_mib']:.0f} MiB", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(args.out)
    print(json.dumps(results, indent=2))
    print(f"written: {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
