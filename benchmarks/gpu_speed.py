"""How close to the chip does training run? Target tokens/s, steps/s, model FLOPs utilisation, busy
fraction and peak memory of real training steps, per model, precision and compile setting.

    python benchmarks/gpu_speed.py                         # on the GPU: 3 models x 2 precisions x compile off/on
    python benchmarks/gpu_speed.py --device cpu            # the same table on the CPU, few steps
    python benchmarks/gpu_speed.py --models transformer --precisions bf16-mixed --compile on
    python benchmarks/gpu_speed.py --json results.json     # also write the figures

Each row trains with a real ``pytorch_lightning.Trainer`` and attnmt's ``TranslationTask`` (label-
smoothed loss, non-finite guard, gradient clipping, fused Adam, inverse-sqrt schedule) on random
batches of a Multi30k-like length spread (5 to 40 pieces a side, 8,000-piece joint vocabulary),
grouped into token-budget batches of ``--max-tokens`` padded tokens, lengths padded to a multiple
of 8, loaded by a DataLoader (pinned memory on a GPU). Validation, checkpoints, loggers and the
progress bar are off.

- tokens/s: non-padding target tokens (``</s>`` included) over the timed steps, which follow the
  warm-up steps (compilation happens there); steps/s likewise.
- MFU: the FLOPs of one forward and backward pass counted by ``torch.utils.flop_counter`` on a
  batch of the run (padding included, as the chip computes it) per target token, times tokens/s,
  over the dense matrix-multiply peak measured in this process: bf16 for bf16-mixed, fp32 (TF32
  where the GPU allows it, which is what fp32 training uses here) for 32.
- busy: on a GPU, the time its kernels ran (CUDA events of the profiler over a few steps) over
  the wall time of those steps; the rest is the chip waiting for the host.
- peak memory: ``torch.cuda.max_memory_allocated`` for that row (GPU only).

Models: ``transformer`` the reference Transformer (``experiment=multi30k_transformer_ref``: 3+3
layers, d_model 256), ``transformer_base`` (``model=transformer_base``: 6+6, d_model 512), ``rnn``
the reference RNN (``experiment=multi30k_rnn_ref``: GRU 256, Bahdanau attention).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
V = 8000
MODELS = {
    "transformer": ["experiment=multi30k_transformer_ref"],
    "transformer_base": ["data=multi30k", "model=transformer_base"],
    "rnn": ["experiment=multi30k_rnn_ref"],
}


def matmul_peak(device: str, dtype: str) -> float:
    """Best dense matrix-multiply rate (TFLOP/s) of square products in ``dtype`` on ``device``."""
    import torch

    n = 8192 if device == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
    b = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
    best = float("inf")
    for i in range(12 if device == "cuda" else 5):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(10 if device == "cuda" else 1):
            a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            best = min(best, (time.perf_counter() - t) / (10 if device == "cuda" else 1))
    return 2 * n**3 / best / 1e12


def random_batches(max_tokens: int, count: int, seed: int = 0) -> tuple:
    """A ParallelDataset of random pairs and ``count`` token-budget batches of it."""
    import random

    from attnmt.data.batching import token_budget_batches
    from attnmt.data.dataset import ParallelDataset

    rng = random.Random(seed)
    n = max(count * max_tokens // 20, 2000)
    src = [[rng.randrange(4, V) for _ in range(rng.randint(5, 40))] for _ in range(n)]
    tgt = [[rng.randrange(4, V) for _ in range(max(1, len(s) + rng.randint(-4, 4)))] for s in src]
    dataset = ParallelDataset(src, tgt)
    keys = dataset.sort_keys()
    batches = token_budget_batches(dataset.lengths(), max_tokens, sorted(range(n), key=keys.__getitem__))
    rng.shuffle(batches)
    return dataset, (batches * (1 + count // max(1, len(batches))))[:count]


class Clock:
    """Lightning callback: times the steps after ``warmup`` and profiles a few for the busy fraction."""

    def __init__(self, warmup: int, steps: int, profile_steps: int, cuda: bool):
        import pytorch_lightning as pl

        self.callback = type("ClockCallback", (pl.Callback,), {
            "on_train_batch_start": lambda _, trainer, module, batch, i: self.start(i, batch),
            "on_train_end": lambda _, trainer, module: self.stop(),
        })()
        self.warmup, self.steps, self.profile_steps, self.cuda = warmup, steps, profile_steps, cuda
        self.tokens = 0
        self.t0 = self.t1 = None
        self.busy = None
        self.profiler = None

    def sync(self):
        import torch

        if self.cuda:
            torch.cuda.synchronize()

    def start(self, i: int, batch) -> None:
        if i == self.warmup:
            self.sync()
            self.t0 = time.perf_counter()
        if i >= self.warmup and i < self.warmup + self.steps:
            self.tokens += batch["num_tgt_tokens"]
        if self.cuda and i == self.warmup + self.steps:  # timed steps done: profile a few more
            import torch

            self.sync()
            self.t1 = time.perf_counter()
            self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA])
            self.profiler.__enter__()
            self.p0 = time.perf_counter()

    def stop(self) -> None:
        self.sync()
        if self.t1 is None:
            self.t1 = time.perf_counter()
        if self.profiler is not None:
            wall = time.perf_counter() - self.p0
            self.profiler.__exit__(None, None, None)
            kernels = [e for e in self.profiler.events() if e.device_type.name == "CUDA"]
            busy = union_seconds([(e.time_range.start, e.time_range.end) for e in kernels]) / 1e6
            self.busy = min(1.0, busy / wall)


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    """Total length of the union of intervals (in their unit)."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def flops_per_token(task, batch, device: str, precision: str) -> float:
    """Forward + backward FLOPs of ``task`` on ``batch`` per non-padding target token."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    counter = FlopCounterMode(display=False)
    dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float32
    with counter, torch.autocast(device, dtype=dtype, enabled=precision == "bf16-mixed"):
        loss, n = task.loss(batch, 0.1)
        loss.backward()
    task.model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch["num_tgt_tokens"]


def run_one(model_name: str, precision: str, compiled: bool, args, peaks: dict) -> dict:
    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader

    from attnmt.models import build_model
    from attnmt.train.task import TranslationTask
    from attnmt.utils.config import build, compose

    cuda = args.device == "cuda"
    cfg = compose("train", MODELS[model_name], ROOT / "conf")
    torch.manual_seed(0)
    model = build_model(cfg.model, V, V, joint_vocab=True)
    task = TranslationTask(
        model, optimizer=build(cfg.optimizer, "optimizer"), scheduler=build(cfg.scheduler, "scheduler"),
        label_smoothing=0.1, compile=compiled,
    )
    dataset, batches = random_batches(args.max_tokens, args.warmup + args.steps + args.profile_steps + 1)
    loader = DataLoader(dataset, batch_sampler=batches, collate_fn=lambda idx: dataset.collate(idx, 8),
                        pin_memory=cuda, num_workers=2 if cuda else 0, persistent_workers=False)
    fpt = flops_per_token(task.to(args.device), dataset.collate(batches[0], 8), args.device, precision)
    task.cpu()
    clock = Clock(args.warmup, args.steps, args.profile_steps if cuda else 0, cuda)
    trainer = pl.Trainer(
        accelerator="gpu" if cuda else "cpu", devices=1, precision=precision, max_steps=len(batches) - 1,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        gradient_clip_val=1.0, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[clock.callback],
    )
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(task, train_dataloaders=loader)
    seconds = clock.t1 - clock.t0
    rate = clock.tokens / seconds
    peak = peaks["bf16" if precision == "bf16-mixed" else "fp32"]
    return {
        "model": model_name, "precision": precision, "compile": compiled, "params_M": model.num_parameters() / 1e6,
        "tokens_per_s": rate, "steps_per_s": args.steps / seconds, "mflop_per_token": fpt / 1e6,
        "mfu": fpt * rate / (peak * 1e12), "busy": clock.busy,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda where visible")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--precisions", nargs="+", choices=["32", "bf16-mixed"], default=["32", "bf16-mixed"])
    parser.add_argument("--compile", nargs="+", choices=["off", "on"], default=["off", "on"])
    parser.add_argument("--max-tokens", type=int, default=None, help="padded tokens a batch (GPU 12288, CPU 2048)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (GPU 15, CPU 3)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (GPU 40, CPU 5)")
    parser.add_argument("--profile-steps", type=int, default=5, help="profiled steps for the busy fraction (GPU)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is visible")
    cuda = args.device == "cuda"
    args.max_tokens = args.max_tokens or (12288 if cuda else 2048)
    args.warmup = args.warmup if args.warmup is not None else (15 if cuda else 3)
    args.steps = args.steps or (40 if cuda else 5)
    torch.backends.cuda.matmul.allow_tf32 = True  # what Lightning's fp32 on Ampere+ uses with "high"
    torch.set_float32_matmul_precision("high")
    import logging
    import warnings

    for quiet in ("pytorch_lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric"):
        logging.getLogger(quiet).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    name = torch.cuda.get_device_name() if cuda else (platform.processor() or platform.machine())
    peaks = {"bf16": matmul_peak(args.device, "bfloat16"), "fp32": matmul_peak(args.device, "float32")}
    print(f"device: {name}; torch {torch.__version__}"
          + (f", CUDA {torch.version.cuda}, driver {driver()}" if cuda else f", {torch.get_num_threads()} threads"))
    print(f"dense matmul peak measured here: bf16 {peaks['bf16']:.1f} TFLOP/s, fp32 {peaks['fp32']:.1f} TFLOP/s"
          + (" (TF32)" if cuda else ""))
    print(f"batches of {args.max_tokens} padded tokens; {args.warmup} warm-up + {args.steps} timed steps\n")
    header = (f"{'model':<17}{'precision':<11}{'compile':<8}{'tgt tok/s':>11}{'steps/s':>9}{'MFLOP/tok':>10}"
              f"{'MFU':>7}{'busy':>6}{'peak GiB':>9}")
    print(header)
    rows = []
    for model_name in args.models:
        for precision in args.precisions:
            for compiled in args.compile:
                t = time.perf_counter()
                try:
                    row = run_one(model_name, precision, compiled == "on", args, peaks)
                except Exception as e:  # one failing row does not hide the others
                    print(f"{model_name:<17}{precision:<11}{compiled:<8} failed: {type(e).__name__}: {e}"[:300])
                    continue
                row["seconds"] = time.perf_counter() - t
                rows.append(row)
                busy = "-" if row["busy"] is None else f"{row['busy']:.0%}"
                mem = "-" if row["peak_mem_gib"] is None else f"{row['peak_mem_gib']:.1f}"
                print(f"{model_name:<17}{precision:<11}{compiled:<8}{row['tokens_per_s']:>11,.0f}"
                      f"{row['steps_per_s']:>9.2f}{row['mflop_per_token']:>10.1f}{row['mfu']:>7.1%}{busy:>6}{mem:>9}"
                      f"   ({row['seconds']:.0f} s)", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"device": name, "torch": torch.__version__, "peaks_tflops": peaks,
                                         "max_tokens": args.max_tokens, "rows": rows}, indent=1))


def driver() -> str:
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.strip()
        return out.splitlines()[0] if out else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


if __name__ == "__main__":
    main()
