"""Packing fill on the LongAlign-like mix (C = 64k) and time to pack 1M lengths."""

from __future__ import annotations

import time

import numpy as np
from common import interleaved, median, result

from longalign import packing, simulate

CAPACITY = 65_536


def _fill(lengths: np.ndarray, strategy: str, clock=time.perf_counter) -> tuple[float, float]:
    t0 = clock()
    packs = packing.pack(lengths, CAPACITY, strategy=strategy)
    return len(packs) / packing.lower_bound(lengths, CAPACITY), clock() - t0


def run(quick: bool) -> dict:
    """Fill ratios (packs / ceil(ΣL/C)) of BFD, TRL-style chunked BFD and next-fit; seconds per 1M lengths."""
    mix = np.minimum(simulate.longalign_length_mix(seed=0), CAPACITY)
    fills = {s: _fill(mix, s) for s in packing.STRATEGIES}
    big = np.minimum(simulate.longalign_length_mix(n_long=100_000, n_short=900_000, seed=1), CAPACITY)
    repeats = 3 if quick else 7
    variants = {f"{s}_{c}": (lambda s=s, c=c: _fill(big, s, clock)[1])
                for s in ("bfd", "next_fit") for c, clock in (("wall", time.perf_counter), ("cpu", time.process_time))}
    times = interleaved(variants, repeats)
    # CPU time is what the packer costs; wall time also counts other jobs sharing this 2-core machine
    bfd_1m = median(times["bfd_cpu"])
    ours = fills["bfd"][0]
    return result(
        "packing_fill", ours, fills["next_fit"][0], "<= 1.001 x ceil(sum L / C); pack 1M lengths <= 2 s",
        "packs / lower bound", ours <= 1.001 and bfd_1m <= 2.0,
        n_sequences=int(mix.size), lower_bound=packing.lower_bound(mix, CAPACITY),
        fill_bfd=fills["bfd"][0], fill_bfd_chunked_1000=fills["bfd_chunked"][0], fill_next_fit=fills["next_fit"][0],
        fill_equal_counts=fills["equal_counts"][0],  # the samplers' default: equal sequences per pack
        seconds_100k={s: round(v[1], 3) for s, v in fills.items()},
        seconds_1M_median={k: round(median(v), 3) for k, v in times.items()},
        fill_1M_bfd=_fill(big, "bfd")[0], repeats=repeats,
    )
