"""Needle-in-a-haystack heatmaps (paper Fig. 4): depth × context length, one panel per model, NIAH colours."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.colors import LinearSegmentedColormap

# The colour scheme of the NIAH repo's and LongAlign's vis.py.
NIAH_CMAP = LinearSegmentedColormap.from_list("niah", ["#F0496E", "#EBB839", "#0CD79F"])


def needle_table(df: pd.DataFrame, model_tag: str) -> pd.DataFrame:
    """Mean score pivoted to depth (rows, ascending) × context length (columns) for one model."""
    sub = df[df["model_tag"] == model_tag]
    if sub.empty:
        raise ValueError(f"no needle records for model {model_tag!r}")
    return sub.pivot_table(index="depth", columns="length", values="score", aggfunc="mean").sort_index()


def plot_needle_heatmaps(df: pd.DataFrame, annotate: bool = True, panel_width: float = 6.0, ncols: int = 3) -> plt.Figure:
    """One heatmap per ``model_tag`` (score 0-10; red = missed, green = retrieved), from needle records."""
    missing = {"model_tag", "length", "depth", "score"} - set(df.columns)
    if missing:
        raise ValueError(f"needle records lack columns {sorted(missing)}")
    tags = list(dict.fromkeys(df["model_tag"]))  # first-seen order = the notebook's model order
    ncols = min(ncols, len(tags))
    nrows = -(-len(tags) // ncols)
    # constrained layout keeps room for the suptitle (tight_layout let it overlap the top row's titles)
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_width * ncols, 4.2 * nrows), squeeze=False, layout="constrained")
    for ax in axes.flat[len(tags):]:
        ax.set_visible(False)
    for ax, tag in zip(axes.flat, tags):
        table = needle_table(df, tag)
        sns.heatmap(table, ax=ax, cmap=NIAH_CMAP, vmin=0, vmax=10, annot=annotate, fmt=".0f",
                    cbar_kws={"label": "Score"}, linewidths=0.5, linecolor="white")
        ax.set_title(f"{tag} (mean {table.values.mean():.1f})")
        ax.set_xlabel("Context length (tokens)")
        ax.set_ylabel("Needle depth (%)")
        ax.set_yticklabels([f"{d:g}" for d in table.index], rotation=0)
        ax.set_xticklabels([f"{int(c)}" for c in table.columns], rotation=45)
    fig.suptitle('Fact retrieval across context lengths ("Needle in a Haystack")')
    return fig
