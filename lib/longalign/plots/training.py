"""Training figures (notebooks 02 and 03): per-position loss, training time (Fig. 5 analogue), loss curves.

Each function takes a DataFrame built from records and returns a Figure; save with
``longalign.plots.save_figure``.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

METHOD_ORDER = ["naive", "sorted", "packing", "packing_weighted"]
METHOD_LABEL = {"naive": "naive batching", "sorted": "sorted batching", "packing": "packing",
                "packing_weighted": "packing + loss weighting", "packing_next_fit_in_order": "packing (official next-fit)"}


def position_loss_figure(df: pd.DataFrame, short_len: int | None = None) -> plt.Figure:
    """Per-position loss (left) and perplexity (right) per model variant; columns variant, position, loss."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for variant, g in df.groupby("variant", sort=False):
        g = g.sort_values("position")
        axes[0].plot(g["position"], g["loss"], label=variant)
        axes[1].plot(g["position"], np.exp(g["loss"]), label=variant)
    for ax, name in zip(axes, ("loss (nats / token)", "perplexity")):
        if short_len:
            ax.axvline(short_len, color="grey", ls="--", lw=1)
        ax.set_xlabel("token position")
        ax.set_ylabel(name)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle("Held-out per-position loss before / after context extension (dashed: pretraining length)")
    fig.tight_layout()
    return fig


def training_time_figure(measured: pd.DataFrame, ranks: pd.DataFrame, simulated: pd.DataFrame) -> plt.Figure:
    """Fig. 5 analogue: measured epoch time per method, measured per-rank compute/wait, simulated 8-rank time.

    ``measured``: method, setting (e.g. "1 process"), epoch_s (one row per run: dataset tokens /
    measured tokens per second); ``ranks``: method, rank, compute_s, wait_s (multi-process runs);
    ``simulated``: method, source ("simulator" or a paper model), relative (naive = 1).
    """
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    _setting_bars(axes[0], measured)
    _rank_bars(axes[1], ranks)
    _grouped_bars(axes[2], simulated)
    fig.tight_layout()
    return fig


def _setting_bars(ax, df: pd.DataFrame) -> None:
    """Mean epoch time over seeds (min-max whiskers) per method, one bar group per setting."""
    methods, settings = _methods(df), list(dict.fromkeys(df["setting"]))
    width = 0.8 / max(len(settings), 1)
    for k, setting in enumerate(settings):
        stats = df[df["setting"] == setting].groupby("method")["epoch_s"].agg(["mean", "min", "max"]).reindex(methods)
        err = [stats["mean"] - stats["min"], stats["max"] - stats["mean"]]
        ax.bar(np.arange(len(methods)) + k * width, stats["mean"], width, yerr=err, capsize=3, label=setting)
    ax.set_xticks(np.arange(len(methods)) + width * (len(settings) - 1) / 2,
                  [METHOD_LABEL.get(m, m) for m in methods], rotation=20, ha="right")
    ax.set_ylabel("seconds per epoch (measured throughput)")
    ax.set_title("measured on this CPU", fontsize=10)
    ax.legend(fontsize=8)


def _methods(df: pd.DataFrame) -> list[str]:
    return [m for m in METHOD_ORDER + sorted(set(df["method"]) - set(METHOD_ORDER)) if m in set(df["method"])]


def _rank_bars(ax, ranks: pd.DataFrame) -> None:
    """Stacked compute + wait seconds for each (method, rank)."""
    if ranks.empty:
        ax.set_title("no multi-process runs", fontsize=10)
        return
    rows = ranks.sort_values(["method", "rank"], key=lambda s: s.map(_order_key) if s.name == "method" else s)
    x = np.arange(len(rows))
    ax.bar(x, rows["compute_s"], label="compute", color="C0")
    ax.bar(x, rows["wait_s"], bottom=rows["compute_s"], label="wait (idle)", color="C3")
    ax.set_xticks(x, [f"{METHOD_LABEL.get(m, m)}\nrank {r}" for m, r in zip(rows["method"], rows["rank"])],
                  rotation=30, ha="right", fontsize=7)
    ax.set_title("measured per-rank seconds, 2 gloo processes", fontsize=10)
    ax.legend(fontsize=8)


def _order_key(m: str) -> int:
    return METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER)


def _grouped_bars(ax, sim: pd.DataFrame) -> None:
    """Relative time (naive = 1) per method: simulator vs the paper's measured Fig. 5."""
    methods = _methods(sim)
    sources = list(dict.fromkeys(sim["source"]))
    width = 0.8 / max(len(sources), 1)
    for k, src in enumerate(sources):
        vals = sim[sim["source"] == src].set_index("method")["relative"].reindex(methods)
        ax.bar(np.arange(len(methods)) + k * width, vals, width, label=src)
    ax.set_xticks(np.arange(len(methods)) + width * (len(sources) - 1) / 2,
                  [METHOD_LABEL.get(m, m) for m in methods], rotation=20, ha="right")
    ax.set_ylabel("time relative to naive")
    ax.set_title("8 x GPU, paper length mix: simulated vs paper Fig. 5", fontsize=10)
    ax.legend(fontsize=7)


def loss_curves_figure(log: pd.DataFrame) -> plt.Figure:
    """Sequence-mean (Eq. 2) and token-mean training loss per step, mean over seeds, per method."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharex=True)
    for method in _methods(log):
        g = log[log["method"] == method].groupby("step")[["loss_sequence", "loss_token"]].mean()
        for ax, col in zip(axes, ("loss_sequence", "loss_token")):
            ax.plot(g.index, g[col], label=METHOD_LABEL.get(method, method))
    axes[0].set_title("sequence-mean loss (Eq. 2)", fontsize=10)
    axes[1].set_title("token-mean loss", fontsize=10)
    for ax in axes:
        ax.set_xlabel("optimizer step")
    axes[0].set_ylabel("training loss (nats)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig
