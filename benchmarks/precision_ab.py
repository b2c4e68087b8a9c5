"""bf16-mixed against fp32: training steps of one model, the two precisions alternated in one process.

    python benchmarks/precision_ab.py                       # both models, about 3 minutes
    python benchmarks/precision_ab.py --models transformer --pairs 12

``speed.py --precision 32 bf16-mixed`` measures each precision in its own process, minutes apart;
on a shared machine whose speed drifts, that ratio is noisy. Here one model at the reference size
(``speed.py``'s ``MODELS``) takes turns: each pair runs one training step in fp32 and one under
``torch.autocast("cpu", bfloat16)`` (what Lightning's ``bf16-mixed`` does), on the same synthetic
batch of Multi30k's shape (as ``step_ab.py``), forward, label-smoothed loss, backward and a fused
Adam step, the order alternating from pair to pair. It prints the median step times and the median
of the per-pair speed-ups, and whether the CPU has AVX512-BF16 or AMX (without them bf16 is
emulated and slower).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

V, B, LEN = 8000, 256, 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["rnn", "transformer"], choices=["rnn", "transformer"])
    parser.add_argument("--pairs", type=int, default=8, help="alternated fp32/bf16 step pairs per model (default 8)")
    args = parser.parse_args()

    import torch

    from attnmt.models import build_model
    from attnmt.ops import smoothed_cross_entropy
    from attnmt.utils.precision import cpu_bf16

    from speed import MODELS, compose

    print(f"CPU bf16 instructions: {cpu_bf16() or 'none'}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    for name in args.models:
        cfg = compose(MODELS[name])
        torch.manual_seed(0)
        model = build_model(cfg.model, V, V, joint_vocab=True).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)
        src = torch.randint(4, V, (B, LEN))
        mask = torch.ones(B, LEN, dtype=torch.bool)
        tgt = torch.randint(4, V, (B, LEN + 1))

        # this model's objects bound as defaults (the loop rebinds the names)
        def step(bf16: bool, *, model=model, optimizer=optimizer, src=src, mask=mask, tgt=tgt) -> float:
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model(src, mask, tgt[:, :-1])  # (B, LEN, V)
                loss = smoothed_cross_entropy(logits.reshape(-1, V), tgt[:, 1:].reshape(-1), 0.1, 0)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return time.perf_counter() - start

        for bf16 in (False, True, False, True):  # warm-up: allocator, oneDNN kernels
            step(bf16)
        fp32, bf16, ratios = [], [], []
        for i in range(args.pairs):
            order = (False, True) if i % 2 == 0 else (True, False)
            t = {b: step(b) for b in order}
            fp32.append(t[False])
            bf16.append(t[True])
            ratios.append(t[False] / t[True])
        tokens = B * LEN
        print(f"{name}: fp32 {statistics.median(fp32) * 1000:.0f} ms/step "
              f"({tokens / statistics.median(fp32):.0f} tok/s), "
              f"bf16-mixed {statistics.median(bf16) * 1000:.0f} ms/step "
              f"({tokens / statistics.median(bf16):.0f} tok/s); "
              f"speed-up {statistics.median(ratios):.2f}x (median of {args.pairs} pairs, "
              f"range {min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
