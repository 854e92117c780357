"""The CPU training workload shared by the throughput, attention and memory benchmarks.

A tiny Llama (hidden 256, 4 layers, vocab 8k) and long-tail sequences up to 2k tokens (lognormal,
median 120, sigma 1.3: random batches of 8 are ~71 % padding). Token ids are random: speed does not
depend on content. Every sequence is a full training target.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

import longalign.attention as attn
from longalign.models import tiny_llama, tiny_llama_config

VOCAB, MAX_LEN = 8192, 2048


def long_tail_lengths(n: int, seed: int = 0) -> np.ndarray:
    """Long-tail lengths in [16, 2048] (lognormal, median 120, sigma 1.3)."""
    rng = np.random.default_rng(seed)
    return np.clip(np.exp(rng.normal(np.log(120), 1.3, n)).round(), 16, MAX_LEN).astype(np.int64)


def features(lengths, seed: int = 0) -> list[dict]:
    """``{"input_ids", "labels"}`` features of the given lengths (labels = inputs: all targets)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(0, VOCAB, (int(n),), generator=g).tolist()
        out.append({"input_ids": ids, "labels": list(ids)})
    return out


def models(names: list[str], seed: int = 0) -> dict[str, torch.nn.Module]:
    """One identically initialised tiny Llama per name; ``ours*`` names get the packed attention."""
    base = tiny_llama(tiny_llama_config(VOCAB), seed=seed, attn_implementation="sdpa")
    out = {}
    for name in names:
        m = copy.deepcopy(base)
        if name.startswith("ours"):
            attn.enable_packed_attention(m)
        out[name] = m.train()
    return out


def packed_inputs(lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    """One packed row of random tokens: input_ids, position_ids, cu_seq_lens_q/k."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (1, int(sum(lengths))), generator=g)
    pos = torch.cat([torch.arange(int(n)) for n in lengths])[None]
    cu = torch.tensor([0, *np.cumsum(lengths).tolist()], dtype=torch.int32)
    return {"input_ids": ids, "position_ids": pos, "cu_seq_lens_q": cu, "cu_seq_lens_k": cu}
