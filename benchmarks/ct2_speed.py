"""CTranslate2 exports against attnmt's own decoder: sentences/s, BLEU and peak memory.

    python benchmarks/ct2_speed.py --ckpt RUN_DIR                 # test_2016_flickr de-en
    python benchmarks/ct2_speed.py --ckpt RUN_DIR --src x.de --ref x.en --limit 200

RUN_DIR is a trained Transformer run (e.g. ``python train.py experiment=multi30k_transformer_ref``).
It is exported to a temporary folder as float32 and int8 (``attnmt.deploy.export``), then each row runs in
its own process (so its peak RSS is its own): attnmt's PyTorch search and CTranslate2 on the
exports, greedy and beam 5 (``alpha`` 0.6, attnmt's default), in ~4,096-token batches, with the same
number of threads. Sentences/s counts decoding only (model load and tokenization excluded); BLEU is
sacreBLEU's on the detokenized output. Peak RSS is the process's maximum resident memory; the
CTranslate2 rows import torch too (attnmt's data modules do), so "RSS before load" is printed
beside it: the model's own share is the difference.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MULTI30K = ROOT.parent / "shared" / "data" / "multi30k"


def rss_mib() -> float:
    """Peak resident memory of this process so far. VmHWM, not getrusage's ru_maxrss: Linux keeps
    ru_maxrss across exec, so a child would report its parent's peak at the fork."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: KiB (macOS: bytes)


def measure(args: argparse.Namespace) -> dict:
    """One row, in this process."""
    import torch

    torch.set_num_threads(args.threads)
    from attnmt.data.dataset import encode_for_eval
    from attnmt.data.io import read_parallel
    from attnmt.decode.search import translate_dataset
    from attnmt.decode.settings import DecodeSettings
    from attnmt.eval.metrics import corpus_scores

    sources, references = read_parallel(Path(args.src), Path(args.ref))
    sources, references = sources[: args.limit], references[: args.limit]
    before = rss_mib()
    settings = DecodeSettings(beam_size=args.beam, batch_tokens=4096)
    if args.backend == "torch":
        from attnmt.decode.checkpoint import load_for_decoding

        model, tokenizer, config, _ = load_for_decoding(args.model)
        dataset = encode_for_eval(tokenizer, sources, max_len=config["data"].get("max_len", 128))
        start = time.perf_counter()
        hyps = [h[0].tokens for h in translate_dataset(model, dataset, settings, progress=False)]
    else:
        from attnmt.decode.ct2 import ExportedModel

        exported = ExportedModel(args.model, intra_threads=args.threads)
        tokenizer = exported.tokenizer
        dataset = encode_for_eval(tokenizer, sources, max_len=exported.max_len)
        start = time.perf_counter()
        hyps = [h[0].tokens for h in exported.translate_dataset(dataset, settings)[0]]
    seconds = time.perf_counter() - start
    hypotheses = tokenizer.decode_tgt(hyps)
    return {
        "sentences": len(sources), "seconds": round(seconds, 2), "sent_s": round(len(sources) / seconds, 2),
        "bleu": round(corpus_scores(hypotheses, references)["bleu"]["score"], 2),
        "rss_before_load_mib": round(before), "peak_rss_mib": round(rss_mib()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="a trained Transformer run folder or .ckpt")
    parser.add_argument("--src", default=str(MULTI30K / "test_2016_flickr.de.gz"))
    parser.add_argument("--ref", default=str(MULTI30K / "test_2016_flickr.en.gz"))
    parser.add_argument("--limit", type=int, default=None, help="only the first N sentences")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--row", action="store_true", help=argparse.SUPPRESS)  # a child process
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--beam", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row:
        print(json.dumps(measure(args)))
        return

    from attnmt.deploy.export import export

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        models = {"attnmt (PyTorch)": ("torch", args.ckpt)}
        for q in ("float32", "int8"):
            models[f"CTranslate2 {q}"] = ("ct2", str(export(args.ckpt, Path(tmp) / q, q)))
        for beam in args.beams:
            for name, (backend, model) in models.items():
                cmd = [sys.executable, __file__, "--row", "--ckpt", args.ckpt, "--src", args.src, "--ref", args.ref,
                       "--threads", str(args.threads), "--backend", backend, "--model", model, "--beam", str(beam)]
                if args.limit:
                    cmd += ["--limit", str(args.limit)]
                proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                                      env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, check=False)
                if proc.returncode:
                    sys.exit(f"{name} beam {beam} failed:\n{proc.stderr[-3000:]}")
                row = {"decoder": name, "search": "greedy" if beam == 1 else f"beam {beam}",
                       **json.loads(proc.stdout.splitlines()[-1])}
                rows.append(row)
                print(f"{row['decoder']:18s} {row['search']:7s} {row['sent_s']:8.2f} sent/s  BLEU {row['bleu']:6.2f}  "
                      f"peak RSS {row['peak_rss_mib']:5d} MiB (before load {row['rss_before_load_mib']} MiB)",
                      flush=True)
    print(f"\n{rows[0]['sentences']} sentences of {args.src}, {args.threads} threads, alpha 0.6, ~4096-token batches")
    print(f"{'decoder':18s} {'search':7s} {'sent/s':>8s} {'x attnmt':>8s} {'BLEU':>6s} {'peak RSS MiB':>12s}")
    for row in rows:
        base = next(r for r in rows if r["decoder"] == "attnmt (PyTorch)" and r["search"] == row["search"])
        print(f"{row['decoder']:18s} {row['search']:7s} {row['sent_s']:8.2f} {row['sent_s'] / base['sent_s']:8.2f} "
              f"{row['bleu']:6.2f} {row['peak_rss_mib']:12d}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
