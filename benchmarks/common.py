"""Shared benchmark helpers: machine record, interleaved repeated timing, medians, result lines."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone

import torch


def machine() -> dict:
    """The machine and library versions a result was measured with."""
    import numpy
    import transformers

    info = {"host": platform.node(), "platform": platform.platform(), "python": sys.version.split()[0],
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "transformers": transformers.__version__, "numpy": numpy.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_avg_1m": os.getloadavg()[0], "utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    try:
        import trl
        info["trl"] = trl.__version__
    except ImportError:
        info["trl"] = None
    return info


def interleaved(variants: dict[str, Callable[[], float | None]], repeats: int,
                clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Run the variants round-robin ``repeats`` times; each returns its own measure or None (= ``clock`` time)."""
    out: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(repeats):
        names = list(variants) if r % 2 == 0 else list(variants)[::-1]  # alternate order: no position bias
        for name in names:
            t0 = clock()
            value = variants[name]()
            out[name].append(clock() - t0 if value is None else value)
    return out


class one_thread:
    """Context: torch on one thread, so process CPU time measures the work even on a busy machine."""

    def __enter__(self):
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.threads)


def median(xs: list[float]) -> float:
    """Median of a non-empty list."""
    return float(statistics.median(xs))


def held_examples(make, n: int = 32) -> list:
    """``n`` held-out examples of a copy task, from a seed no training stream uses."""
    import numpy as np

    rng = np.random.default_rng(12345)
    return [make(rng) for _ in range(n)]


def result(name: str, ours: float, baseline: float, goal: str, unit: str, met: bool, **details) -> dict:
    """One benchmark line: ours vs baseline, their ratio, the goal and whether it is met."""
    return {"name": name, "ours": round(ours, 6), "baseline": round(baseline, 6),
            "ratio": round(ours / baseline, 4) if baseline else None, "goal": goal, "unit": unit,
            "met": bool(met), "details": details}
