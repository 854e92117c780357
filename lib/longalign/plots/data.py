"""Figures of notebook 01: length distribution of the constructed data (paper Fig. 3 left) and its composition.

Both take a DataFrame with one row per training example, columns ``n_tokens``, ``kind`` (long|short),
``source``, ``task_type`` and ``lang`` (see :func:`longalign.data.build.records_frame`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from longalign.plots import plt


def length_distribution(df: pd.DataFrame, bins: int = 30) -> "plt.Figure":
    """Histogram of example lengths in tokens, long and short data stacked, log-spaced bins (Fig. 3 left)."""
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    lo, hi = max(1, int(df["n_tokens"].min())), int(df["n_tokens"].max()) + 1
    edges = np.geomspace(lo, max(hi, lo + 1), bins + 1)
    kinds = [k for k in ("short", "long") if (df["kind"] == k).any()]
    ax.hist([df.loc[df["kind"] == k, "n_tokens"] for k in kinds], bins=edges, stacked=True, label=kinds,
            color=["#9ecae1", "#3182bd"][: len(kinds)], edgecolor="white", linewidth=0.4)
    ax.set_xscale("log")
    ax.set_xlabel("length (tokens, training tokenizer)")
    ax.set_ylabel("# examples")
    ax.set_title(f"Length distribution ({len(df)} examples)")
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig


def composition(df: pd.DataFrame) -> "plt.Figure":
    """Counts of long examples per source (split by language) and per task type."""
    long = df[df["kind"] == "long"]
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 3.6), gridspec_kw={"width_ratios": [3, 2]})
    by_source = long.groupby(["source", "lang"]).size().unstack(fill_value=0)
    by_source.plot.barh(stacked=True, ax=axes[0], color=["#3182bd", "#e6550d", "#31a354"][: by_source.shape[1]])
    axes[0].set_xlabel("# long examples")
    axes[0].set_ylabel("")
    axes[0].set_title("per source")
    long["task_type"].value_counts().sort_index().plot.bar(ax=axes[1], color="#756bb1", rot=0)
    axes[1].set_ylabel("# long examples")
    axes[1].set_title("per task type")
    fig.tight_layout()
    return fig
