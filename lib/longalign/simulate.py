"""Multi-rank idle-time simulator over the real samplers' schedules, epoch weight shares, Fig. 5 calibration.

Each sequence of length L costs ``a*L + b*L**2`` (linear layers + attention); a pack costs the sum
over its sequences, because attention is computed per segment, and a padded micro-batch costs
``rows * (a*Lmax + b*Lmax**2)``. Ranks are synchronised every micro-step (ZeRO-3 gathers parameters
layer by layer), so a micro-step lasts as long as its slowest rank and the others idle. The
schedules costed are the ``epoch_plan`` of the samplers in ``longalign.batching``, so what is
simulated is what is trained; the paper's measured Fig. 5 and documented hardware overheads sit
beside the predictions for calibration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from longalign import batching, packing, weighting

METHODS = ("naive", "sorted", "packing", "packing_next_fit_in_order")

# Fig. 5 of the paper: training hours on 8xA800 (LongAlign-10k + ShareGPT, 2 epochs).
PAPER_FIG5_HOURS = {
    "ChatGLM3-6B-64k": {"naive": 45.4, "packing": 20.5, "sorted": 19.1},
    "Llama-2-7B-64k": {"naive": 41.2, "packing": 23.4, "sorted": 23.3},
}
# Paper settings (Sec. 4.1): packing 1 pack per GPU, GA 1; naive / sorted 1 sequence per GPU, GA 12.
PAPER_SETTINGS = {"naive": (1, 12), "sorted": (1, 12), "packing": (1, 1), "packing_next_fit_in_order": (1, 1)}

# Documented figures behind ``paper_overheads`` (8xA800 80G, DeepSpeed ZeRO-3 + CPU offload of
# optimizer and parameters, bf16, gradient checkpointing). Sources: NVIDIA A800 datasheet (312
# TFLOPS dense bf16, NVLink 400 GB/s = 200 GB/s per direction), PCIe 4.0 x16 (~25 GB/s usable),
# DeepSpeed ZeRO-Offload (CPU-Adam ~1e9 parameters/s per rank on a many-core host; a 3B model's
# whole step on 2 A100s takes ~2.4 s, DeepSpeed PR #7474). MFU 0.4 is an assumption.
A800 = {"peak_flops": 312e12, "mfu": 0.4, "nvlink_Bps": 200e9, "pcie_Bps": 25e9, "cpu_adam_params_per_s": 1e9}
PAPER_MODELS = {"Llama-2-7B-64k": {"n_params": 6.7e9, "n_layers": 32, "hidden": 4096},
                "ChatGLM3-6B-64k": {"n_params": 6.2e9, "n_layers": 28, "hidden": 4096}}


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


def seq_cost(lengths, a: float = 1.0, b: float = 1 / 4096) -> np.ndarray:
    """Cost ``a*L + b*L^2`` of each sequence run on its own."""
    lengths = np.asarray(lengths, dtype=np.float64)
    return a * lengths + b * lengths * lengths


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


def _check(lengths, max_len: int) -> np.ndarray:
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.ndim != 1 or (lengths <= 0).any():
        raise ValueError("lengths must be a 1-D array of positive integers")
    return np.minimum(lengths, max_len)  # the paper truncates anything longer than the window


def method_sampler(lengths, method: str, world_size: int = 8, *, per_device_batch: int = 1,
                   grad_accum: int = 1, max_len: int = 65_536, a: float = 1.0, b: float = 1 / 4096,
                   seed: int = 0, pack_strategy: str = "equal_counts", balance: bool = True,
                   sorted_grouping: str = "micro_step"):
    """The sampler ``method`` trains with (rank 0's instance; its ``epoch_plan`` covers every rank).

    ``naive``: shuffled, padded. ``sorted``: sorted batching (``sorted_grouping``, official
    micro-step groups by default). ``packing``: packs of ``pack_strategy``, attention-cost-balanced
    steps (``balance``; else random steps). ``packing_next_fit_in_order``: the official repo,
    next-fit packs in data order, dealt in order.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    common = dict(world_size=world_size, rank=0, seed=seed, grad_accum=grad_accum)
    if method == "naive":
        return batching.RandomBatchSampler(lengths, per_device_batch, **common)
    if method == "sorted":
        return batching.SortedBatchSampler(lengths, per_device_batch, grouping=sorted_grouping, **common)
    if method == "packing":
        return batching.PackedBatchSampler(lengths, max_len, packs_per_device=per_device_batch, strategy=pack_strategy,
                                           a=a, b=b, order="cost" if balance else "random", **common)
    return batching.PackedBatchSampler(lengths, max_len, packs_per_device=per_device_batch, strategy="next_fit",
                                       a=a, b=b, order="in_order", **common)


def plan_costs(plan, lengths, packed: bool, a: float = 1.0, b: float = 1 / 4096) -> tuple[np.ndarray, int]:
    """``[micro_steps, world_size]`` cost table of an ``epoch_plan`` and the tokens it computes (padding included)."""
    cost, length = seq_cost(lengths, a, b).tolist(), np.asarray(lengths).tolist()  # plain lists: units are tiny
    rows, computed = [], 0
    for micro in (micro for step in plan for micro in step):
        row = []
        for units in micro:
            idx = [i for u in units for i in u]
            if packed or not idx:
                row.append(sum(cost[i] for i in idx))
                computed += sum(length[i] for i in idx)
            else:
                longest = max(idx, key=length.__getitem__)
                row.append(len(idx) * cost[longest])
                computed += len(idx) * length[longest]
        rows.append(row)
    return np.array(rows, dtype=np.float64).reshape(len(rows), -1), computed


def simulate_method(lengths, method: str, world_size: int = 8, *, per_device_batch: int = 1,
                    grad_accum: int = 1, max_len: int = 65_536, a: float = 1.0, b: float = 1 / 4096,
                    seed: int = 0, pack_strategy: str = "equal_counts", balance: bool = True,
                    sorted_grouping: str = "micro_step", step_overhead: float = 0.0,
                    micro_overhead: float = 0.0) -> SimResult:
    """Simulate one epoch of ``method``'s real sampler on ``world_size`` synchronised ranks.

    ``step_overhead`` / ``micro_overhead``: fixed cost per optimizer step (the CPU-offloaded Adam
    update) / per micro-step (ZeRO-3 parameter gathers, gradient reduce-scatter and offload traffic
    not hidden behind compute) on every rank, in the same units as ``a*L``; they add busy time,
    never idle time.
    """
    lengths = _check(lengths, max_len)
    sampler = method_sampler(lengths, method, world_size, per_device_batch=per_device_batch, grad_accum=grad_accum,
                             max_len=max_len, a=a, b=b, seed=seed, pack_strategy=pack_strategy, balance=balance,
                             sorted_grouping=sorted_grouping)
    plan = sampler.epoch_plan(0)
    packed = isinstance(sampler, batching.PackedBatchSampler)
    table, computed = plan_costs(plan, lengths, packed, a, b)
    total, busy, idle = schedule_time(table)
    idle_time = idle * total * world_size
    fixed = len(plan) * step_overhead + len(table) * micro_overhead
    total, busy = total + fixed, busy + fixed
    extra = {"packs": len(sampler.packs), "pack_strategy": pack_strategy if method == "packing" else "next_fit",
             "balanced": balance and method == "packing"} if packed else {}
    return SimResult(method, world_size, total, busy.tolist(), idle_time / (total * world_size) if total > 0 else 0.0,
                     len(plan), len(table), int(lengths.sum()), int(computed), extra)


def paper_fig5_prediction(lengths=None, *, a: float = 1.0, b: float = 1 / 4096, seed: int = 0,
                          world_size: int = 8, max_len: int = 65_536, step_overhead: float = 0.0,
                          micro_overhead: float = 0.0) -> dict[str, float]:
    """Relative training time per method at the paper's settings (naive = 1.0).

    Paper settings (Sec. 4.1): packing with 1 pack per GPU per step; naive and sorted batching with
    batch 1 per GPU and gradient accumulation 12 (global batch 96 either way).
    """
    lengths = longalign_length_mix(seed=seed) if lengths is None else lengths
    common = dict(world_size=world_size, max_len=max_len, a=a, b=b, seed=seed, step_overhead=step_overhead,
                  micro_overhead=micro_overhead)
    times = {m: simulate_method(lengths, m, per_device_batch=pb, grad_accum=ga, **common).total_time
             for m, (pb, ga) in PAPER_SETTINGS.items()}
    return {m: t / times["naive"] for m, t in times.items()}


def attention_cost_ratio(n_layers: int, hidden: int, n_params: float) -> float:
    """``b/a`` of a transformer: causal attention ``6*n_layers*hidden*L^2/2`` flops vs ``6*params*L``."""
    return n_layers * hidden / (2 * n_params)


def paper_fig5_relative() -> dict[str, dict[str, float]]:
    """The paper's measured Fig. 5 times relative to naive batching, per model."""
    return {model: {m: h / hours["naive"] for m, h in hours.items()} for model, hours in PAPER_FIG5_HOURS.items()}


# ----------------------------------------------------------------------------- epoch weight shares

# name → (simulator method, sampler options, loss objective for longalign.weighting.epoch_weights)
SCHEDULES = {
    "naive": ("naive", {}, "sequence"),
    "sorted": ("sorted", {}, "sequence"),
    "sorted_whole_steps": ("sorted", {"sorted_grouping": "step"}, "sequence"),
    "packing": ("packing", {}, "pack"),
    "packing_weighted": ("packing", {}, "sequence"),
    "packing_weighted_bfd_cost_sorted": ("packing", {"pack_strategy": "bfd"}, "sequence"),
    "packing_weighted_bfd_random_steps": ("packing", {"pack_strategy": "bfd", "balance": False}, "sequence"),
    "packing_weighted_official_next_fit": ("packing_next_fit_in_order", {}, "sequence"),
}
SCHEDULE_LABELS = {
    "naive": "naive (random order)", "sorted": "sorted, official micro-step groups (default)",
    "sorted_whole_steps": "sorted, whole steps of neighbours (earlier)",
    "packing": "packing, Eq. 3 (equal-count packs)",
    "packing_weighted": "packing + weighting, equal-count packs, cost-sorted steps (default)",
    "packing_weighted_bfd_cost_sorted": "packing + weighting, BFD + cost-sorted steps (earlier default)",
    "packing_weighted_bfd_random_steps": "packing + weighting, BFD packs in random steps",
    "packing_weighted_official_next_fit": "packing + weighting, official next-fit in order",
}


def schedule_report(sampler, lengths, is_long, objective: str = "sequence", num_targets=None,
                    a: float = 1.0, b: float = 1 / 4096, epoch: int = 0) -> dict:
    """Long sequences' share of the epoch's loss weight, fill and simulated idle of one sampler's schedule."""
    lengths, is_long = np.asarray(lengths, dtype=np.int64), np.asarray(is_long, dtype=bool)
    plan = sampler.epoch_plan(epoch)
    packed = isinstance(sampler, batching.PackedBatchSampler)
    w = weighting.epoch_weights(plan, lengths, objective, num_targets)
    table, _ = plan_costs(plan, lengths, packed, a, b)
    share, data = weighting.weight_share(w, is_long), float(is_long.mean())
    used = w[w > 0]
    return {"long_share": share, "data_share": data, "ratio": share / data if data else float("nan"),
            "fill": len(sampler.packs) / packing.lower_bound(lengths, sampler.max_len) if packed else float("nan"),
            "idle": schedule_time(table)[2], "weight_max_over_min": float(used.max() / used.min()), "steps": len(plan)}


def weight_share_table(lengths, is_long, world_size: int = 8, *, max_len: int = 65_536,
                       settings: dict | None = None, a: float = 1.0, b: float = 1 / 4096, seed: int = 0,
                       num_targets=None, schedules=tuple(SCHEDULES)) -> pd.DataFrame:
    """One row per schedule (``SCHEDULES``): long-sequence weight share vs data share, fill, idle.

    ``settings``: method → (sequences or packs per device, gradient accumulation); default the paper's.
    A schedule the data cannot fill (e.g. fewer packs than ranks) is kept as a row whose ``skipped``
    column says why.
    """
    settings = {**PAPER_SETTINGS, **(settings or {})}
    lengths = _check(lengths, max_len)
    rows, samplers = [], {}
    for name in schedules:
        method, options, objective = SCHEDULES[name]
        pb, ga = settings[method]
        key = (method, tuple(sorted(options.items())))  # packing and packing_weighted share one schedule
        row = {"schedule": name, "description": SCHEDULE_LABELS[name], "skipped": ""}
        try:
            if key not in samplers:
                samplers[key] = method_sampler(lengths, method, world_size, per_device_batch=pb, grad_accum=ga,
                                               max_len=max_len, a=a, b=b, seed=seed, **options)
            row.update(schedule_report(samplers[key], lengths, is_long, objective, num_targets, a, b))
        except ValueError as err:  # too little data for this many ranks: report, do not fail the table
            row["skipped"] = str(err)
        rows.append(row)
    return pd.DataFrame(rows).set_index("schedule")


# ----------------------------------------------------------------------------- Fig. 5 calibration

def paper_overheads(model: str = "Llama-2-7B-64k", world_size: int = 8, hw: dict = A800) -> dict[str, float]:
    """Documented cost terms for the paper's setup, in seconds and in units of ``a`` (one token's linear cost).

    ``a_seconds`` = 8·params flops per token (forward, backward, checkpoint recompute) / (peak · MFU);
    ``micro_s`` = ZeRO-3 per micro-step traffic, none of it assumed hidden: bf16 parameter
    all-gathers for the forward and the recompute + backward and the gradient reduce-scatter over
    NVLink, plus the parameter shard fetched from and the gradient shard sent to CPU memory over PCIe;
    ``step_s`` = CPU-Adam over this rank's 1/world_size of the parameters.
    """
    m = PAPER_MODELS[model]
    n, ring = m["n_params"], (world_size - 1) / world_size
    a_s = 8 * n / (hw["peak_flops"] * hw["mfu"])
    micro_s = 3 * 2 * n * ring / hw["nvlink_Bps"] + 3 * 2 * n / world_size / hw["pcie_Bps"]
    step_s = n / world_size / hw["cpu_adam_params_per_s"]
    return {"a_seconds": a_s, "b": attention_cost_ratio(m["n_layers"], m["hidden"], n), "micro_s": micro_s,
            "step_s": step_s, "micro_overhead": micro_s / a_s, "step_overhead": step_s / a_s}


def _epoch_runs(lengths, b: float, world_size: int, seed: int) -> dict[str, SimResult]:
    """Compute-only simulated epoch per Fig. 5 method at the paper's settings."""
    return {m: simulate_method(lengths, m, world_size, per_device_batch=PAPER_SETTINGS[m][0],
                               grad_accum=PAPER_SETTINGS[m][1], b=b, seed=seed) for m in ("naive", "sorted", "packing")}


def _hours(runs: dict[str, SimResult], a_seconds: float, micro: float, step: float, epochs: int) -> dict[str, float]:
    """Hours per method for ``epochs`` epochs, with fixed costs per micro-step and per step (units of a)."""
    return {m: (r.total_time + r.micro_steps * micro + r.steps * step) * a_seconds * epochs / 3600
            for m, r in runs.items()}


def fig5_calibration(lengths=None, model: str = "Llama-2-7B-64k", world_size: int = 8, seed: int = 0,
                     epochs: int = 2) -> pd.DataFrame:
    """Simulated vs paper Fig. 5 (hours and time relative to naive) with and without documented overheads.

    Rows: compute only; + ``paper_overheads``; the paper's measurement; and the per-step overhead
    (column ``step_overhead_s``) that would make the simulated naive/packing ratio equal the
    paper's, for comparison with the documented one.
    """
    lengths = longalign_length_mix(seed=seed) if lengths is None else np.asarray(lengths)
    oh = paper_overheads(model, world_size)
    runs, a_s = _epoch_runs(lengths, oh["b"], world_size, seed), oh["a_seconds"]
    target = PAPER_FIG5_HOURS[model]["naive"] / PAPER_FIG5_HOURS[model]["packing"]
    base = {m: r.total_time + r.micro_steps * oh["micro_overhead"] for m, r in runs.items()}
    need = (base["naive"] - target * base["packing"]) / (target * runs["packing"].steps - runs["naive"].steps)
    rows = {"simulator, compute only": _hours(runs, a_s, 0.0, 0.0, epochs),
            "simulator + documented overheads": _hours(runs, a_s, oh["micro_overhead"], oh["step_overhead"], epochs),
            f"paper Fig. 5, {model}": dict(PAPER_FIG5_HOURS[model]),
            "simulator + overhead fitted to the paper's naive/packing": _hours(runs, a_s, oh["micro_overhead"], need, epochs)}
    out = pd.DataFrame(rows).T[["naive", "sorted", "packing"]].rename(columns=lambda c: f"{c}_hours")
    for m in ("sorted", "packing"):
        out[f"{m}_relative"] = out[f"{m}_hours"] / out["naive_hours"]
    out["naive_over_packing"] = out["naive_hours"] / out["packing_hours"]
    out["step_overhead_s"] = [0.0, oh["step_s"], float("nan"), need * a_s]
    return out


# ----------------------------------------------------------------------------- cost model fitted on this machine

@dataclass
class CostModel:
    """Seconds of one micro-step ``a + b·positions + c·attention`` plus fixed per-step costs.

    ``positions``: tokens computed, padding included; ``attention``: Σ L_i² over a pack's segments,
    B·W² for a padded ``[B, W]`` batch. ``step_s``: per optimizer step outside the micro-steps in one
    process (optimizer, data, logging); ``allreduce_s``: the gradient all-reduce added per step when
    more than one process trains.
    """

    a: float
    b: float
    c: float
    step_s: float = 0.0
    allreduce_s: float = 0.0
    n_points: int = 0
    cores: float = float("inf")  # ranks the machine runs at full speed at once (parallel_capacity); inf: every rank its own


    def micro_seconds(self, positions, attention) -> np.ndarray:
        """Predicted compute seconds of micro-steps with these positions and attention units."""
        return self.a + self.b * np.asarray(positions, dtype=np.float64) + self.c * np.asarray(attention, dtype=np.float64)

    def contended(self, work) -> np.ndarray:
        """Finish time of each rank of one micro-step whose ranks need ``work`` seconds each when running alone.

        While m ranks compute at once each runs ``max(1, m / cores)`` times slower (they share the
        machine); once a rank is done the others speed up. With ``cores`` >= ranks this is ``work``.
        """
        work = np.asarray(work, dtype=np.float64)
        order, finish = np.argsort(work), np.zeros(len(work))
        clock, done = 0.0, 0.0
        for k, rank in enumerate(order):  # ranks order[k:] are still computing
            clock += (work[rank] - done) * max(1.0, (len(work) - k) / self.cores)
            finish[rank], done = clock, work[rank]
        return finish


def micro_features(lengths, packed: bool) -> tuple[int, int]:
    """(positions, attention units) of one micro-batch of sequences, as ``train.micro_work`` logs them."""
    lengths = [int(n) for n in lengths]
    if packed:
        return sum(lengths), sum(n * n for n in lengths)
    width = max(lengths)
    return len(lengths) * width, len(lengths) * width * width


def _micro_points(rec: dict, skip: int) -> np.ndarray:
    """``[n, 3]`` rows (seconds, positions, attention) of every rank's micro-steps after ``skip`` steps."""
    rows = [np.stack([np.ravel(r["micro_compute_s"]), np.ravel(r["micro_positions"]), np.ravel(r["micro_attention"])], 1)
            for r in rec["log"][skip:]]
    return np.concatenate(rows) if rows else np.zeros((0, 3))


def fit_cost_model(run_records, comm_records=(), cores: float = float("inf"), skip: int = 1) -> CostModel:
    """Least-squares (non-negative) ``a, b, c`` and per-step ``step_s`` from single-process run records.

    Every micro-step after the first ``skip`` steps (warm-up) of every record is one point;
    ``step_s`` is the median per-step time outside the micro-steps. ``comm_records``
    (multi-process runs) give ``allreduce_s``, the median measured gradient all-reduce per step:
    a single process has none to measure; their compute times are not used. ``cores`` is carried
    into the model (measure it with :func:`parallel_capacity`).
    """
    from scipy.optimize import nnls  # the terms are costs: a negative fit would be noise, not physics

    singles = [r for r in run_records if r.get("world_size", 1) == 1]
    if not singles:
        raise ValueError("fit_cost_model needs single-process run records (world_size 1)")
    pts = np.concatenate([_micro_points(r, skip) for r in singles])
    if len(pts) < 3:
        raise ValueError(f"fit_cost_model needs at least 3 logged micro-steps, got {len(pts)}")
    scale = np.maximum(pts[:, 1:].max(axis=0), 1.0)  # columns of similar size keep nnls well conditioned
    design = np.column_stack([np.ones(len(pts)), pts[:, 1:] / scale])
    (a, b, c), _ = nnls(design, pts[:, 0])
    rest = [r["step_s"] - sum(r["compute_s"]) for rec in singles for r in rec["log"][skip:]]
    comm = [max(r["comm_s"]) for rec in comm_records for r in rec["log"][skip:]]
    return CostModel(float(a), float(b / scale[0]), float(c / scale[1]), float(np.median(rest)),
                     float(np.median(comm)) if comm else 0.0, len(pts), float(cores))


def _sampler_steps(sampler, grad_accum: int, steps: int) -> list[list[Any]]:
    """The first ``steps`` optimizer steps (lists of micro-batches) one rank's sampler yields, epoch by epoch.

    As HF Trainer: an epoch's micro-batches are cut into steps of ``grad_accum``; its last step may be shorter.
    """
    out, epoch = [], 0
    while len(out) < steps:
        sampler.set_epoch(epoch)
        batches = list(sampler)
        if not batches:
            raise ValueError("the sampler yields no micro-batch")
        out += [batches[k:k + grad_accum] for k in range(0, len(batches), grad_accum)]
        epoch += 1
    return out[:steps]


def replay_schedule(config: dict, lengths, world_size: int, steps: int) -> list[list[list[tuple[int, int]]]]:
    """Step → micro-step → rank → (positions, attention) of the run ``config`` (a run record's ``config``).

    Built from ``longalign.train.batch_sampler`` on every rank, the sampler the run trained with, so
    the schedule is the one executed (same seed, batch, grad_accum, world size and steps).
    """
    from longalign import train  # heavy (torch, transformers): only the replay needs it

    cfg = train.TrainConfig.from_dict(config)
    packed = cfg.method in train.PACKED_METHODS
    lengths = [int(n) for n in lengths]
    per_rank = [_sampler_steps(train.batch_sampler(lengths, cfg, world_size, r), cfg.grad_accum, steps)
                for r in range(world_size)]
    index = (lambda item: item[0]) if packed else (lambda item: item)  # packed samplers yield (index, pack_id)
    return [[[micro_features([lengths[index(i)] for i in per_rank[r][s][m]], packed) for r in range(world_size)]
             for m in range(len(per_rank[0][s]))] for s in range(steps)]


def logged_schedule(rec: dict) -> list[list[list[tuple[int, int]]]]:
    """Step → micro-step → rank → (positions, attention) a run record logged (``train.micro_work``)."""
    return [[[(int(p), int(q)) for p, q in zip(pos, att)] for pos, att in zip(np.transpose(r["micro_positions"]).tolist(),
                                                                              np.transpose(r["micro_attention"]).tolist())]
            for r in rec["log"]]


def predict_run(run, cost_model: CostModel, world_size: int | None = None, lengths=None, skip: int = 1) -> dict[str, float]:
    """Predicted seconds and idle share of a run's steps after the first ``skip`` (warm-up) ones.

    ``run``: a schedule (step → micro-step → rank → (positions, attention)) or a run record, replayed
    from its config and ``lengths`` (:func:`replay_schedule`; its logged schedule without them).
    Ranks meet after every micro-step (``sync_micro_steps``), so a micro-step lasts as long as its
    slowest rank (ranks computing at once share ``cost_model.cores``, :meth:`CostModel.contended`); each step adds ``step_s`` and, on several ranks, ``allreduce_s``. ``idle_fraction``
    = waiting share of rank time, as measured (wait / (wait + compute)).
    """
    if isinstance(run, dict):
        world_size = world_size or run["world_size"]
        run = replay_schedule(run["config"], lengths, world_size, run["steps"]) if lengths is not None \
            else logged_schedule(run)
    total, busy, idle, world = 0.0, 0.0, 0.0, 1
    for step in run[skip:]:
        for micro in step:
            cost = cost_model.contended(cost_model.micro_seconds(*np.asarray(micro, dtype=np.float64).T))
            world = len(cost)
            total, busy, idle = total + cost.max(), busy + cost.sum(), idle + (cost.max() - cost).sum()
        total += cost_model.step_s + (cost_model.allreduce_s if world > 1 else 0.0)
    return {"seconds": float(total), "idle_fraction": float(idle / (idle + busy)) if idle + busy > 0 else 0.0}


def measured_run(rec: dict, skip: int = 1) -> dict[str, float]:
    """Measured seconds (Σ ``step_s``) and waiting share of rank time of a run's steps after the first ``skip``."""
    rows = rec["log"][skip:]
    wait, busy = sum(sum(r["wait_s"]) for r in rows), sum(sum(r["compute_s"]) for r in rows)
    return {"seconds": float(sum(r["step_s"] for r in rows)), "idle_fraction": wait / (wait + busy) if wait + busy else 0.0}


def speed_record(multi_records, cost_model: CostModel, lengths, seed: int, skip: int = 1) -> dict:
    """The ``results/speed/w{world_size}.json`` record: per method measured vs predicted seconds and idle share.

    Each multi-process run's schedule is replayed from its config (:func:`predict_run`); the first
    ``skip`` steps (warm-up) are left out of both sides.
    """
    multi_records = list(multi_records)
    methods = {}
    for rec in multi_records:
        meas, sim = measured_run(rec, skip), predict_run(rec, cost_model, lengths=lengths, skip=skip)
        methods[rec["method"]] = {"measured_s": meas["seconds"], "measured_idle": meas["idle_fraction"],
                                  "simulated_s": sim["seconds"], "simulated_idle": sim["idle_fraction"]}
    return {"world_size": int(multi_records[0]["world_size"]) if multi_records else 0, "seed": int(seed), "methods": methods}


_PROBE = """
import sys, time, torch
torch.set_num_threads(1)
x, w = torch.randn(1024, 256), torch.randn(256, 1024)
start, n = time.perf_counter(), 0
while time.perf_counter() - start < {seconds}:
    (x @ w).sum(); n += 1
print(n / (time.perf_counter() - start))
"""


def _probe_rates(n: int, seconds: float) -> list[float]:
    """Single-threaded matmul rates of ``n`` probe processes run at the same time."""
    import subprocess
    import sys

    code = _PROBE.format(seconds=seconds)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(n)]
    return [float(p.communicate()[0]) for p in procs]


def parallel_capacity(world_size: int, seconds: float = 3.0) -> float:
    """How many single-threaded processes this machine runs at full speed at once, now (other load included).

    ``world_size`` x (rate of each of ``world_size`` concurrent probes / rate of one probe alone),
    capped at ``world_size``: 2.0 on two free cores, ~1.0 when two processes share one core's worth.
    """
    alone = _probe_rates(1, seconds)[0]
    together = float(np.mean(_probe_rates(world_size, seconds)))
    return min(float(world_size), world_size * together / alone)
