"""Learning curves (paper Fig. 6): long- and short-task score relative to the final checkpoint, raw dotted, EMA solid."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

TASK_COLOURS = {"long": "#1f77b4", "short": "#d62728"}


def plot_learning_curves(frame: pd.DataFrame, labels: dict[str, str] | None = None,
                         ylabel: str = "Score / Final score") -> plt.Figure:
    """One panel per run: ``relative`` (dotted) and ``relative_ema`` (solid) against step, per task."""
    missing = {"run", "task", "step", "relative", "relative_ema"} - set(frame.columns)
    if missing:
        raise ValueError(f"curve frame lacks columns {sorted(missing)} (build it with eval.curves.curve_frame)")
    labels = labels or {}
    runs = list(dict.fromkeys(frame["run"]))
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 3.8), squeeze=False, sharey=True)
    for ax, run in zip(axes[0], runs):
        for task, g in frame[frame["run"] == run].groupby("task", sort=False):
            colour = TASK_COLOURS.get(task)
            ax.plot(g["step"], g["relative"], ":", color=colour, alpha=0.7)
            ax.plot(g["step"], g["relative_ema"], "-", color=colour, label=labels.get(task, task))
        ax.axhline(1.0, color="grey", lw=0.5)
        ax.set_title(f"{run} (dotted: raw, solid: EMA)")
        ax.set_xlabel("Training steps")
        ax.legend()
    axes[0][0].set_ylabel(ylabel)
    fig.tight_layout()
    return fig
