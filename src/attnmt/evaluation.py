"""Evaluating a checkpoint: decode a split, score with sacreBLEU, write hypotheses, results and
attention heatmaps into the output folder."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig
from tqdm import tqdm

from attnmt.checkpoint import load_for_decoding
from attnmt.data.batching import TokenBucketBatchSampler
from attnmt.data.datamodule import ParallelDataset, encode_for_eval
from attnmt.data.io import read_parallel
from attnmt.data.tokenizer import Tokenizer
from attnmt.errors import ConfigError
from attnmt.metrics import corpus_scores
from attnmt.models.base import Seq2Seq
from attnmt.plotting import plot_attention, plot_attention_grid
from attnmt.search import forced_attention, greedy_search
from attnmt.utils.config import build
from attnmt.utils.io import atomic_write_text

log = logging.getLogger(__name__)


def translate_dataset(
    model: Seq2Seq, dataset: ParallelDataset, max_tokens: int, max_len_ratio: float, progress: bool = True
) -> list[list[int]]:
    """Greedy-decode every source of ``dataset`` in length-sorted token-budget batches; the
    output keeps the dataset's order."""
    sampler = TokenBucketBatchSampler(dataset.lengths(), max_tokens, shuffle=False)
    hyps: list[list[int] | None] = [None] * len(dataset)
    with torch.inference_mode():
        for indices in tqdm(list(sampler), desc="decoding", unit="batch", disable=not progress):
            batch = dataset.collate(indices)
            for i, h in zip(indices, greedy_search(model, batch["src"], batch["src_mask"], max_len_ratio)):
                hyps[i] = h
    return hyps  # type: ignore[return-value]


def export_heatmaps(
    model: Seq2Seq, tokenizer: Tokenizer, dataset: ParallelDataset, hyps: list[list[int]],
    out_dir: Path, model_name: str, num_plots: int, layer: int, grid: bool,
) -> list[Path]:
    """Heatmaps of cross-attention for the first ``num_plots`` sentences, as the model decoded them."""
    paths = []
    n = min(num_plots, len(dataset))
    for i in range(n):
        batch = dataset.collate([i])
        attn, tgt_in = forced_attention(model, batch["src"], batch["src_mask"], [hyps[i]])
        cross = attn["cross"][0].float().numpy()  # (L, H, T, S)
        src_tokens = tokenizer.src_pieces(batch["src"][0].tolist())
        # Row t of the weights emits the (t+1)-th token of <s> y_1 .. y_n </s>.
        tgt_tokens = tokenizer.tgt_pieces(hyps[i]) + ["</s>"]
        L, H = cross.shape[:2]
        if not -L <= layer < L:
            raise ConfigError(f"eval.layer={layer} is out of range for a model with {L} decoder layers")
        layer_idx = layer % L
        where = "" if L == H == 1 else f", layer {layer_idx + 1}/{L}, mean of {H} heads"
        title = f"{model_name}: cross-attention{where}, sentence {i} (greedy output)"
        paths.append(
            plot_attention(cross[layer_idx].mean(0), src_tokens, tgt_tokens, title, out_dir / f"{i:04d}.png")
        )
        if grid and (L > 1 or H > 1):
            paths.append(
                plot_attention_grid(
                    cross, src_tokens, tgt_tokens, f"{model_name}: cross-attention, sentence {i}",
                    out_dir / f"{i:04d}.grid.png",
                )
            )
    return paths


def split_files(train_cfg: dict, split: str, src_file: str | None, ref_file: str | None) -> tuple[Path, Path]:
    """Explicit files, or the named split of the data the checkpoint was trained on."""
    if src_file or ref_file:
        if not (src_file and ref_file):
            raise ConfigError("src_file and ref_file go together: give both, or neither to use split=")
        return Path(src_file), Path(ref_file)
    datamodule = build(train_cfg["data"], "data")
    datamodule.prepare_corpus()
    return datamodule.split_files(split)


def decode_file(
    model: Seq2Seq, tokenizer: Tokenizer, train_cfg: dict, src_file: Path, ref_file: Path,
    batch_tokens: int = 8000, max_len_ratio: float = 1.5, progress: bool = True,
) -> tuple[ParallelDataset, list[list[int]], list[str], dict]:
    """Greedy-decode ``src_file`` and score it against ``ref_file``: the dataset, hypothesis ids,
    detokenized hypotheses and the sacreBLEU scores."""
    sources, references = read_parallel(src_file, ref_file)
    dataset = encode_for_eval(tokenizer, sources, max_len=train_cfg["data"].get("max_len", 128))
    hyp_ids = translate_dataset(model, dataset, batch_tokens, max_len_ratio, progress)
    hypotheses = tokenizer.decode_tgt(hyp_ids)
    return dataset, hyp_ids, hypotheses, corpus_scores(hypotheses, references)


def evaluate(cfg: DictConfig) -> dict:
    out_dir = Path(cfg.paths.output_dir)
    model, tokenizer, train_cfg, ckpt_path = load_for_decoding(cfg.ckpt)
    src_file, ref_file = split_files(train_cfg, cfg.split, cfg.get("src_file"), cfg.get("ref_file"))
    dataset, hyp_ids, hypotheses, scores = decode_file(
        model, tokenizer, train_cfg, src_file, ref_file, cfg.decode.batch_tokens, cfg.decode.max_len_ratio
    )

    atomic_write_text(out_dir / "hypotheses.txt", "".join(h + "\n" for h in hypotheses))
    model_name = train_cfg["model"]["_target_"].rsplit(".", 1)[-1]
    plots = export_heatmaps(
        model, tokenizer, dataset, hyp_ids, out_dir / "heatmaps", model_name,
        cfg.eval.num_plots, cfg.eval.layer, cfg.eval.plot_grid,
    )
    results = {
        **scores,
        "num_sentences": len(hypotheses),
        "checkpoint": str(ckpt_path),
        "model": train_cfg["model"]["_target_"],
        "source_file": str(src_file),
        "reference_file": str(ref_file),
        "decoding": {"search": "greedy", "beam_size": 1, "max_len_ratio": cfg.decode.max_len_ratio},
        "heatmaps": len(plots),
    }
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2) + "\n")
    print(f"\n{model_name} on {src_file} ({len(hypotheses)} sentences, greedy decoding)")
    for name in ("bleu", "chrf", "ter"):
        print(f"  {name.upper():5s} {scores[name]['score']:6.2f}   {scores[name]['signature']}")
    print(f"  hypotheses, results.json and {len(plots)} heatmaps in {out_dir}")
    return results
