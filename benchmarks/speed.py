"""Training and decoding speed at the Joey NMT reference sizes, side by side with its figures.

    python benchmarks/speed.py                      # both models, about 10 minutes on 2 cores
    python benchmarks/speed.py --models transformer --steps 30
    python benchmarks/speed.py --ckpt-transformer outputs/recipes/x   # decode a trained model
    python benchmarks/speed.py --peer benchmarks/results/peer.json    # training ratios against the
                                                    # peer measured now (benchmarks/peer_speed.py)
    python benchmarks/speed.py --precision 32 bf16-mixed --no-decode  # training in both precisions,
                                                    # alternated, with the fp32 and bf16 GEMM peaks

Data: Multi30k de-en from ../shared/data/multi30k with the peer's own sentencepiece model
(../shared/bench/joeynmt/spm/spm8k.model), so both frameworks see the same segmentation; when
those are absent, the embedded corpus (and the script says so: its figures are then not
comparable with the reference table).

Each measurement runs in its own process (so peak memory is its own):
- train: a real ``pytorch_lightning.Trainer`` over the real config (token budget 4096,
  label-smoothed loss, Adam, gradient clipping). A step is everything between two batches:
  loading, forward, backward, optimizer and scheduler step, logging. Target tokens/s counts
  non-padding target tokens including ``</s>`` (Joey's definition): the median of per-step rates
  after the warm-up steps, and the overall rate (tokens / seconds over the same steps).
- decode: test_2016_flickr (1,000 sentences) greedy and beam 5 (alpha 1.0, as the peer), in
  ~4,096-token batches, with the model just trained for the benchmark unless a trained checkpoint
  is given: an untrained model's outputs run to the length cap, so its decoding speed is not
  comparable with a trained model's. The output pieces/s and the hypotheses at the cap are
  printed to tell.
- decoding bound: the matrix-multiply FLOPs of the decode as run (forward hooks on the model's
  linear and recurrent layers) and the FLOPs any search needs (each source token encoded once, K
  hypotheses per step until the output ends, costs counted on the model), against the best GEMM
  rate of those layer shapes: the sentences/s no implementation of this model can beat here.
- Transformer FLOP/s: the matrix-multiply FLOPs of each step (from the batch shapes, padding
  included; backward = 2 x forward) over its time, against the best GEMM rate measured in the same
  process at the model's own shapes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MULTI30K = SHARED / "data" / "multi30k"
PEER_SPM = SHARED / "bench" / "joeynmt" / "spm" / "spm8k.model"

# The peer's figures on the same machine kind, and the reference sizes: the experiment configs.
REFERENCE = json.loads((Path(__file__).resolve().parent / "reference" / "joeynmt.json").read_text())
MODELS = {"rnn": ["experiment=multi30k_rnn_ref"], "transformer": ["experiment=multi30k_transformer_ref"]}


def data_overrides() -> tuple[list[str], str]:
    if MULTI30K.is_dir() and PEER_SPM.is_file():
        return (["data=multi30k", f"data.source_dir={MULTI30K}", f"data.spm_model={PEER_SPM}", "data.max_tokens=4096",
                 "data.max_len=100"], "multi30k de-en, peer's spm8k")
    print(f"NOTE: {MULTI30K} or {PEER_SPM} not found: using the embedded corpus; figures are not comparable "
          "with the reference table", file=sys.stderr)
    return ["data=synthetic", "data.max_tokens=4096", "data.spm_model=null"], "embedded synthetic corpus"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def compose(overrides: list[str]):
    from attnmt.utils.config import compose as compose_config

    return compose_config("train", overrides, ROOT / "conf")


# -- FLOPs -----------------------------------------------------------------------------------------
def transformer_step_flops(m, batch) -> float:
    """Matrix-multiply FLOPs of one training step on this batch (padded shapes), forward x 3."""
    B, S = batch["src"].shape
    T = batch["tgt_in"].shape[1]
    d, ff, V = m["d_model"], m["d_ff"], m["vocab"]
    enc = m["encoder_layers"] * (B * S * (4 * d * d + 2 * d * ff) + 2 * B * S * S * d)
    dec = m["decoder_layers"] * (
        B * T * (4 * d * d + 2 * d * ff) + 2 * B * T * T * d  # self-attention, feed-forward
        + B * T * 2 * d * d + B * S * 2 * d * d + 2 * B * T * S * d  # cross-attention
    )
    out = B * T * d * V
    return 3 * 2 * (enc + dec + out)  # 2 FLOPs per multiply-add; backward = 2 x forward


def gemm_rate(n: int, k: int, j: int, repeats: int = 20, dtype: str = "float32") -> float:
    """Best rate (GFLOP/s) of an ``(n x k) @ (k x j)`` product in ``dtype`` over ``repeats`` runs."""
    import torch

    a, b = torch.randn(n, k, dtype=getattr(torch, dtype)), torch.randn(k, j, dtype=getattr(torch, dtype))
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n * k * j / best / 1e9


def gemm_peak(m, tokens: int = 4096, dtype: str = "float32") -> dict:
    """Best GEMM rate in ``dtype`` at the Transformer's shapes (GFLOP/s)."""
    d, ff, V = m["d_model"], m["d_ff"], m["vocab"]
    shapes = {"d x d": (d, d), "d x ff": (d, ff), "ff x d": (ff, d), "d x vocab": (d, V)}
    return {name: gemm_rate(tokens, k, j, dtype=dtype) for name, (k, j) in shapes.items()}


