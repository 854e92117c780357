"""Multi-rank idle-time simulator for the training methods of LongAlign (paper Fig. 3 and Fig. 5).

Each sequence of length L costs ``a*L + b*L**2`` (linear layers + attention). A pack costs the sum
over its sequences, because attention is computed per segment (FlashAttention varlen, or
``longalign.attention`` on CPU); a padded batch costs ``batch * (a*Lmax + b*Lmax**2)``. Ranks are
synchronised every micro-step (ZeRO-3 gathers parameters layer by layer, so no rank runs ahead):
a micro-step lasts as long as its slowest rank and every other rank idles for the difference.

Methods: ``naive`` (shuffled, padded batches), ``sorted`` (sorted batching: each micro-step takes
``world_size*batch`` neighbouring sequences in length order, micro-steps shuffled), ``packing`` (best-fit
packs, optionally balanced across ranks by cost), ``packing_next_fit_in_order`` (the official
repo: next-fit packs in data order, dealt round-robin).

API: ``simulate_method(lengths, method, world_size=8, *, per_device_batch, grad_accum, max_len, a, b,
seed, pack_strategy, balance, step_overhead) -> SimResult`` (``total_time``, ``busy`` per rank,
``idle_fraction``, ``steps``, ``micro_steps``, ``as_dict()``); ``compare_methods``;
``longalign_length_mix(n_long, n_short, seed)``; ``paper_fig5_prediction(lengths, b=...)`` (relative
time, naive = 1) beside ``paper_fig5_relative()`` (the paper's measured Fig. 5);
``attention_cost_ratio(n_layers, hidden, n_params)`` gives a model's own ``b/a``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

METHODS = ("naive", "sorted", "packing", "packing_next_fit_in_order")

# Fig. 5 of the paper: training hours on 8xA800 (LongAlign-10k + ShareGPT, 2 epochs).
PAPER_FIG5_HOURS = {
    "ChatGLM3-6B-64k": {"naive": 45.4, "packing": 20.5, "sorted": 19.1},
    "Llama-2-7B-64k": {"naive": 41.2, "packing": 23.4, "sorted": 23.3},
}


@dataclass
class SimResult:
    """Outcome of one simulated epoch: wall time, per-rank busy time and the idle share."""

    method: str
    world_size: int
    total_time: float
    busy: list[float]
    idle_fraction: float
    steps: int
    micro_steps: int
    real_tokens: int
    computed_tokens: int  # including padding
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """Plain dict (JSON-ready) without the per-rank list."""
        out = asdict(self)
        out["busy_max"], out["busy_min"] = max(self.busy), min(self.busy)
        out.pop("busy")
        return out


def seq_cost(lengths, a: float = 1.0, b: float = 1 / 4096) -> np.ndarray:
    """Cost ``a*L + b*L^2`` of each sequence run on its own."""
    lengths = np.asarray(lengths, dtype=np.float64)
    return a * lengths + b * lengths * lengths


def padded_batch_cost(lengths, a: float = 1.0, b: float = 1 / 4096) -> float:
    """Cost of one padded batch: every row is padded to the longest one."""
    lengths = np.asarray(lengths)
    return float(len(lengths) * seq_cost(lengths.max(), a, b)) if len(lengths) else 0.0


def schedule_time(micro_costs: np.ndarray) -> tuple[float, np.ndarray, float]:
    """(total time, busy per rank, idle fraction) of a ``[micro_steps, world_size]`` cost table."""
    micro_costs = np.asarray(micro_costs, dtype=np.float64)
    if micro_costs.size == 0:
        return 0.0, np.zeros(micro_costs.shape[-1] if micro_costs.ndim == 2 else 0), 0.0
    step_time = micro_costs.max(axis=1)
    total = float(step_time.sum())
    busy = micro_costs.sum(axis=0)
    idle = float((step_time[:, None] - micro_costs).sum())
    return total, busy, idle / (total * micro_costs.shape[1]) if total > 0 else 0.0


def longalign_length_mix(n_long: int = 10_000, n_short: int = 90_000, seed: int = 0,
                         long_range: tuple[int, int] = (8_192, 65_536),
                         short_median: float = 500.0, short_sigma: float = 1.0) -> np.ndarray:
    """LongAlign-10k + ShareGPT-like lengths: uniform long sequences plus lognormal short chat, shuffled."""
    rng = np.random.default_rng(seed)
    long = rng.integers(long_range[0], long_range[1] + 1, size=n_long)
    short = np.exp(rng.normal(np.log(short_median), short_sigma, size=n_short)).round()
    short = np.clip(short, 16, long_range[0] - 1).astype(np.int64)
    lengths = np.concatenate([long, short])
    rng.shuffle(lengths)
    return lengths.astype(np.int64)


def _check(lengths: np.ndarray, max_len: int) -> np.ndarray:
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.ndim != 1 or (lengths <= 0).any():
        raise ValueError("lengths must be a 1-D array of positive integers")
    return np.minimum(lengths, max_len)  # the paper truncates anything longer than the window


def _deal(units_costs: list[float], world_size: int, per_rank: int) -> np.ndarray:
    """Round-robin: consecutive ``world_size*per_rank`` units form one micro-step, rank r gets every r-th."""
    per_micro = world_size * per_rank
    n = -(-len(units_costs) // per_micro) * per_micro
    padded = np.zeros(n)
    padded[: len(units_costs)] = units_costs
    # unit j of a micro-step goes to rank j % world_size; a rank's units run back to back
    return padded.reshape(-1, per_rank, world_size).sum(axis=1)


def _naive_micro_costs(lengths, world_size, per_device_batch, a, b, rng) -> tuple[np.ndarray, int]:
    order = rng.permutation(len(lengths))
    batches = [lengths[order[i:i + per_device_batch]] for i in range(0, len(order), per_device_batch)]
    costs = [padded_batch_cost(x, a, b) for x in batches]
    return _deal(costs, world_size, 1), sum(len(x) * int(x.max()) for x in batches)


def _sorted_micro_costs(lengths, world_size, per_device_batch, a, b, rng) -> tuple[np.ndarray, int]:
    # neighbours in length order share a micro-step; the order of micro-steps is shuffled (no effect on time)
    ordered = np.sort(lengths)[::-1]
    batches = [ordered[i:i + per_device_batch] for i in range(0, len(ordered), per_device_batch)]
    groups = [batches[i:i + world_size] for i in range(0, len(batches), world_size)]
    rng.shuffle(groups)
    costs = [padded_batch_cost(x, a, b) for g in groups for x in g]
    table = np.zeros((len(groups), world_size))
    flat = iter(costs)
    for i, g in enumerate(groups):
        for r in range(len(g)):
            table[i, r] = next(flat)
    return table, sum(len(x) * int(x.max()) for x in batches)


def _packs(lengths: np.ndarray, max_len: int, strategy: str, rng) -> list[np.ndarray]:
    from longalign.packing import pack  # the one packing implementation (core module)

    order = rng.permutation(len(lengths))  # data order is shuffled before packing, as a sampler would
    return [order[np.asarray(p, dtype=np.int64)] for p in pack(lengths[order], max_len, strategy=strategy)]


def _packing_micro_costs(lengths, world_size, per_device_batch, a, b, rng, max_len, strategy,
                         balance, seed) -> tuple[np.ndarray, int]:
    from longalign.packing import pack_cost, schedule_packs

    packs = _packs(lengths, max_len, strategy, rng)
    costs = np.array([pack_cost(lengths[p], a, b) for p in packs])
    if not balance:  # packs in random order (BFD opens them longest first, which would pre-sort them)
        order = rng.permutation(len(packs)) if strategy != "next_fit" else np.arange(len(packs))
        return _deal(list(costs[order]), world_size, per_device_batch), len(packs)
    # cost-sorted micro-steps (shuffled), each split over ranks by LPT + swap refinement
    steps = schedule_packs([p.tolist() for p in packs], lengths, world_size, per_device_batch, a, b, seed)
    return np.array([[costs[r].sum() if len(r) else 0.0 for r in step] for step in steps]), len(packs)


def simulate_method(lengths, method: str, world_size: int = 8, *, per_device_batch: int = 1,
                    grad_accum: int = 1, max_len: int = 65_536, a: float = 1.0, b: float = 1 / 4096,
                    seed: int = 0, pack_strategy: str = "bfd", balance: bool = True,
                    step_overhead: float = 0.0) -> SimResult:
    """Simulate one epoch of ``method`` on ``world_size`` synchronised ranks.

    ``step_overhead`` is a fixed cost per optimizer step on every rank (e.g. the CPU-offloaded
    Adam update under ZeRO-3), in the same units as ``a*L``; it adds busy time, never idle time.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    lengths = _check(lengths, max_len)
    rng = np.random.default_rng(seed)
    extra = {}
    if method == "naive":
        table, computed = _naive_micro_costs(lengths, world_size, per_device_batch, a, b, rng)
    elif method == "sorted":
        table, computed = _sorted_micro_costs(lengths, world_size, per_device_batch, a, b, rng)
    else:
        strategy, bal = (pack_strategy, balance) if method == "packing" else ("next_fit", False)
        if method == "packing_next_fit_in_order":
            rng = _IdentityRng()
        table, n_packs = _packing_micro_costs(lengths, world_size, per_device_batch, a, b, rng,
                                              max_len, strategy, bal, seed)
        computed = int(lengths.sum())  # packs carry no padding: attention and tokens are per segment
        extra = {"packs": n_packs, "pack_strategy": strategy, "balanced": bal}
    total, busy, idle = schedule_time(table)
    micro = len(table)
    steps = -(-micro // grad_accum)
    idle_time = idle * total * world_size
    total, busy = total + steps * step_overhead, busy + steps * step_overhead
    idle = idle_time / (total * world_size) if total > 0 else 0.0
    return SimResult(method, world_size, total, busy.tolist(), idle, steps, micro,
                     int(lengths.sum()), int(computed), extra)


class _IdentityRng:
    """Keeps the data order (the official repo packs the dataset in its stored order)."""

    @staticmethod
    def permutation(n: int) -> np.ndarray:
        return np.arange(n)


def compare_methods(lengths, world_size: int = 8, *, methods=METHODS, **kwargs) -> dict[str, SimResult]:
    """Simulate every method on the same lengths."""
    return {m: simulate_method(lengths, m, world_size, **kwargs) for m in methods}


def paper_fig5_prediction(lengths=None, *, a: float = 1.0, b: float = 1 / 4096, seed: int = 0,
                          world_size: int = 8, max_len: int = 65_536,
                          step_overhead: float = 0.0) -> dict[str, float]:
    """Relative training time per method at the paper's settings (naive = 1.0).

    Paper settings (Sec. 4.1): packing with 1 pack per GPU per step; naive and sorted batching with
    batch 1 per GPU and gradient accumulation 12 (global batch 96 either way).
    """
    lengths = longalign_length_mix(seed=seed) if lengths is None else lengths
    common = dict(world_size=world_size, max_len=max_len, a=a, b=b, seed=seed, step_overhead=step_overhead)
    naive = simulate_method(lengths, "naive", per_device_batch=1, grad_accum=12, **common)
    sort = simulate_method(lengths, "sorted", per_device_batch=1, grad_accum=12, **common)
    packed = simulate_method(lengths, "packing", per_device_batch=1, grad_accum=1, **common)
    nf = simulate_method(lengths, "packing_next_fit_in_order", per_device_batch=1, grad_accum=1, **common)
    return {m: r.total_time / naive.total_time for m, r in
            {"naive": naive, "sorted": sort, "packing": packed, "packing_next_fit_in_order": nf}.items()}


def attention_cost_ratio(n_layers: int, hidden: int, n_params: float) -> float:
    """``b/a`` of a transformer: causal attention ``6*n_layers*hidden*L^2/2`` flops vs ``6*params*L``."""
    return n_layers * hidden / (2 * n_params)


def paper_fig5_relative() -> dict[str, dict[str, float]]:
    """The paper's measured Fig. 5 times relative to naive batching, per model."""
    return {model: {m: h / hours["naive"] for m, h in hours.items()} for model, hours in PAPER_FIG5_HOURS.items()}
