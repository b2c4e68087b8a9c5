"""The data path at scale: token-store preparation, second start and peak memory of training, for
corpora from 29k to 10M pairs.

    nice -n 10 python benchmarks/data_scale.py                     # 29k, 0.2M, 2.03M pairs
    nice -n 10 python benchmarks/data_scale.py --repeats 1 7 70 345 --ddp

Corpora: the Multi30k de-en training split (../shared/data/multi30k, 29,000 pairs) repeated
``r`` times (its gzip files concatenated: a valid multi-member gzip, made in no time), written
under ``--work`` (default ``data/bench``, git-ignored); nothing is committed or downloaded.
For each size, each measurement in a fresh process:

- prepare: sentencepiece from its sample, then the token store (streamed, encoded in
  ``data.num_proc`` processes, filtered, written), into an empty cache: seconds, and pairs/s of the
  store alone.
- second start: ``train.py`` (Transformer as configured, ``data=parallel``, 10 steps) with the
  cache now filled: seconds from launch to the first training step; peak RSS (``getrusage``:
  it counts the store's pages the process has mapped, which are shared through the page cache)
  and the process's own memory at the end (``RssAnon``).
- with ``--ddp``: the same run as 2 CPU processes (``trainer=ddp``), each rank's figures.

Prints one table and writes it as JSON to ``benchmarks/results/data_scale.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MULTI30K = ROOT.parent / "shared" / "data" / "multi30k"
CHILD = "ATTNMT_DATA_SCALE_CHILD"  # set in the processes this script runs train.py in


def make_corpus(work: Path, repeats: int) -> Path:
    folder = work / f"x{repeats}"
    folder.mkdir(parents=True, exist_ok=True)
    for lang in ("de", "en"):
        path = folder / f"train.{lang}.gz"
        one = (MULTI30K / f"train.{lang}.gz").read_bytes()
        if not path.is_file() or path.stat().st_size != len(one) * repeats:
            tmp = path.with_suffix(".tmp")
            with open(tmp, "wb") as f:
                for _ in range(repeats):
                    f.write(one)
            tmp.rename(path)
    return folder / "train"


def data_args(prefix: Path, cache: Path) -> list[str]:
    return ["data=parallel", f"data.train_prefix={prefix}", f"data.valid_prefix={MULTI30K / 'val'}",
            "data.src_lang=de", "data.tgt_lang=en", f"data.cache_dir={cache}"]


def prepare(prefix: Path, cache: Path) -> dict:
    """Time sentencepiece and the store in a child process, into an empty cache."""
    shutil.rmtree(cache, ignore_errors=True)
    code = f"""
import json, sys, time
sys.path.insert(0, {str(ROOT / 'tests')!r})
from conftest import compose_config
from attnmt.utils.config import build
dm = build(compose_config("train", {data_args(prefix, cache)!r}).data, "data")
t0 = time.perf_counter(); dm.build_tokenizer(); t1 = time.perf_counter(); dm.train_stores(); t2 = time.perf_counter()
print("RESULT", json.dumps({{"spm_s": t1 - t0, "store_s": t2 - t1, "pairs": dm.train_stores()[0].stats["pairs"]}}))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(done.stderr[-3000:])
    result = json.loads(done.stdout.split("RESULT", 1)[1])
    result["pairs_per_s"] = result["pairs"] / result["store_s"]
    return result


def train_run(prefix: Path, cache: Path, run_dir: Path, ddp: bool) -> dict[int, dict]:
    """10 training steps from a filled cache; per rank: seconds to the first step and peak RSS."""
    shutil.rmtree(run_dir, ignore_errors=True)
    args = [*data_args(prefix, cache), "model=transformer", "trainer.max_steps=10", "trainer.num_sanity_val_steps=0",
            "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", f"hydra.run.dir={run_dir}"]
    if ddp:
        args += ["trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu"]
    start = time.time()
    done = subprocess.run([sys.executable, __file__, *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, CHILD: "1"}, check=False)
    log = done.stdout + done.stderr
    if done.returncode:
        sys.exit(log[-3000:])
    ranks: dict[int, dict] = {}
    for rank, stamp in re.findall(r"FIRST_STEP rank=(\d+) time=([\d.]+)", log):
        ranks.setdefault(int(rank), {})["first_step_s"] = float(stamp) - start
    for rank, kib, anon in re.findall(r"PEAK_RSS rank=(\d+) kib=(\d+) anon_kib=(\d+)", log):
        ranks.setdefault(int(rank), {}).update(peak_rss_mib=int(kib) / 1024, anon_rss_mib=int(anon) / 1024)
    ranks[0]["prepared_here"] = "Prepared " in log  # a second start must only reuse the store
    return ranks


