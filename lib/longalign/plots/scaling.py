"""Scaling figure (paper Table 4 as a plot): training / held-out loss and long-QA score against model size."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd


def plot_scaling(df: pd.DataFrame) -> plt.Figure:
    """Left: final training and held-out loss vs parameters (log x); right: long-QA score vs parameters."""
    missing = {"name", "params", "final_loss_token", "heldout_loss_token", "qa_score"} - set(df.columns)
    if missing:
        raise ValueError(f"scaling records lack columns {sorted(missing)}")
    df = df.sort_values("params")
    fig, (ax_loss, ax_qa) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_loss.plot(df["params"], df["final_loss_token"], "o-", label="final training loss (token mean)")
    ax_loss.plot(df["params"], df["heldout_loss_token"], "s--", label="held-out long-QA loss (token mean)")
    ax_qa.plot(df["params"], df["qa_score"], "o-", color="#2ca02c")
    for ax in (ax_loss, ax_qa):
        ax.set_xscale("log")
        ax.set_xlabel("Parameters")
        for _, row in df.iterrows():
            ax.annotate(row["name"], (row["params"], row["heldout_loss_token"] if ax is ax_loss else row["qa_score"]),
                        textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax_loss.set_ylabel("Cross-entropy (nats)")
    ax_loss.legend(fontsize=8)
    ax_qa.set_ylabel("Long-QA score (overlap proxy, 1-10)")
    fig.suptitle("Scaling the LongAlign recipe (packing + loss weighting)")
    fig.tight_layout()
    return fig
