"""Attention waste: cost of a packed step relative to the same sequences run separately.

Packs of long-tail sequences (BFD to 2,048 tokens) on the tiny Llama; forward + backward timed for:
ours (per-segment attention), sdpa with the dense block mask transformers builds from
position_ids, the mask-free "wrapped" row (not isolated: reference only), and the sum of the
sequences run one by one with stock sdpa. Variants interleaved, medians over repeats; torch on one
thread, timed in process CPU time (this 2-core machine is shared: wall time measures the other jobs).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from common import interleaved, median, one_thread, result
from workload import MAX_LEN, long_tail_lengths, models, packed_inputs

from longalign import packing


def _fwd_bwd(model, **inputs) -> None:
    model(**inputs, use_cache=False).logits.float().logsumexp(-1).mean().backward()
    model.zero_grad(set_to_none=True)


def _variants(nets, lens: list[int]) -> dict:
    row = packed_inputs(lens)
    ids, pos = row["input_ids"], row["position_ids"]
    cu = {k: row[k] for k in ("cu_seq_lens_q", "cu_seq_lens_k")}
    starts = np.r_[0, np.cumsum(lens)[:-1]]
    return {
        "ours": lambda: _fwd_bwd(nets["ours"], input_ids=ids, position_ids=pos, **cu),
        "sdpa_block_mask": lambda: _fwd_bwd(nets["sdpa"], input_ids=ids, position_ids=pos),
        "wrapped_no_mask": lambda: _fwd_bwd(nets["sdpa"], input_ids=ids),
        "separate": lambda: _separately(nets["sdpa"], ids, starts, lens),
    }


def _separately(model, ids, starts, lens) -> None:
    for s, n in zip(starts, lens):
        _fwd_bwd(model, input_ids=ids[:, s:s + n])


def run(quick: bool) -> dict:
    """Σ median step time per variant over several packs, relative to separate runs."""
    n_packs, repeats = (1, 3) if quick else (4, 5)
    lengths = long_tail_lengths(400, seed=7)
    multi = [p for p in packing.pack(lengths, MAX_LEN, "bfd") if len(p) > 1]
    packs = [multi[k] for k in np.linspace(len(multi) // 4, len(multi) - 1, n_packs).astype(int)]
    nets = models(["ours", "sdpa"])
    totals: dict[str, float] = {}
    for p in packs:
        lens = [int(lengths[i]) for i in p]
        with one_thread():
            times = interleaved(_variants(nets, lens), repeats, time.process_time)
        for k, v in times.items():
            totals[k] = totals.get(k, 0.0) + median(v)
    ratio = {k: v / totals["separate"] for k, v in totals.items()}
    op = attention_op_ratios([[int(lengths[i]) for i in p] for p in packs], repeats)
    return result("attention_waste", ratio["ours"], ratio["sdpa_block_mask"],
                  "packed step <= 1.15 x separate runs (dense block mask ~1.7 x)", "x separate runs",
                  ratio["ours"] <= 1.15, ratios=ratio, seconds=totals, packs=len(packs),
                  sequences_per_pack=[len(p) for p in packs], repeats=repeats,
                  attention_op_only=op)


def attention_op_ratios(packs: list[list[int]], repeats: int, heads: int = 4, dim: int = 64) -> dict[str, float]:
    """The attention op alone (forward + backward, model shapes): each path's time / separate calls."""
    from longalign.attention import packed_attention_forward
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    class _Mod(torch.nn.Module):
        num_key_value_groups, is_causal = 1, True

    mod, totals = _Mod(), {}
    for lens in packs:
        q, k, v = (torch.randn(1, heads, sum(lens), dim, requires_grad=True) for _ in range(3))
        pos = packed_inputs(lens)["position_ids"]
        seg = pos[0] == 0
        block = (torch.cumsum(seg, 0)[:, None] == torch.cumsum(seg, 0)[None]) & torch.ones(
            len(seg), len(seg), dtype=torch.bool).tril()
        starts = np.r_[0, np.cumsum(lens)[:-1]]
        run_ = lambda f: (lambda: f()[0].sum().backward())  # noqa: E731
        variants = {
            "ours": run_(lambda: packed_attention_forward(mod, q, k, v, None, position_ids=pos)),
            "sdpa_block_mask": run_(lambda: sdpa_attention_forward(mod, q, k, v, block[None, None])),
            "separate": lambda: [run_(lambda s=s, n=n: sdpa_attention_forward(
                mod, q[:, :, s:s + n], k[:, :, s:s + n], v[:, :, s:s + n], None))() for s, n in zip(starts, lens)]
            and None,
        }
        with one_thread():
            timed = interleaved(variants, repeats, time.process_time)
        for name, ts in timed.items():
            totals[name] = totals.get(name, 0.0) + median(ts)
    return {name: t / totals["separate"] for name, t in totals.items()}
