"""Figures of notebook 00: the block-diagonal attention mask, the loss-weight map, per-sequence shares."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure


def block_mask_figure(segments: pd.DataFrame) -> Figure:
    """The causal block-diagonal mask of one packed row: token t attends to s only inside its segment."""
    total = int(segments["end"].max())
    mask = np.zeros((total, total))
    for seg in segments.itertuples():
        block = np.tril(np.ones((seg.end - seg.start, seg.end - seg.start)))
        mask[seg.start:seg.end, seg.start:seg.end] = block * (1 + seg.segment % 2)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.imshow(mask, cmap="Blues", interpolation="nearest", vmin=0, vmax=2.5)
    ax.set(title=f"Packed row: {len(segments)} sequences, {total} tokens", xlabel="key position", ylabel="query position")
    for start in segments["start"].iloc[1:]:
        ax.axhline(start - 0.5, color="k", lw=0.3)
        ax.axvline(start - 0.5, color="k", lw=0.3)
    return fig


def loss_weight_figure(tokens: pd.DataFrame) -> Figure:
    """Loss weight per token (1/N_i on targets) above the position ids that restart per sequence."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 4), sharex=True, height_ratios=[2, 1])
    colors = np.where(tokens["is_target"], "tab:orange", "lightgray")
    top.bar(tokens["position"], tokens["weight"].where(tokens["is_target"], tokens["weight"].max() * 0.02),
            color=colors, width=1.0)
    top.set(ylabel="loss weight 1/N_i", title="Loss weights (orange: target tokens; grey: prompt, weight 0)")
    bottom.plot(tokens["position"], tokens["position_id"], lw=1)
    bottom.set(xlabel="token index in the packed row", ylabel="position id")
    return fig


def sequence_weight_figure(table: pd.DataFrame) -> Figure:
    """Each sequence's loss share under Eq. 3 relative to Eq. 2, against its target count and pack size."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    points = ax.scatter(table["n_targets"], table["eq3_over_eq2"], c=table["pack_sequences"], cmap="viridis", s=40)
    ax.axhline(1.0, color="k", ls="--", lw=1, label="Eq. 2 = Eq. 4 (every sequence 1/M)")
    ax.set(xscale="log", yscale="log", xlabel="target tokens N_i", ylabel="share under Eq. 3 / share under Eq. 2",
           title="Unweighted packing (Eq. 3) over-weights long answers in sparse packs")
    fig.colorbar(points, ax=ax, label="sequences in its pack")
    ax.legend(loc="lower right")
    return fig