class GemmCounter:
    """Counts the matrix-multiply FLOPs of a model's ``nn.Linear`` and ``nn.RNNBase`` layers and
    RNN encoders as they run (forward hooks): a lower bound on the work of decoding (attention
    scores, softmax and search bookkeeping are left out), so ``FLOPs / GEMM peak`` bounds the time
    from below. Recurrent layers count real (non-padding) positions only."""

    def __init__(self, model):
        from torch import nn

        from attnmt import ops
        from attnmt.models.rnn import RNNEncoder, RNNSeq2Seq

        self.flops, self.shapes = 0.0, set()
        if isinstance(model, RNNSeq2Seq) and ops.enabled():  # its decoder steps its nn.GRU/nn.LSTM's weights by hand
            make_step, counter = model.rnn_step, self

            class CountedStep:
                def __init__(self, step):
                    self.step = step

                def inputs(self, x):
                    return self.step.inputs(x)

                def __call__(self, x, extra, state):
                    counter._count(model.rnn, x.shape[0], model.rnn.input_size)
                    return self.step(x, extra, state)

            model.rnn_step = lambda: CountedStep(make_step())
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.register_forward_hook(self._linear)
            elif isinstance(module, RNNEncoder) and ops.enabled():  # runs its nn.GRU's weights without calling it
                module.register_forward_hook(self._encoder)
            elif isinstance(module, nn.RNNBase):
                module.register_forward_hook(self._rnn)

    def _linear(self, module, inputs, output) -> None:
        rows = inputs[0].numel() // module.in_features
        self.flops += 2.0 * rows * module.in_features * module.out_features
        self.shapes.add((module.in_features, module.out_features))

    def _rnn(self, module, inputs, output) -> None:
        x = getattr(inputs[0], "data", inputs[0])  # a PackedSequence holds its real steps as (rows, features)
        self._count(module, x.numel() // x.shape[-1], x.shape[-1])

    def _encoder(self, module, inputs, output) -> None:
        emb, lengths = inputs
        self._count(module.rnn, int(lengths.sum()), emb.shape[-1])

    def _count(self, rnn, rows: int, size_in: int) -> None:
        gates, h = {"GRU": 3, "LSTM": 4}.get(rnn.mode, 1), rnn.hidden_size
        directions = 2 if rnn.bidirectional else 1
        self.shapes.add((size_in, gates * h))
        for _ in range(rnn.num_layers):
            self.flops += directions * 2.0 * rows * (size_in + h) * gates * h
            size_in = directions * h


def best_gemm_rate(shapes: set[tuple[int, int]], rows=(1024, 4096), dtype: str = "float32") -> float:
    """The best GEMM rate (GFLOP/s) in ``dtype`` over ``rows x in @ in x out`` for the given layer shapes."""
    return max(gemm_rate(n, k, j, repeats=10, dtype=dtype) for n in rows for k, j in shapes)


# -- workers ---------------------------------------------------------------------------------------
def train_worker(args) -> dict:
    import pytorch_lightning as pl
    import torch

    from attnmt.data.tokenizer import PAD_ID
    from attnmt.train.run import build_run
    from attnmt.utils.allocator import keep_freed_memory

    keep_freed_memory()  # as train.py does
    overrides, _ = data_overrides()
    cfg = compose([
        *MODELS[args.model], *overrides, f"paths.output_dir={args.workdir}", "seed=1",
        f"trainer.max_steps={args.warmup + args.steps + 1}", f"trainer.precision={args.precision}",
        "trainer.max_time=null", "+trainer.limit_val_batches=0", "+trainer.enable_checkpointing=false",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "~callbacks", "~logger",
    ])
    steps: list[dict] = []

    class Timer(pl.Callback):
        last = None
        counter = shape = None  # set once the model is built

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            now = time.perf_counter()
            forward_flops, self.counter.flops = self.counter.flops, 0.0
            if self.last is not None:
                steps.append({
                    "gemm_flops": 3 * forward_flops,  # backward = 2 x forward
                    "seconds": now - self.last,
                    "tgt_tokens": int((batch["tgt_out"] != PAD_ID).sum()),
                    "tgt_slots": batch["tgt_out"].numel(),
                    "src_tokens": int(batch["src_mask"].sum()),
                    "src_slots": batch["src"].numel(),
                    "flops": transformer_step_flops(self.shape, batch) if args.model == "transformer" else None,
                })
            self.last = now

    pl.seed_everything(1, verbose=False)
    timer = Timer()
    dm, task, trainer = build_run(cfg, callbacks=[timer])
    model = task.model
    shape = {"d_model": cfg.model.get("d_model"), "d_ff": cfg.model.get("d_ff"), "vocab": dm.tokenizer.tgt_vocab_size,
             "encoder_layers": cfg.model.get("encoder_layers"), "decoder_layers": cfg.model.get("decoder_layers")}
    counter = GemmCounter(model)  # the forward's matrix multiplies, all models
    timer.counter, timer.shape = counter, shape
    trainer.fit(task, datamodule=dm)
    timed = steps[args.warmup:]
    rates = [s["tgt_tokens"] / s["seconds"] for s in timed]
    result = {
        "model": args.model,
        "precision": args.precision,
        "optimizer": f"{type(trainer.optimizers[0]).__name__} (fused={trainer.optimizers[0].defaults.get('fused')})",
        "params": model.num_parameters(),
        "threads": torch.get_num_threads(),
        "timed_steps": len(timed),
        "train_tok_s_median": statistics.median(rates),
        "train_tok_s_overall": sum(s["tgt_tokens"] for s in timed) / sum(s["seconds"] for s in timed),
        "tgt_tokens_per_step": statistics.mean(s["tgt_tokens"] for s in timed),
        "seconds_per_step": statistics.median(s["seconds"] for s in timed),
        "padding_tgt": 1 - sum(s["tgt_tokens"] for s in timed) / sum(s["tgt_slots"] for s in timed),
        "padding_src": 1 - sum(s["src_tokens"] for s in timed) / sum(s["src_slots"] for s in timed),
        "peak_rss_train_mib": peak_rss_mib(),
    }
    # The GEMM peaks of both precisions, measured in this process: bf16-mixed runs the layers' matrix
    # multiplies in bf16, so its bound and fraction are against the bf16 peak.
    gemm_dtype = "bfloat16" if args.precision.startswith("bf16") else "float32"
    with torch.inference_mode():
        layer_peaks = {dt: best_gemm_rate(counter.shapes, dtype=dt) for dt in ("float32", "bfloat16")}
    layer_peak = layer_peaks[gemm_dtype]
    result["layer_gemm_peak_gflops_by_dtype"] = layer_peaks
    flops_per_token = sum(s["gemm_flops"] for s in timed) / sum(s["tgt_tokens"] for s in timed)
    result.update({
        # Linear and recurrent layers only (attention scores and softmax left out): the step's
        # matrix-multiply work at the best GEMM rate of those shapes bounds tokens/s from above.
        "layer_gemm_gflop_per_step": statistics.mean(s["gemm_flops"] for s in timed) / 1e9,
        "layer_gemm_gflops_achieved": sum(s["gemm_flops"] for s in timed) / sum(s["seconds"] for s in timed) / 1e9,
        "layer_gemm_peak_gflops": layer_peak,
        "train_tok_s_bound": layer_peak * 1e9 / flops_per_token,
    })
    if args.model == "transformer":
        achieved = [s["flops"] / s["seconds"] / 1e9 for s in timed]
        peaks = {dt: gemm_peak(shape, dtype=dt) for dt in ("float32", "bfloat16")}
        peak = peaks[gemm_dtype]
        result.update({"gflops_achieved_median": statistics.median(achieved), "gemm_gflops": peak,
                       "gemm_peak_gflops": max(peak.values()),
                       "gemm_peak_gflops_by_dtype": {dt: max(p.values()) for dt, p in peaks.items()}})
        result["fraction_of_gemm_peak"] = result["gflops_achieved_median"] / result["gemm_peak_gflops"]
    trainer.save_checkpoint(Path(args.workdir) / f"{args.model}.{args.precision}.ckpt", weights_only=False)
    return result


def decode_worker(args) -> dict:
    import torch

    from attnmt.data.io import read_parallel
    from attnmt.decode.backends import TorchBackend
    from attnmt.decode.settings import DecodeSettings
    from attnmt.eval.evaluate import decode_lines

    backend = TorchBackend(args.ckpt)
    model, tokenizer, path = backend.model, backend.tokenizer, backend.path
    src_file, ref_file = (MULTI30K / "test_2016_flickr.de.gz", MULTI30K / "test_2016_flickr.en.gz")
    if not src_file.is_file():
        data = ROOT / "data" / "synthetic"
        src_file, ref_file = data / "test.en", data / "test.syn"
    sources, references = read_parallel(src_file, ref_file)
    settings = DecodeSettings(beam_size=args.beam, alpha=1.0 if args.beam > 1 else 0.0, batch_tokens=4096)
    counter = GemmCounter(model)
    start = time.perf_counter()
    with torch.inference_mode():
        _, hyp_ids, _, scores = decode_lines(backend, sources, references, settings, progress=False)
    seconds = time.perf_counter() - start
    counted = counter.flops
    pieces = [len(h) for h in hyp_ids]
    src_lens = [len(s) for s in tokenizer.encode_src(sources)]
    with torch.inference_mode():
        peak = best_gemm_rate(counter.shapes)
        necessary = necessary_gemm_flops(model, counter, src_lens, pieces, args.beam)
    cap = [int(1.5 * n + 10) for n in src_lens]
    return {
        "model": args.model, "beam": args.beam, "checkpoint": str(path), "sentences": len(sources),
        "seconds": seconds, "sent_s": len(sources) / seconds, "output_pieces_s": sum(pieces) / seconds,
        "at_cap": sum(p >= c for p, c in zip(pieces, cap)), "peak_rss_mib": peak_rss_mib(),
        "bleu": scores["bleu"]["score"], "bleu_signature": scores["bleu"]["signature"],
        # Matrix multiplies alone, at the best GEMM rate of their shapes and nothing else running:
        "gemm_gflop": counted / 1e9, "gemm_gflops_achieved": counted / seconds / 1e9, "gemm_peak_gflops": peak,
        # ... and only the work any search must do: K hypotheses per step until the output ends.
        "necessary_gemm_gflop": necessary / 1e9, "sent_s_bound": len(sources) / (necessary / 1e9 / peak),
    }


def necessary_gemm_flops(model, counter: GemmCounter, src_lens: list[int], out_lens: list[int], beam: int) -> float:
    """Matrix-multiply FLOPs that decoding these outputs needs at least: each source token encoded
    once, ``beam`` hypotheses per target step up to the end of the output (``</s>`` included).
    Per-token and per-step costs are counted on the model itself (one sentence, one step)."""
    import torch

    from attnmt.data.tokenizer import BOS_ID

    def prepare(n: int) -> tuple[float, dict, dict]:  # encode + initial state of one n-token source
        counter.flops = 0.0
        enc = model.encode(torch.full((1, n), BOS_ID + 1), torch.ones(1, n, dtype=torch.bool))
        state = model.init_state(enc)
        return counter.flops, enc, state

    (f10, _, _), (f20, enc, state) = prepare(10), prepare(20)
    per_token = (f20 - f10) / 10  # both grow linearly with the source (Transformer: cross keys/values)
    per_sentence = f10 - 10 * per_token
    counter.flops = 0.0
    model.decode_step(enc, state, torch.tensor([BOS_ID]))
    per_step = counter.flops
    return sum(s * per_token + per_sentence + beam * (o + 1) * per_step for s, o in zip(src_lens, out_lens))


# -- driver ----------------------------------------------------------------------------------------
def run_worker(*argv: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"benchmark worker {' '.join(argv)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["rnn", "transformer"], choices=list(MODELS))
    parser.add_argument("--steps", type=int, default=40, help="timed training steps per model (default 40)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    parser.add_argument("--ckpt-rnn", help="trained RNN checkpoint/run to decode (default: the benchmark's own)")
    parser.add_argument("--ckpt-transformer", help="trained Transformer checkpoint/run to decode")
    parser.add_argument("--out", default="benchmarks/results/speed.json", help="JSON written here")
    parser.add_argument("--precision", nargs="+", default=["32"], choices=["32", "bf16-mixed", "16-mixed"],
                        help="train in each of these precisions, alternated model by model (default 32); "
                        "decoding uses the first one's checkpoint")
    parser.add_argument("--rounds", type=int, default=1, help="train each precision this many times, alternating "
                        "them (32, bf16, 32, bf16, ...); the round with the median tokens/s is reported (default 1)")
    parser.add_argument("--no-decode", action="store_true", help="measure training only")
    parser.add_argument("--peer", type=Path, help="Joey NMT's training figures measured on this machine "
                        "(benchmarks/peer_speed.py): training ratios against them instead of the reference table")
    parser.add_argument("--worker", choices=["train", "decode"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", help=argparse.SUPPRESS)
    parser.add_argument("--beam", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.precision = args.precision[0]
        print(json.dumps((train_worker if args.worker == "train" else decode_worker)(args)))
        return

    import tempfile

    peer = None
    if args.peer:
        try:
            peer = json.loads(args.peer.read_text())["models"]
        except (OSError, ValueError, KeyError) as e:
            sys.exit(f"error: --peer {args.peer}: not a benchmarks/peer_speed.py result ({e})")
    _, data_name = data_overrides()
    results = {"data": data_name, "machine": machine(), "models": {}, "peer_measured_now": peer,
               "precisions": args.precision}
    with tempfile.TemporaryDirectory() as work:
        for name in args.models:
            rounds: dict[str, list[dict]] = {p: [] for p in args.precision}
            for r in range(args.rounds):  # alternated: a slower minute on a shared machine hits both
                for precision in args.precision:
                    print(f"[{name}] round {r + 1}/{args.rounds}: training {args.warmup} + {args.steps} steps, "
                          f"precision {precision} ...", file=sys.stderr, flush=True)
                    rounds[precision].append(run_worker(
                        "--worker", "train", "--model", name, "--workdir", work, "--steps", str(args.steps),
                        "--warmup", str(args.warmup), "--precision", precision))
            by_precision = {}
            for precision, runs in rounds.items():
                runs.sort(key=lambda t: t["train_tok_s_median"])
                by_precision[precision] = {**runs[len(runs) // 2],
                                           "rounds_tok_s": [round(t["train_tok_s_median"]) for t in runs]}
            results["models"][name] = {"train": by_precision[args.precision[0]], "train_by_precision": by_precision}
            if args.no_decode:
                continue
            ckpt = getattr(args, f"ckpt_{name}") or str(Path(work) / f"{name}.{args.precision[0]}.ckpt")
            decode = {}
            for beam in (1, 5):
                print(f"[{name}] decoding, beam {beam} ...", file=sys.stderr, flush=True)
                decode[beam] = run_worker("--worker", "decode", "--model", name, "--ckpt", ckpt, "--beam", str(beam))
            results["models"][name].update({"greedy": decode[1], "beam5": decode[5],
                                            "decoded_trained_checkpoint": bool(getattr(args, f"ckpt_{name}"))})
    report(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(out)
    print(f"\nwritten: {out}")


def machine() -> dict:
    import torch

    from attnmt.utils.precision import cpu_flags
    from attnmt.utils.provenance import cpu_name

    cpu, flags = cpu_name(), cpu_flags()
    isa = [f for f in ("avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "avx2") if f in flags]
    return {"cpus": os.cpu_count(), "cpu": cpu, "isa": isa, "torch": torch.__version__,
            "torch_threads": torch.get_num_threads()}


def report(results: dict) -> None:
    m, peer = results["machine"], results.get("peer_measured_now")
    print(f"\ndata: {results['data']}; {m['cpus']} CPUs: {m.get('cpu')} ({', '.join(m.get('isa', [])) or '-'}); "
          f"torch {m.get('torch')}, {m.get('torch_threads')} threads")
    against = "x peer now" if peer else "x ref"
    print(f"| model | params | train tok/s median (overall) | {against} | padding tgt/src | peak RSS train MiB "
          f"({'peer now' if peer else 'ref'}) | greedy sent/s (x ref) | beam5 sent/s (x ref) | decode peak RSS MiB "
          "| at cap g/b5 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    if len(results.get("precisions", [])) > 1:
        report_precisions(results)
    for name, r in results["models"].items():
        if "greedy" not in r:  # --no-decode
            continue
        t, g, b, ref = r["train"], r["greedy"], r["beam5"], dict(REFERENCE[name])
        if peer and name in peer:
            ref.update(train_tok_s=peer[name]["train_tok_s"], peak_rss_mib=round(peer[name]["peak_rss_mib"]))
        print(f"| {name} | {t['params']:,} | {t['train_tok_s_median']:.0f} ({t['train_tok_s_overall']:.0f}) "
              f"| {t['train_tok_s_median'] / ref['train_tok_s']:.2f} | {t['padding_tgt']:.1%} / {t['padding_src']:.1%} "
              f"| {t['peak_rss_train_mib']:.0f} ({ref['peak_rss_mib']}) "
              f"| {g['sent_s']:.1f} ({g['sent_s'] / ref['greedy_sent_s']:.2f}) "
              f"| {b['sent_s']:.1f} ({b['sent_s'] / ref['beam5_sent_s']:.2f}) "
              f"| {max(g['peak_rss_mib'], b['peak_rss_mib']):.0f} | {g['at_cap']}/{b['at_cap']} |")
        if "fraction_of_gemm_peak" in t:
            print(f"  {name}: {t['gflops_achieved_median']:.1f} GFLOP/s achieved in training, GEMM peak "
                  f"{t['gemm_peak_gflops']:.1f} GFLOP/s at the model's shapes -> {t['fraction_of_gemm_peak']:.1%}")
        if "train_tok_s_bound" in t:
            print(f"  {name} training: {t['layer_gemm_gflop_per_step']:.1f} GFLOP of layer matrix multiplies per step "
                  f"run at {t['layer_gemm_gflops_achieved']:.0f} GFLOP/s; at the GEMM peak of their shapes "
                  f"({t['layer_gemm_peak_gflops']:.0f} GFLOP/s) and nothing else, at most "
                  f"{t['train_tok_s_bound']:.0f} tok/s = {t['train_tok_s_bound'] / ref['train_tok_s']:.2f}x "
                  f"{'peer now' if peer and name in peer else 'ref'}")
        for label, d, ref_key in (("greedy", g, "greedy_sent_s"), ("beam 5", b, "beam5_sent_s")):
            if "sent_s_bound" in d:
                print(f"  {name} {label}: {d['gemm_gflop']:.0f} GFLOP of matrix multiplies run at "
                      f"{d['gemm_gflops_achieved']:.0f} GFLOP/s; {d['necessary_gemm_gflop']:.0f} GFLOP necessary "
                      f"(K hypotheses per step to the output's end): at the GEMM peak of their shapes "
                      f"({d['gemm_peak_gflops']:.0f} GFLOP/s) and nothing else, at most {d['sent_s_bound']:.0f} sent/s "
                      f"= {d['sent_s_bound'] / ref[ref_key]:.1f}x ref")
        if peer and name in peer:
            print(f"  {name}: training against Joey NMT measured on this machine now ({peer[name]['train_tok_s']:.0f} "
                  f"tok/s, {len(peer[name]['windows'])} windows); against the reference table "
                  f"({REFERENCE[name]['train_tok_s']}): "
                  f"{t['train_tok_s_median'] / REFERENCE[name]['train_tok_s']:.2f}x")
        if not r["decoded_trained_checkpoint"]:
            print(f"  {name}: decoded the benchmark's briefly trained model (not comparable with a trained one; "
                  "give --ckpt-" + name + ")")


def report_precisions(results: dict) -> None:
    """Training speed per precision, against the first precision's, and against the GEMM peak of
    the precision the layers run in (both peaks measured in each worker process)."""
    peer = results.get("peer_measured_now") or {}
    first = results["precisions"][0]
    print(f"\n| model | precision | optimizer | train tok/s median (overall) | x {first} | x peer now "
          "| layer GEMM GFLOP/s achieved | layer GEMM peak fp32 / bf16 | peak RSS train MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in results["models"].items():
        base = r["train_by_precision"][first]["train_tok_s_median"]
        for precision, t in r["train_by_precision"].items():
            peaks = t["layer_gemm_peak_gflops_by_dtype"]
            vs_peer = f"{t['train_tok_s_median'] / peer[name]['train_tok_s']:.2f}" if name in peer else "-"
            print(f"| {name} | {precision} | {t['optimizer']} | {t['train_tok_s_median']:.0f} "
                  f"({t['train_tok_s_overall']:.0f}; rounds {t.get('rounds_tok_s')}) "
                  f"| {t['train_tok_s_median'] / base:.2f} | {vs_peer} "
                  f"| {t['layer_gemm_gflops_achieved']:.0f} | {peaks['float32']:.0f} / {peaks['bfloat16']:.0f} "
                  f"| {t['peak_rss_train_mib']:.0f} |")
            if "gemm_peak_gflops_by_dtype" in t:
                print(f"  {name} {precision}: {t['gflops_achieved_median']:.1f} GFLOP/s (all matrix multiplies) = "
                      f"{t['fraction_of_gemm_peak']:.1%} of the {'bf16' if precision.startswith('bf16') else 'fp32'} "
                      f"peak at the model's shapes")


if __name__ == "__main__":
    main()
