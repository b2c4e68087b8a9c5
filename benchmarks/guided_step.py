"""What guided alignment costs per training step: plain and guided steps of one model, alternated.

    python benchmarks/guided_step.py                         # both models, a few minutes
    python benchmarks/guided_step.py --models rnn --pairs 20
    python benchmarks/guided_step.py --models transformer --full-context   # Garg's second pass

Same batch, model sizes and optimizer as ``step_ab.py`` (Multi30k's shape, reference sizes). A
plain step is forward, label-smoothed loss, backward, Adam step; a guided step adds what
``task.guided_alignment`` does: the decoder asked for its attention weights, the batch's target
attention built from the link table (one link per target piece, to a source piece near the
diagonal, as a stand-in for eflomal's), the KL term and its backward. The two kinds take turns on
the same weights (each pair's order alternating); the figures are median step times and the
median of the per-pair ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def link_table(src, tgt_out):
    """A link table covering the batch: target piece ``t`` to source piece ``t * S / T``."""
    from attnmt.data.tokenizer import EOS_ID
    from attnmt.train.guided import _key

    table = {}
    for s, t in zip(src.tolist(), tgt_out.tolist()):
        s, t = s[: s.index(EOS_ID)], t[: t.index(EOS_ID)]
        table[_key(s, t)] = np.array([[j, j * len(s) // len(t)] for j in range(len(t))], dtype=np.int32)
    return table


def with_eos(padded):
    """step_ab's batch has no </s>: put one after each sentence, as the data pipeline does."""
    import torch

    from attnmt.data.tokenizer import EOS_ID

    lengths = (padded != 0).sum(1)
    out = torch.cat([padded, torch.zeros_like(padded[:, :1])], dim=1)
    out[torch.arange(len(out)), lengths] = EOS_ID
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["rnn", "transformer"], choices=["rnn", "transformer"])
    parser.add_argument("--pairs", type=int, default=12, help="timed pairs of steps per model (after 2 warm-up pairs)")
    parser.add_argument("--weight", type=float, default=0.05)
    parser.add_argument("--full-context", action="store_true",
                        help="task.guided_alignment.full_context=true (Transformer only)")
    args = parser.parse_args()

    import torch

    from attnmt.train.guided import GuidedAlignment
    from attnmt.utils.allocator import keep_freed_memory

    import step_ab

    keep_freed_memory()
    src, _, tgt_in, tgt_out = step_ab.batch()
    src, tgt_out = with_eos(src), with_eos(tgt_out)
    tgt_in = torch.cat([torch.full_like(tgt_in[:, :1], 2), tgt_in], dim=1)  # <s> y
    batch = {"src": src, "src_mask": src != 0, "tgt_in": tgt_in, "tgt_out": tgt_out}
    guided = GuidedAlignment(weight=args.weight, full_context=args.full_context)
    if args.full_context and "rnn" in args.models:
        parser.error("--full-context is for the Transformer: add --models transformer")
    guided.links = link_table(src, tgt_out)
    V = step_ab.V
    print(f"batch {src.size(0)} sentences, {int((tgt_out != 0).sum())} target tokens; "
          f"{torch.get_num_threads()} threads{'; full target context' if args.full_context else ''}")
    for name in args.models:
        torch.manual_seed(0)
        model, factory, loss_fn = step_ab.build("attnmt", name)
        opt = factory(params=model.parameters())
        ntokens = int((tgt_out != 0).sum())

        # this model's objects bound as defaults (the loop rebinds the names)
        def step(kind: str, *, model=model, opt=opt, loss_fn=loss_fn, ntokens=ntokens) -> float:
            start = time.perf_counter()
            if kind == "guided":
                logits, align = guided.forward(model, batch)
            else:
                logits = model(batch["src"], batch["src_mask"], batch["tgt_in"])
            loss = loss_fn(logits.reshape(-1, V), tgt_out.reshape(-1), 0.1, 0) / ntokens
            if kind == "guided":
                loss = loss + guided.weight * align
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return time.perf_counter() - start

        times = {"plain": [], "guided": []}
        for i in range(args.pairs + 2):
            order = ("plain", "guided") if i % 2 == 0 else ("guided", "plain")
            pair = {kind: step(kind) for kind in order}
            if i >= 2:
                for kind, seconds in pair.items():
                    times[kind].append(seconds)
        ratios = [g / p for g, p in zip(times["guided"], times["plain"])]
        print(f"{name}: step {statistics.median(times['plain']) * 1000:.0f} ms plain -> "
              f"{statistics.median(times['guided']) * 1000:.0f} ms guided; cost: median of {len(ratios)} pairs "
              f"{(statistics.median(ratios) - 1) * 100:+.1f}%, "
              f"fastest steps {(min(times['guided']) / min(times['plain']) - 1) * 100:+.1f}%")


if __name__ == "__main__":
    main()
