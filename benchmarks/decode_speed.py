"""Decoding speed on one GPU or the CPU: attnmt's own search against CTranslate2, same sentences.

    python benchmarks/decode_speed.py --ckpt RUN_DIR              # the GPU where one is visible
    python benchmarks/decode_speed.py --ckpt RUN_DIR --device cpu --limit 100
    python benchmarks/decode_speed.py                              # on a GPU: trains its own model

Two models: the trained Transformer of ``--ckpt`` (without it, on a GPU, the 5-minute GPU recipe
``experiment=multi30k_transformer_gpu`` is trained for ``--train-seconds``) and ``transformer_base``
(6+6 layers, d_model 512) with random weights, built on the same tokenizer. A random model writes
until the length cap (1.5 x source + 10), so its rows are the heavier work; they have no BLEU.

Each model is decoded greedily and with beam 5 (alpha 0.6) by

- attnmt's search in float32, and in bfloat16 (autocast) where the device has fast bf16;
- CTranslate2 on an export: float16 and int8_float16 on a GPU; the export's own float32 and int8
  on the CPU.

Columns: sentences/s and target tokens/s (output subword pieces, ``</s>`` not counted) of
decoding alone (the model is loaded and one batch decoded before the clock starts); ``x fp32``: the
speed over attnmt float32 on the same model and search; BLEU (sacreBLEU, detokenized) against the
references; ``= fp32``: the share of sentences whose output is attnmt float32's; peak GPU memory
(PyTorch rows: ``torch.cuda.max_memory_allocated``; CTranslate2 keeps its own allocator, not
counted). Source: Multi30k test_2016_flickr de-en from ../shared, else the embedded corpus's test
split. Rows stop once ``--budget-s`` seconds have passed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
BASE = {"d_model": 512, "num_heads": 8, "d_ff": 2048, "encoder_layers": 6, "decoder_layers": 6}


def sentences(shared: Path, limit: int) -> tuple[list[str], list[str], str]:
    from attnmt.data.io import read_parallel

    multi30k = shared / "data" / "multi30k"
    src, ref = multi30k / "test_2016_flickr.de.gz", multi30k / "test_2016_flickr.en.gz"
    if not src.is_file():
        from attnmt.data.synthetic import ensure_synthetic

        folder = ensure_synthetic(Path(tempfile.mkdtemp()) / "synthetic")
        src, ref = folder / "test.en", folder / "test.syn"
    sources, references = read_parallel(src, ref)
    return sources[:limit], references[:limit], src.name


def train_reference(shared: Path, seconds: int, out: Path) -> Path:
    """A briefly trained Transformer on this GPU: the GPU recipe, cut to ``seconds``."""
    hms = time.strftime("%H:%M:%S", time.gmtime(seconds))
    spm = shared / "bench" / "joeynmt" / "spm" / "spm8k.model"
    if (shared / "data" / "multi30k" / "train.de.gz").is_file() and spm.is_file():
        cmd = ["experiment=multi30k_transformer_gpu", f"data.source_dir={shared / 'data' / 'multi30k'}",
               f"data.spm_model={spm}"]
    else:  # the embedded corpus
        cmd = ["model=transformer", "trainer=gpu"]
    cmd = [sys.executable, str(ROOT / "train.py"), *cmd, f"trainer.max_time=00:{hms}", f"hydra.run.dir={out}",
           "trainer.enable_progress_bar=false"]
    print("training:", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return out


def random_base(ckpt: Path, out: Path) -> Path:
    """A checkpoint of transformer_base with random weights and ``ckpt``'s tokenizer and config."""
    import torch

    from attnmt.data.tokenizer import Tokenizer
    from attnmt.decode.checkpoint import CHECKPOINT_KEY, read_checkpoint, resolve_checkpoint
    from attnmt.models import build_model

    stored = read_checkpoint(resolve_checkpoint(ckpt))
    meta = stored[CHECKPOINT_KEY]
    meta["config"]["model"].update(BASE)
    tokenizer = Tokenizer.from_state(meta["tokenizer"])
    torch.manual_seed(0)
    model = build_model(meta["config"]["model"], tokenizer.src_vocab_size, tokenizer.tgt_vocab_size, tokenizer.joint)
    stored["state_dict"] = {f"model.{k}": v for k, v in model.state_dict().items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({CHECKPOINT_KEY: meta, "state_dict": stored["state_dict"]}, out)
    return out


def decode(backend, sources: list[str], beam: int, batch_tokens: int) -> tuple[list[list[int]], float]:
    from attnmt.decode.settings import DecodeSettings

    settings = DecodeSettings(beam_size=beam, batch_tokens=batch_tokens)
    dataset = backend.dataset(sources)
    backend.translate(backend.dataset(sources[:32]), settings)  # warm-up: kernels, allocator, autotuning
    start = time.perf_counter()
    hyps = [h[0].tokens for h in backend.translate(dataset, settings)]
    return hyps, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", help="a trained Transformer run folder or .ckpt (default on a GPU: train one)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--limit", type=int, help="sentences (default: 1000 on a GPU, 100 on the CPU)")
    parser.add_argument("--batch-tokens", type=int, default=8000, help="source tokens per batch (default 8000)")
    parser.add_argument("--train-seconds", type=int, default=90, help="training without --ckpt (default 90)")
    parser.add_argument("--budget-s", type=float, default=300, help="stop starting rows after this (default 300)")
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared",
                        help="folder holding data/multi30k and bench/joeynmt/spm (default ../shared)")
    parser.add_argument("--models", nargs="+", default=["reference", "transformer_base"])
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    started = time.perf_counter()

    import torch

    from attnmt.decode.backends import load_backend
    from attnmt.eval.metrics import corpus_scores
    from attnmt.utils.device import decode_device, has_fast_bf16

    device = decode_device(args.device, "--device")
    gpu = device.type == "cuda"
    tmp = Path(tempfile.mkdtemp(prefix="decode_speed_"))
    if args.ckpt is None:
        if not gpu:
            sys.exit("--ckpt RUN_DIR: give a trained Transformer run (training one here needs a GPU)")
        args.ckpt = str(train_reference(args.shared.resolve(), args.train_seconds, tmp / "reference"))
    sources, references, name = sentences(args.shared, args.limit or (1000 if gpu else 100))
    where = torch.cuda.get_device_name(device) if gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"{len(sources)} sentences of {name} on {where}; batches of {args.batch_tokens} source tokens", flush=True)

    from attnmt.deploy.export import export

    checkpoints = {"reference": Path(args.ckpt)}
    if "transformer_base" in args.models:
        checkpoints["transformer_base"] = random_base(Path(args.ckpt), tmp / "base" / "random.ckpt")
    torch_types = ["float32"] + (["bfloat16"] if has_fast_bf16(device) else [])
    ct2_types = ["float16", "int8_float16"] if gpu else ["float32", "int8"]
    rows, skipped = [], 0
    for model in args.models:
        ckpt = checkpoints[model]
        exports = {q: export(ckpt, tmp / model / f"ct2-{q}", q) for q in ("float32", "int8")}
        runs = [("attnmt", t, ckpt) for t in torch_types]
        runs += [("CTranslate2", t, exports["int8" if t.startswith("int8") else "float32"]) for t in ct2_types]
        for decoder, compute_type, path in runs:
            backend = load_backend(path, str(device), compute_type if decoder == "attnmt" or gpu else "auto")
            for beam in (1, 5):
                if time.perf_counter() - started > args.budget_s:
                    skipped += 1
                    continue
                if gpu:
                    torch.cuda.reset_peak_memory_stats(device)
                hyps, seconds = decode(backend, sources, beam, args.batch_tokens)
                tokens = sum(map(len, hyps))
                out = backend.tokenizer.decode_tgt(hyps)
                row = {
                    "model": model, "decoder": decoder, "compute_type": backend.compute_type,
                    "search": "greedy" if beam == 1 else f"beam {beam}", "sentences": len(sources),
                    "seconds": round(seconds, 3), "sent_s": round(len(sources) / seconds, 1),
                    "tok_s": round(tokens / seconds), "hyps": out,
                    "bleu": round(corpus_scores(out, references, ("bleu",))["bleu"]["score"], 2)
                    if model == "reference" else None,
                    "peak_gpu_mib": round(torch.cuda.max_memory_allocated(device) / 2**20)
                    if gpu and decoder == "attnmt" else None,
                }
                base = next((r for r in rows if r["model"] == model and r["search"] == row["search"]
                             and r["decoder"] == "attnmt" and r["compute_type"] == "float32"), row)
                row["x_fp32"] = round(row["tok_s"] / base["tok_s"], 2) if base["tok_s"] else None
                row["same_as_fp32"] = round(sum(a == b for a, b in zip(out, base["hyps"])) / len(out), 3)
                rows.append(row)
                print(f"{model:16s} {decoder:11s} {row['compute_type']:12s} {row['search']:6s} "
                      f"{row['sent_s']:8.1f} sent/s {row['tok_s']:8d} tok/s  x{row['x_fp32']:<5} "
                      f"BLEU {row['bleu'] if row['bleu'] is not None else '-':>5}  = fp32 {row['same_as_fp32']:.1%}",
                      flush=True)
            del backend
            if gpu:
                torch.cuda.empty_cache()

    print("\n| model | decoder | compute type | search | sentences/s | target tokens/s | x attnmt fp32 | BLEU "
          "| = fp32 | peak GPU MiB |\n|---|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['decoder']} | {r['compute_type']} | {r['search']} | {r['sent_s']} | {r['tok_s']} "
              f"| {r['x_fp32']} | {r['bleu'] if r['bleu'] is not None else '-'} | {r['same_as_fp32']:.1%} "
              f"| {r['peak_gpu_mib'] if r['peak_gpu_mib'] is not None else '-'} |")
    print(f"\n{where}; {len(sources)} sentences of {name}; BLEU: sacreBLEU on detokenized output (the reference "
          f"model of {args.ckpt}); transformer_base has random weights.")
    if skipped:
        print(f"{skipped} rows not run: the {args.budget_s:.0f} s budget was spent")
    if args.json:
        Path(args.json).write_text(json.dumps([{k: v for k, v in r.items() if k != "hyps"} for r in rows], indent=2)
                                   + "\n")


if __name__ == "__main__":
    main()
