"""Attention heatmaps of an evaluation, and an ``index.html`` to browse them with the sentences.

Files are ``heatmaps/NNNN.<attention>[.layerK].{png,svg}`` (the chosen layer, averaged over heads)
and ``heatmaps/NNNN.<attention>.grid.{png,svg}`` (every layer and head), ``NNNN`` being the
sentence's 0-based line number in the evaluated file.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from attnmt.align.links import Link, layer_index
from attnmt.data.dataset import ParallelDataset
from attnmt.data.subwords import merge_to_words, word_ids, words
from attnmt.data.tokenizer import Tokenizer
from attnmt.decode.search import forced_attention
from attnmt.errors import ConfigError
from attnmt.models.base import Seq2Seq
from attnmt.utils.io import atomic_write_text
from attnmt.viz.plotting import plot_attention, plot_attention_grid

ATTENTIONS = {
    "cross": "cross-attention",
    "encoder_self": "encoder self-attention",
    "decoder_self": "decoder self-attention",
}


@dataclass
class HeatmapSettings:
    num_plots: int = 10
    attention: str = "cross"  # cross, encoder_self or decoder_self
    layer: int = -1  # which decoder (or encoder) layer the main picture shows; -1 = last
    grid: bool = True  # also a layers x heads grid (models with more than one layer or head)
    level: str = "word"  # word or subword
    formats: tuple[str, ...] = ("png", "svg")
    target: str = "hypothesis"  # hypothesis (what the model wrote) or reference (teacher-forced)

    def __post_init__(self):
        if self.attention not in ATTENTIONS:
            raise ConfigError(f"eval.attention={self.attention!r} is not one of {', '.join(ATTENTIONS)}")
        if self.level not in ("word", "subword"):
            raise ConfigError(f"eval.level={self.level!r} is not one of word, subword")
        if self.target not in ("hypothesis", "reference"):
            raise ConfigError(f"eval.plot_target={self.target!r} is not one of hypothesis, reference")
        bad = [f for f in self.formats if f not in ("png", "svg", "pdf")]
        if bad or not self.formats:
            raise ConfigError(f"eval.formats={list(self.formats)} must be a non-empty list of png, svg, pdf")
        if self.num_plots < 0:
            raise ConfigError(f"eval.num_plots={self.num_plots} must be >= 0")


def _merge(weights: np.ndarray, rows: list[str], cols: list[str]) -> tuple[np.ndarray, list[str], list[str]]:
    """``(L, H, R, C)`` subword weights to word level."""
    rw, cw = word_ids(rows), word_ids(cols)
    merged = np.stack([np.stack([merge_to_words(w, rw, cw) for w in layer]) for layer in weights])
    return merged, words(rows), words(cols)


def _gold_cells(sure: set[Link], possible: set[Link], rows: list[str], cols: list[str], level: str):
    """Gold (source i, target j) links as (row, column) cells of a cross-attention picture."""
    if level == "word":
        return [(j, i) for i, j in sure], [(j, i) for i, j in possible - sure]
    rw, cw = word_ids(rows), word_ids(cols)

    def cells(links):
        return [(t, s) for t, j in enumerate(rw) for s, i in enumerate(cw) if j is not None and (i, j) in links]

    return cells(sure), cells(possible - sure)


def export_heatmaps(
    model: Seq2Seq, tokenizer: Tokenizer, dataset: ParallelDataset, hyp_ids: list[list[int]],
    references: list[str], gold: list[tuple[set[Link], set[Link]]] | None, out_dir: Path,
    settings: HeatmapSettings, model_name: str, search: str, baseline: list[set[Link]] | None = None,
    subdir: str = "heatmaps",
) -> dict[int, list[Path]]:
    """Pictures for the first ``settings.num_plots`` sentences, in ``out_dir/subdir``:
    ``{sentence: [files]}``; gold links and ``baseline``'s (an aligner's, e.g. eflomal's) marked
    where the target is the reference's."""
    pictures: dict[int, list[Path]] = {}
    what = ATTENTIONS[settings.attention]
    device = next(model.parameters()).device  # during training (the attention monitor): maybe a GPU
    for i in range(min(settings.num_plots, len(dataset))):
        target = hyp_ids[i] if settings.target == "hypothesis" else dataset.tgt[i][1:-1]
        src = torch.tensor([dataset.src[i]], device=device)
        attn, _ = forced_attention(model, src, torch.ones_like(src, dtype=torch.bool), [target])
        if settings.attention not in attn:
            raise ConfigError(
                f"eval.attention={settings.attention}: {model_name} has no {what}; it has {', '.join(sorted(attn))}"
            )
        weights = attn[settings.attention][0].float().cpu().numpy()  # (L, H, rows, cols)
        src_pieces = tokenizer.src_pieces(dataset.src[i])
        emitted = tokenizer.tgt_pieces(target) + ["</s>"]
        rows, cols, xlabel, ylabel = {
            "cross": (emitted, src_pieces, "source", "target (emitted)"),
            "encoder_self": (src_pieces, src_pieces, "source (attended)", "source (attending)"),
            "decoder_self": (emitted, ["<s>"] + emitted[:-1], "target prefix (attended)", "target (emitted)"),
        }[settings.attention]
        sure = possible = aligner = ()
        if settings.attention == "cross" and (gold is not None or baseline is not None):
            same = settings.target == "reference" or words(emitted) == references[i].split()
            if same and gold is not None:
                sure, possible = _gold_cells(*gold[i], rows, cols, settings.level)
            if same and baseline is not None:
                aligner = _gold_cells(baseline[i], set(), rows, cols, settings.level)[0]
        if settings.level == "word":
            weights, rows, cols = _merge(weights, rows, cols)
        L, H = weights.shape[:2]
        layer = layer_index(settings.layer, L)
        where = "" if L == H == 1 else f", layer {layer + 1} of {L}" + (f", mean of {H} heads" if H > 1 else "")
        source = f"{search} output" if settings.target == "hypothesis" else "reference, teacher-forced"
        title = f"{model_name}: {what}{where}\nsentence {i}, {source}, {settings.level} level"
        stem = out_dir / subdir / (f"{i:04d}.{settings.attention}" + (f".layer{layer + 1}" if L > 1 else ""))
        files = plot_attention(
            weights[layer].mean(0), cols, rows, title, stem, settings.formats, xlabel, ylabel, sure, possible, aligner
        )
        if settings.grid and L * H > 1:
            files += plot_attention_grid(
                weights, cols, rows, f"{model_name}: {what}, every layer and head\nsentence {i}, {source}",
                out_dir / subdir / f"{i:04d}.{settings.attention}.grid", settings.formats,
            )
        pictures[i] = files
    return pictures


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; width: 100%; }}
td, th {{ border-bottom: 1px solid #ddd; padding: .4em .6em; vertical-align: top; text-align: left; }}
th {{ background: #f4f4f4; }} .k {{ color: #777; width: 6em; }} .diff {{ background: #fff6e0; }}
img {{ max-width: 46em; display: block; margin: .3em 0; }} code {{ font-size: .85em; }}
</style></head><body>
<h1>{title}</h1>
<table>{summary}</table>
<h2>Sentences</h2>
<p>{n} sentences; rows where the hypothesis differs from the reference are shaded.</p>
<table><tr><th>#</th><th>sentence</th><th>attention</th></tr>
{rows}
</table></body></html>
"""


def write_index(
    path: Path, title: str, summary: dict[str, str], sources: list[str], hypotheses: list[str],
    references: list[str], pictures: dict[int, list[Path]],
) -> Path:
    """A page listing every sentence (source, hypothesis, reference) with its pictures."""
    esc = html.escape
    summary_rows = "".join(f"<tr><td class=k>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in summary.items())
    rows = []
    for i, (s, h, r) in enumerate(zip(sources, hypotheses, references)):
        images = "".join(
            f'<a href="{esc(p.relative_to(path.parent).as_posix())}">'
            f'<img src="{esc(p.relative_to(path.parent).as_posix())}" loading="lazy" alt="attention, sentence {i}"></a>'
            for p in pictures.get(i, []) if p.suffix == ".png"
        )
        vector = " ".join(
            f'<a href="{esc(p.relative_to(path.parent).as_posix())}">{p.suffix.lstrip(".")}</a>'
            for p in pictures.get(i, []) if p.suffix != ".png"
        )
        cls = "" if h == r else " class=diff"
        rows.append(
            f'<tr id="s{i}"{cls}><td>{i}</td><td><span class=k>source</span> {esc(s)}<br>'
            f"<span class=k>hypothesis</span> {esc(h)}<br><span class=k>reference</span> {esc(r)}</td>"
            f"<td>{images}{vector}</td></tr>"
        )
    text = PAGE.format(title=esc(title), summary=summary_rows, n=len(sources), rows="\n".join(rows))
    atomic_write_text(path, text)
    return path
