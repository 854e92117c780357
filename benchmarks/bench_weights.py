"""Data mixture over an epoch: long sequences' share of the epoch's loss weight.

Eq. 4 is exact per optimizer step, but each step divides by its own sequence count M, so sequence i
of step s weighs 1/M_s over the epoch (``longalign.weighting.epoch_weights``). On the LongAlign-like
mix (uniform 8k-64k long + lognormal chat, C = 64k, 8 ranks, paper batch settings) this compares the
share of that weight falling on the long sequences, per schedule, with their share of the data
(what naive batching gives), beside each schedule's fill (packs / ⌈ΣL/C⌉) and simulated idle.
Every schedule is the real sampler's (``longalign.simulate.weight_share_table``).
"""

from __future__ import annotations

import math

from common import result

from longalign import simulate

B = 1 / 4096


def run(quick: bool) -> dict:
    """Long-sequence weight share of the default ``packing_weighted`` schedule vs the data share."""
    n_long, n_short = (2_000, 18_000) if quick else (10_000, 90_000)
    mix = simulate.longalign_length_mix(n_long=n_long, n_short=n_short, seed=0)
    table = simulate.weight_share_table(mix, mix >= 8_192, b=B)
    ours = table.loc["packing_weighted"]
    details = {name: {k: _jsonable(v) for k, v in row.items() if k != "description"} for name, row in table.iterrows()}
    return result("long_weight_share", float(ours["long_share"]), float(ours["data_share"]),
                  "≤ 1.10", "share", abs(ours["ratio"] - 1) <= 0.10 and ours["fill"] <= 1.01,
                  sequences=int(mix.size), schedules=details)


def _jsonable(v):
    """Numbers rounded, NaN (no packs: no fill) as None, text as is."""
    if isinstance(v, str):
        return v
    return None if math.isnan(v) else round(float(v), 5)
