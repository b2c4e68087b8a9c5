"""Is a change faster? Training steps of two versions of attnmt, alternated in one process.

    python benchmarks/step_ab.py --against bad1747                 # both models, about 3 minutes
    python benchmarks/step_ab.py --against HEAD~1 --models rnn --pairs 20

On a shared machine whose speed drifts by a third over a day, two runs of ``speed.py`` minutes
apart cannot show a 5% change. Here the version at ``--against`` (``git archive`` of its
``src/attnmt``, unpacked into a temporary directory as the package ``attnmt_base``) and the
working tree build the same model (the reference sizes of ``speed.py``, with the same weights)
and take turns: each pair runs one training step of each (forward, label-smoothed loss,
backward, Adam step; no Lightning, no data loading) on the same batch, the order alternating from
pair to pair. The figures are the median step times, the median of the per-pair speed-ups and
the ratio of the fastest steps. They compare the two versions with each other; they are not
throughputs to set against ``speed.py``'s.

The batch is synthetic, of Multi30k's shape under a 4,096-token budget: 256 sentences of 8 to 16
pieces (source and target), padded to 16, 8,000-piece vocabulary. Each version gets the
optimizer its own training would build (the fused Adam where it has ``attnmt.train.optim.prefer_fused``).
"""

from __future__ import annotations

import argparse
import io
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

V, B, LEN = 8000, 256, 16


def unpack_base(rev: str, into: Path) -> None:
    """``src/attnmt`` at ``rev`` as the package ``attnmt_base`` under ``into``."""
    try:
        tar = subprocess.run(["git", "archive", rev, "src/attnmt"], cwd=ROOT, capture_output=True, check=True).stdout
    except subprocess.CalledProcessError as err:
        sys.exit(f"--against {rev}: git archive failed: {err.stderr.decode().strip()}")
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(into, filter="data")
    package = into / "attnmt_base"
    (into / "src" / "attnmt").rename(package)
    for path in package.rglob("*.py"):
        path.write_text(re.sub(r"\battnmt(?=[.\s])", "attnmt_base", path.read_text()))


def retarget(node, package: str):
    """The config with every ``_target_`` in ``attnmt`` pointed at ``package``."""
    if isinstance(node, dict):
        return {k: retarget(v, package) for k, v in node.items()}
    if isinstance(node, list):
        return [retarget(v, package) for v in node]
    if isinstance(node, str) and node.startswith("attnmt."):
        return package + node[len("attnmt"):]
    return node


def batch(seed: int = 1):
    import torch

    g = torch.Generator().manual_seed(seed)

    def padded(lengths):
        tokens = torch.randint(4, V, (B, LEN), generator=g)
        return tokens.masked_fill(torch.arange(LEN)[None] >= lengths[:, None], 0)

    src = padded(torch.randint(8, LEN + 1, (B,), generator=g))
    tgt_lengths = torch.randint(8, LEN + 1, (B,), generator=g)
    return src, src != 0, padded(tgt_lengths), padded(tgt_lengths)  # tgt_in, tgt_out


def build(package: str, model_name: str):
    """Model, optimizer and loss of ``package`` (``attnmt`` or ``attnmt_base``)."""
    import importlib

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    import speed

    cfg = speed.compose(speed.MODELS[model_name])
    model_cfg = retarget(OmegaConf.to_container(cfg.model, resolve=True), package)
    build_model = getattr(importlib.import_module(f"{package}.models"), "build_model", None)
    if build_model is not None:
        model = build_model(model_cfg, V, V, joint_vocab=True)
    else:  # versions before attnmt.models.build_model passed joint_vocab to every model
        model = instantiate(model_cfg, src_vocab_size=V, tgt_vocab_size=V, joint_vocab=True)
    optim_cfg = OmegaConf.to_container(cfg.optimizer, resolve=True)
    try:
        optim = importlib.import_module(f"{package}.train.optim")
    except ModuleNotFoundError:  # versions before the packages by stage
        optim = importlib.import_module(f"{package}.optim")
    prefer_fused = getattr(optim, "prefer_fused", None)
    if prefer_fused is None:
        optim_cfg.pop("fused", None)  # that version's config had no such key
    factory = instantiate(optim_cfg)
    if prefer_fused is not None:
        factory = prefer_fused(factory, "32-true", "cpu")
    try:
        loss = importlib.import_module(f"{package}.ops").smoothed_cross_entropy
    except ModuleNotFoundError:  # versions before attnmt.ops
        loss = importlib.import_module(f"{package}.loss").smoothed_cross_entropy
    return model, factory, loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--against", required=True, help="git revision to compare the working tree with")
    parser.add_argument("--models", nargs="+", default=["rnn", "transformer"], choices=["rnn", "transformer"])
    parser.add_argument("--pairs", type=int, default=12, help="timed pairs of steps per model (after 2 warm-up pairs)")
    args = parser.parse_args()

    import torch

    from attnmt.utils.allocator import keep_freed_memory

    keep_freed_memory()  # as train.py does
    with tempfile.TemporaryDirectory() as tmp:
        unpack_base(args.against, Path(tmp))
        sys.path.insert(0, tmp)
        src, src_mask, tgt_in, tgt_out = batch()
        print(f"working tree against {args.against}; batch {B} x {LEN}, {int((tgt_out != 0).sum())} target tokens; "
              f"{torch.get_num_threads()} threads")
        for name in args.models:
            torch.manual_seed(0)
            runs = {}
            for package in ("attnmt_base", "attnmt"):
                model, factory, loss_fn = build(package, name)
                runs[package] = (model, factory(params=model.parameters()), loss_fn)
            runs["attnmt"][0].load_state_dict(runs["attnmt_base"][0].state_dict())

            # this model's runs bound as a default (the loop rebinds the name)
            def step(package: str, *, runs=runs) -> float:
                model, opt, loss_fn = runs[package]
                start = time.perf_counter()
                logits = model(src, src_mask, tgt_in)
                loss = loss_fn(logits.reshape(-1, V), tgt_out.reshape(-1), 0.1, 0) / int((tgt_out != 0).sum())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                return time.perf_counter() - start

            times = {"attnmt_base": [], "attnmt": []}
            for i in range(args.pairs + 2):
                order = ("attnmt_base", "attnmt") if i % 2 == 0 else ("attnmt", "attnmt_base")
                pair = {package: step(package) for package in order}
                if i >= 2:
                    for package, seconds in pair.items():
                        times[package].append(seconds)
            base, new = times["attnmt_base"], times["attnmt"]
            speedups = [b / n for b, n in zip(base, new)]
            print(f"{name}: step {statistics.median(base) * 1000:.0f} ms ({args.against}) -> "
                  f"{statistics.median(new) * 1000:.0f} ms (working tree); speed-up: median of {len(speedups)} "
                  f"pairs {statistics.median(speedups):.3f}x, fastest steps {min(base) / min(new):.3f}x")


if __name__ == "__main__":
    main()
