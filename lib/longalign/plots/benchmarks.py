"""Benchmark figures: the LongBench-Chat leaderboard (paper Fig. 1) built from judged records."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def leaderboard_figure(summary: pd.DataFrame, title: str = "LongBench-Chat", scale: tuple[float, float] = (1, 10)) -> plt.Figure:
    """Horizontal bars of each model's mean judge score (± s.e.m. over items), best at the top.

    ``summary`` has one row per model with ``model_tag``, ``score`` and optionally ``sem``, ``judge``
    and ``n_nan`` (as returned by :func:`longalign.eval.judge.summarise`).
    """
    if summary.empty:
        raise ValueError("no scores to plot: the summary is empty")
    df = summary.sort_values("score").reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(df) + 1.5))
    err = df["sem"].to_numpy(dtype=float) if "sem" in df else None
    colors = plt.cm.viridis(np.linspace(0.25, 0.85, len(df)))
    # Bars start at the bottom of the rating scale: a 1-10 rating of 1 is the floor, not a short bar.
    ax.barh(df["model_tag"], df["score"] - scale[0], left=scale[0], xerr=err, color=colors, ecolor="0.3", capsize=3)
    nans = df["n_nan"] if "n_nan" in df else pd.Series(0, index=df.index)
    pad = np.nan_to_num(err, nan=0.0) if err is not None else np.zeros(len(df))
    for y, (score, nan, e) in enumerate(zip(df["score"], nans, pad)):
        note = f"{score:.2f}" + (f"  ({int(nan)} NaN)" if nan else "")
        ax.text(score + e + 0.02 * (scale[1] - scale[0]), y, note, va="center", fontsize=8)
    ax.set_xlim(scale[0] - 0.02 * (scale[1] - scale[0]), scale[1] * 1.12)
    judges = ", ".join(sorted(df["judge"].astype(str).unique())) if "judge" in df else "?"
    ax.set_xlabel(f"mean rating ({scale[0]:g}-{scale[1]:g}), judge: {judges}")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig
