"""Scaling figure (paper Table 4 as a plot): training / held-out loss and long-QA score against model size."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd


def plot_scaling(df: pd.DataFrame) -> plt.Figure:
    """Left: final training and held-out loss vs parameters (log x, mean over seeds); right: long-QA score vs parameters."""
    missing = {"name", "params", "final_loss_token", "heldout_loss_token", "qa_score"} - set(df.columns)
    if missing:
        raise ValueError(f"scaling records lack columns {sorted(missing)}")
    # one point per size: the mean over seeds (seed variants share their size), each seed drawn faintly
    means = df.groupby("params", as_index=False).agg(name=("name", lambda s: min(s, key=len)),  # the unsuffixed seed
                                                      final_loss_token=("final_loss_token", "mean"),
                                                      heldout_loss_token=("heldout_loss_token", "mean"),
                                                      qa_score=("qa_score", "mean"), seeds=("name", "size"))
    fig, (ax_loss, ax_qa) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_loss.plot(means["params"], means["final_loss_token"], "o-", label="final training loss (token mean)")
    ax_loss.plot(means["params"], means["heldout_loss_token"], "s--", label="held-out long-QA loss (token mean)")
    ax_loss.scatter(df["params"], df["heldout_loss_token"], s=10, color="#ff7f0e", alpha=0.4, label="held-out, each seed")
    ax_qa.plot(means["params"], means["qa_score"], "o-", color="#2ca02c")
    for ax in (ax_loss, ax_qa):
        ax.set_xscale("log")
        ax.set_xlabel("Parameters")
        for _, row in means.iterrows():
            ax.annotate(f"{row['name']} (n={row['seeds']})", (row["params"], row["heldout_loss_token"] if ax is ax_loss
                        else row["qa_score"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax_loss.set_ylabel("Cross-entropy (nats)")
    ax_loss.legend(fontsize=8)
    ax_qa.set_ylabel("Long-QA score (overlap proxy, 1-10)")
    fig.suptitle("Scaling the LongAlign recipe (packing + loss weighting)")
    fig.tight_layout()
    return fig
