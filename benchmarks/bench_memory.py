"""Memory: measured peak RSS of plain vs chunked loss on a long pack, and an analytic GPU
estimate per method for a 64k pack in the paper profile (Llama-2-7B, ChatGLM3-6B, 8 GPUs, ZeRO-3 with
optimizer CPU offload, gradient checkpointing, bf16).

Measured: each variant runs in a fresh subprocess (peak RSS is a per-process high-water mark):
tiny Llama with the packed attention, one forward + backward of a pack of 2,048-token sequences
through the trainer's loss path (``loss.forward_loss_sums``); ``plain`` is ``ce_chunk_size`` 0
(fp32 logits [T, V]), ``chunked`` is ``ce_chunk_size`` 4096 (same value and gradients, no [T, V]
tensor; the setting of the profiles).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

from common import median, result

from longalign.loss import CE_CHUNK_SIZE

GIB = 2**30
# name: (params, layers, hidden, ffn, heads, kv_heads, vocab)
MODELS = {"Llama-2-7B": (6.74e9, 32, 4096, 11008, 32, 32, 32000),
          "ChatGLM3-6B": (6.24e9, 28, 4096, 13696, 32, 2, 65024)}


def _measure(variant: str, tokens: int) -> dict:
    """Run in a child: peak RSS increase (MiB) over the steady state before one fwd+bwd."""
    import psutil
    import torch
    from workload import features, models

    from longalign.collate import PackingCollator
    from longalign.loss import forward_loss_sums, objective

    torch.manual_seed(0)
    model = models(["ours"])["ours"]
    batch = PackingCollator()(features([2048] * (tokens // 2048)))
    chunk = 0 if variant == "plain" else CE_CHUNK_SIZE
    warm = PackingCollator()(features([64, 64]))  # first calls allocate thread pools and kernels: keep them out
    forward_loss_sums(model, warm, "packing_weighted", chunk, varlen=True)[0]["seq"].backward()
    model.zero_grad(set_to_none=True)
    base = psutil.Process().memory_info().rss
    sums, _ = forward_loss_sums(model, batch, "packing_weighted", chunk, varlen=True)
    loss = objective("packing_weighted", sums, {"sequences": batch["num_sequences"]}, 1)
    loss.backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak_over_base_mib": (peak - base) / 2**20, "loss": float(loss)}


def measured(tokens: int, repeats: int) -> dict:
    """Median peak-RSS increase per variant, variants alternated in fresh processes."""
    here = Path(__file__).resolve().parent
    runs: dict[str, list] = {"plain": [], "chunked": []}
    for r in range(repeats):
        for v in (("plain", "chunked") if r % 2 == 0 else ("chunked", "plain")):
            code = f"import sys; sys.path.insert(0, {str(here)!r}); import bench_memory as m, json; " \
                   f"print(json.dumps(m._measure({v!r}, {tokens})))"
            # large blocks straight from mmap and back on free: RSS then follows live tensors, not heap reuse
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "1048576", "MALLOC_TRIM_THRESHOLD_": "0"}
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
            runs[v].append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {v: {"peak_mib": median([x["peak_over_base_mib"] for x in rs]), "loss": rs[0]["loss"]}
            for v, rs in runs.items()}


def gpu_estimate(model: str, tokens: int = 65_536, world: int = 8, chunk: int = CE_CHUNK_SIZE) -> dict[str, dict]:
    """Analytic peak GPU memory (GiB) per method for one pack of ``tokens`` on ``world`` GPUs."""
    p, layers, d, ffn, heads, kv, vocab = MODELS[model]
    kvd = d * kv // heads
    states = 2 * p / world + 2 * p / world  # ZeRO-3 bf16 param shard + bf16 grad shard; Adam states on CPU
    gathered = 2 * 2 * (p / layers)  # the layer being computed plus one prefetched, bf16
    checkpoints = layers * tokens * d * 2  # gradient checkpointing keeps each layer's bf16 input
    # one layer recomputed in backward: norms, q, rope'd q/k, k/v, attention out, o-proj, MLP (gate, up, act, prod)
    layer_acts = tokens * 2 * (6 * d + 3 * kvd + 4 * ffn)
    logits_plain = tokens * vocab * (2 + 4 + 4)  # bf16 logits, fp32 upcast, fp32 grad
    # one chunk's fp32 logits + their grad, the fp32 head copy + its grad, fp32 grad of the hidden states
    logits_chunked = chunk * vocab * (4 + 4) + 2 * vocab * d * 4 + tokens * d * 4
    base = states + gathered + checkpoints + layer_acts
    attn = {"fa2_varlen": heads * tokens * 4,  # only the softmax log-sum-exp per row
            "sdpa_dense_block_mask": tokens * tokens * 1 + heads * tokens * 4,  # bool [T, T] mask (mem-efficient kernel)
            "eager_dense": 2 * heads * tokens * tokens * 2}  # scores + probabilities [h, T, T] bf16
    methods = {"HF sdpa + dense mask, plain CE": base + attn["sdpa_dense_block_mask"] + logits_plain,
               "FA2 varlen, plain CE": base + attn["fa2_varlen"] + logits_plain,
               "FA2 varlen, chunked CE (ours)": base + attn["fa2_varlen"] + logits_chunked,
               "eager attention, plain CE": base + attn["eager_dense"] + logits_plain}
    parts = {"zero3_states": states, "gathered_params": gathered, "checkpoints": checkpoints,
             "recomputed_layer": layer_acts, "logits_plain": logits_plain, "logits_chunked": logits_chunked}
    gib = lambda x: round(x / GIB, 2)  # noqa: E731
    return {"methods_gib": {k: gib(v) for k, v in methods.items()}, "parts_gib": {k: gib(v) for k, v in parts.items()}}


def run(quick: bool) -> dict:
    """Measured peak RSS (plain vs chunked) at a long pack; analytic 64k GPU memory per method."""
    tokens, repeats = (16_384, 1) if quick else (32_768, 3)
    m = measured(tokens, repeats)
    est = {name: gpu_estimate(name) for name in MODELS}
    ours, plain = m["chunked"]["peak_mib"], m["plain"]["peak_mib"]
    return result("memory_peak_rss", ours, plain, "chunked CE peak < plain; same loss; 64k GPU estimate reported",
                  "MiB over base", ours < plain and abs(m["chunked"]["loss"] - m["plain"]["loss"]) < 1e-4,
                  tokens=tokens, measured=m, logits_fp32_mib=tokens * 8192 * 4 / 2**20, gpu_64k_estimate=est,
                  gpu_measured=None)
