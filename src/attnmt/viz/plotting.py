"""Attention heatmaps: attended tokens across, attending tokens down, one colour bar, a title that
says which model, attention, layer and head the picture shows; gold alignment links as markers."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from attnmt.utils.io import atomic_path

Cells = list[tuple[int, int]]  # (row, column) pairs


def save_figure(fig, stem: Path, formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """Write ``fig`` atomically as ``stem.<format>`` for each format (png, svg, pdf), then close it."""
    paths = []
    for fmt in formats:
        path = stem.with_name(f"{stem.name}.{fmt}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def _heatmap(ax, weights: np.ndarray, cols: list[str], rows: list[str], fontsize: float, vmax: float = 1.0):
    im = ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=vmax, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(cols)), cols, rotation=90, fontsize=fontsize)
    ax.set_yticks(range(len(rows)), rows, fontsize=fontsize)
    ax.tick_params(length=0)
    return im


def _markers(ax, sure: Cells, possible: Cells, size: float, aligner: Cells = ()) -> None:
    if sure:
        r, c = zip(*sure)
        ax.scatter(c, r, s=size, facecolors="none", edgecolors="#ff4040", linewidths=1.4, label="gold (sure)")
    if possible:
        r, c = zip(*possible)
        ax.scatter(c, r, s=size * 0.5, marker="x", color="#ff9040", linewidths=1.0, label="gold (possible)")
    if aligner:  # a third kind: a statistical aligner's links, drawn over the gold circles
        r, c = zip(*aligner)
        ax.scatter(c, r, s=size * 0.6, marker="+", color="#40c0ff", linewidths=1.2, label="eflomal")
    if sure or possible or aligner:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, -0.02), fontsize=7, frameon=False)


def plot_attention(
    weights: np.ndarray, cols: list[str], rows: list[str], title: str, stem: str | Path,
    formats: tuple[str, ...] = ("png",), xlabel: str = "source", ylabel: str = "target",
    sure: Cells = (), possible: Cells = (), aligner: Cells = (),
) -> list[Path]:
    """One heatmap of ``weights`` ``(T, S)``: row ``t`` is the distribution ``rows[t]`` used over
    ``cols``; gold links as circles (sure) and crosses (possible), an aligner's as plus signs.
    Word-level weights (a column sums subwords) may exceed 1 only through rounding."""
    assert weights.shape == (len(rows), len(cols)), (weights.shape, len(rows), len(cols))
    w = max(4.0, 0.32 * len(cols) + 2.0)
    h = max(3.0, 0.32 * len(rows) + 1.5)
    fig, ax = plt.subplots(figsize=(w, h))
    im = _heatmap(ax, weights, cols, rows, fontsize=9)
    _markers(ax, list(sure), [c for c in possible if c not in set(sure)], size=60, aligner=list(aligner))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, label="attention weight")
    return save_figure(fig, Path(stem), formats)


def plot_attention_grid(
    weights: np.ndarray, cols: list[str], rows: list[str], title: str, stem: str | Path,
    formats: tuple[str, ...] = ("png",),
) -> list[Path]:
    """A layers x heads grid of heatmaps from ``weights`` ``(L, H, T, S)``."""
    L, H = weights.shape[:2]
    cell_w = max(2.5, 0.18 * len(cols) + 1.0)
    cell_h = max(2.0, 0.18 * len(rows) + 0.8)
    fig, axes = plt.subplots(L, H, figsize=(cell_w * H, cell_h * L), squeeze=False)
    for layer in range(L):
        for head in range(H):
            ax = axes[layer][head]
            im = _heatmap(ax, weights[layer, head], cols, rows, fontsize=5)
            ax.set_title(f"layer {layer + 1}, head {head + 1}", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.colorbar(im, ax=axes, fraction=0.02, pad=0.01, label="attention weight")
    return save_figure(fig, Path(stem), formats)