def child() -> None:
    """Run train.py in this process, reporting the first training step and the peak RSS. Lightning
    starts DDP ranks 1.. by running this script again, so they report too."""
    import atexit
    import resource

    import hydra

    rank = os.environ.get("LOCAL_RANK", "0")

    def report() -> None:
        # Peak RSS counts the store's pages this process mapped (shared, page cache); RssAnon at
        # the end is the process's own memory.
        status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
        anon = int(status["RssAnon"].split()[0])
        print(f"PEAK_RSS rank={rank} kib={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss} anon_kib={anon}",
              flush=True)

    atexit.register(report)
    from attnmt.train.task import TranslationTask

    step = TranslationTask.training_step

    def first_step(self, *args, **kwargs):
        if not getattr(self, "_bench_reported", False):
            self._bench_reported = True
            print(f"FIRST_STEP rank={rank} time={time.time():.3f}", flush=True)
        return step(self, *args, **kwargs)

    TranslationTask.training_step = first_step
    # train.py's main, called here rather than run as a script: sys.argv[0] stays this file,
    # which is what Lightning runs again for the other ranks.
    from attnmt.errors import exit_on_user_error
    from attnmt.train.run import train

    hydra.main(version_base="1.3", config_path=str(ROOT / "conf"), config_name="train")(exit_on_user_error(train))()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, nargs="+", default=[1, 7, 70],
                        help="corpus sizes as repeats of Multi30k's 29,000 training pairs")
    parser.add_argument("--ddp", action="store_true", help="also a 2-rank CPU DDP run per size")
    parser.add_argument("--work", type=Path, default=ROOT / "data" / "bench")
    parser.add_argument("--reuse", action="store_true",
                        help="keep a cache prepared by an earlier run (no preparation figures)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "data_scale.json")
    args = parser.parse_args()
    if not (MULTI30K / "train.de.gz").is_file():
        sys.exit(f"{MULTI30K}: Multi30k's raw files are needed (train.de.gz, train.en.gz, val.*.gz)")
    rows = []
    for repeats in args.repeats:
        prefix = make_corpus(args.work, repeats)
        cache = args.work / f"x{repeats}" / "cache"
        row = {"pairs": 29000 * repeats, "spm_s": float("nan"), "store_s": float("nan"), "pairs_per_s": float("nan")}
        if not (args.reuse and list(cache.glob("store-*/meta.json"))):
            row.update(prepare(prefix, cache))
        row["single"] = train_run(prefix, cache, args.work / "runs" / f"x{repeats}", ddp=False)
        if args.ddp:
            row["ddp"] = train_run(prefix, cache, args.work / "runs" / f"x{repeats}-ddp", ddp=True)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print()
    print("| pairs | spm (s) | store (s) | store pairs/s | 2nd start to step 1 (s) | peak RSS (MiB) "
          "| own at end (MiB) |"
          + (" DDP rank 0 / 1: start (s) | DDP rank 0 / 1: peak RSS (MiB) |" if args.ddp else ""))
    print("|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if args.ddp else ""))
    for r in rows:
        line = (f"| {r['pairs']:,} | {r['spm_s']:.1f} | {r['store_s']:.1f} | {r['pairs_per_s']:,.0f} | "
                f"{r['single'][0]['first_step_s']:.1f} | {r['single'][0]['peak_rss_mib']:,.0f} | "
                f"{r['single'][0]['anon_rss_mib']:,.0f} |")
        if "ddp" in r:
            d = r["ddp"]
            line += (f" {d[0]['first_step_s']:.1f} / {d[1]['first_step_s']:.1f} |"
                     f" {d[0]['peak_rss_mib']:,.0f} / {d[1]['peak_rss_mib']:,.0f} |")
        print(line)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    if os.environ.get(CHILD):
        child()
    else:
        main()
