"""Attention maps as a PNG grid: one row per (kind, layer), one column per head.

Kinds follow the paper's three uses of attention: encoder self-attention (source x
source), decoder self-attention (output x output, causal) and encoder-decoder "cross"
attention (output x source), the picture in which "it" attends to "the animal".
"""

from __future__ import annotations

from pathlib import Path

import torch
from matplotlib.figure import Figure

KINDS = (("encoder_self", "encoder self"), ("decoder_self", "decoder self"), ("cross", "cross"))


def attention_figure(
    maps: dict[str, list[torch.Tensor]], src_labels: list[str], tgt_labels: list[str], panel_size: float = 1.6
) -> Figure:
    """`Transformer.attention_maps` of one sentence (each (1, h, Tq, Tk)) -> a Figure with one axes per head."""
    rows = [(title, i, w[0]) for key, title in KINDS for i, w in enumerate(maps[key])]
    n_heads = rows[0][2].size(0)
    labels = {"encoder self": (src_labels, src_labels), "decoder self": (tgt_labels, tgt_labels),
              "cross": (tgt_labels, src_labels)}  # fmt: skip
    # Agg canvas without pyplot: no global figure state, works on a headless machine.
    fig = Figure(figsize=(panel_size * n_heads + 1.0, panel_size * len(rows) + 0.5), layout="constrained")
    axes = fig.subplots(len(rows), n_heads, squeeze=False)
    for r, (title, layer, weights) in enumerate(rows):
        query_labels, key_labels = labels[title]
        for h in range(n_heads):
            ax = axes[r][h]
            ax.imshow(weights[h].float().cpu().numpy(), vmin=0.0, vmax=1.0, cmap="viridis")
            ax.set_title(f"{title} L{layer + 1} H{h + 1}", fontsize=6)
            ax.set_xticks(range(len(key_labels)), key_labels, rotation=90, fontsize=4)
            ax.set_yticks(range(len(query_labels)), query_labels, fontsize=4)
    return fig


def save_attention_png(
    maps: dict[str, list[torch.Tensor]], src_labels: list[str], tgt_labels: list[str], path: str | Path, dpi: int = 150
) -> int:
    """Write the grid to `path`; returns the number of panels (layers x heads over the three kinds)."""
    fig = attention_figure(maps, src_labels, tgt_labels)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return len(fig.axes)
