"""Figures: one function per figure (DataFrame in, Figure out) and the one ``save_figure``.

Figure functions live in topic modules, one per notebook family (``plots.packing``, ``plots.data``,
``plots.training``, ``plots.needle``, ``plots.curves``, ``plots.scaling``, ``plots.benchmarks``); every
notebook saves through :func:`save_figure`.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg") if not matplotlib.get_backend().lower().startswith(("module://", "nbagg", "widget", "ipympl")) else None
import matplotlib.pyplot as plt  # noqa: E402

from longalign import paths  # noqa: E402


def save_figure(fig: "plt.Figure", name: str, folder: Path | None = None) -> list[Path]:
    """Write ``fig`` as ``outputs/figures/<name>.png`` and ``.pdf`` (name like ``03_training_time``)."""
    folder = Path(folder) if folder is not None else paths.figures_dir()
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for ext in ("png", "pdf"):
        path = folder / f"{name}.{ext}"
        fig.savefig(path, dpi=150, bbox_inches="tight")
        written.append(path)
    return written
