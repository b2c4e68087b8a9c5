"""Attention heatmaps: source tokens across, target tokens down, one colour bar, a title that says
which model, layer and head the picture shows."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from attnmt.utils.io import atomic_path  # noqa: E402


def save_figure(fig, path: Path) -> None:
    """Write ``fig`` atomically in the format of ``path``'s suffix, then close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip("."), dpi=150, bbox_inches="tight")
    plt.close(fig)


def _heatmap(ax, weights: np.ndarray, src_tokens: list[str], tgt_tokens: list[str], fontsize: float):
    im = ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(src_tokens)), src_tokens, rotation=90, fontsize=fontsize)
    ax.set_yticks(range(len(tgt_tokens)), tgt_tokens, fontsize=fontsize)
    ax.tick_params(length=0)
    return im


def plot_attention(
    weights: np.ndarray, src_tokens: list[str], tgt_tokens: list[str], title: str, path: str | Path
) -> Path:
    """One heatmap of ``weights`` ``(T, S)``: row ``t`` is the distribution used to emit
    ``tgt_tokens[t]`` over ``src_tokens``."""
    assert weights.shape == (len(tgt_tokens), len(src_tokens)), (weights.shape, len(tgt_tokens), len(src_tokens))
    path = Path(path)
    w = max(4.0, 0.32 * len(src_tokens) + 2.0)
    h = max(3.0, 0.32 * len(tgt_tokens) + 1.5)
    fig, ax = plt.subplots(figsize=(w, h))
    im = _heatmap(ax, weights, src_tokens, tgt_tokens, fontsize=9)
    ax.set_xlabel("source")
    ax.set_ylabel("target")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, label="attention weight")
    save_figure(fig, path)
    return path


def plot_attention_grid(
    weights: np.ndarray, src_tokens: list[str], tgt_tokens: list[str], title: str, path: str | Path
) -> Path:
    """A layers x heads grid of heatmaps from ``weights`` ``(L, H, T, S)``."""
    path = Path(path)
    L, H = weights.shape[:2]
    cell_w = max(2.5, 0.18 * len(src_tokens) + 1.0)
    cell_h = max(2.0, 0.18 * len(tgt_tokens) + 0.8)
    fig, axes = plt.subplots(L, H, figsize=(cell_w * H, cell_h * L), squeeze=False)
    for layer in range(L):
        for head in range(H):
            ax = axes[layer][head]
            im = _heatmap(ax, weights[layer, head], src_tokens, tgt_tokens, fontsize=5)
            ax.set_title(f"layer {layer + 1}, head {head + 1}", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.colorbar(im, ax=axes, fraction=0.02, pad=0.01, label="attention weight")
    save_figure(fig, path)
    return path
