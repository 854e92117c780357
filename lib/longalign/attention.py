"""Exact packed attention without the dense block mask: per-segment SDPA on CPU, FA2 varlen on CUDA.

A pack ``[1, T]`` holds several sequences; each must attend causally to itself only. Stock sdpa
isolates them with a dense ``T x T`` block mask, computing every cross-sequence block only to throw
it away. Here attention runs causal SDPA on each segment (bounds from ``cu_seq_lens_q`` or
position_ids restarting at 0), batching segments of equal length, so results equal separate runs
of each sequence. Importing the module registers ``ATTN_IMPLEMENTATION`` with transformers'
``AttentionInterface``; padded batches and generation fall back to stock sdpa, so one model serves
padded and packed batches.
"""

from __future__ import annotations

import importlib.util
from collections import defaultdict

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

ATTN_IMPLEMENTATION = "longalign_packed"
_HAS_FLASH_ATTN = importlib.util.find_spec("flash_attn") is not None


def segment_bounds(length: int, cu_seq_lens: torch.Tensor | None = None,
                   position_ids: torch.Tensor | None = None) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` of the sequences in a pack of ``length`` tokens."""
    if cu_seq_lens is not None:
        cuts = [int(x) for x in cu_seq_lens.tolist()]
    elif position_ids is not None:
        starts = torch.nonzero(position_ids.reshape(-1)[:length] == 0).reshape(-1).tolist()
        cuts = sorted(set([0] + starts)) + [length]
    else:
        cuts = [0, length]
    if cuts[0] != 0 or cuts[-1] != length or any(e <= s for s, e in zip(cuts, cuts[1:])):
        raise ValueError(f"segment boundaries {cuts[:8]}... do not tile a pack of {length} tokens")
    return list(zip(cuts, cuts[1:]))


def _segment_attention(query, key, value, bounds, scaling, dropout) -> torch.Tensor:
    """Causal SDPA inside each segment of one row; equal-length segments share one batched call."""
    by_len = defaultdict(list)
    for i, (s, e) in enumerate(bounds):
        by_len[e - s].append(i)
    pieces: list[torch.Tensor | None] = [None] * len(bounds)
    for seg_len, ids in by_len.items():
        if len(ids) == 1:
            s, e = bounds[ids[0]]
            pieces[ids[0]] = F.scaled_dot_product_attention(
                query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], dropout_p=dropout, scale=scaling, is_causal=True)
            continue
        # gather the equal-length segments into a batch: [n, heads, seg_len, dim]
        index = torch.tensor([bounds[i][0] for i in ids], device=query.device)[:, None] + torch.arange(
            seg_len, device=query.device)
        q, k, v = (x[0][:, index].transpose(0, 1) for x in (query, key, value))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling, is_causal=True)
        for j, i in enumerate(ids):
            pieces[i] = out[j:j + 1]
    return torch.cat(pieces, dim=2)


def packed_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, dropout: float = 0.0,
                             scaling: float | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """AttentionInterface function: exact per-sequence causal attention for packed rows.

    On CUDA with ``flash_attn`` installed it delegates to FA2 (``flash_attn_varlen_func`` with the
    pack's cu_seq_lens, as the paper). With an ``attention_mask`` (padded batches) or a cache (query
    shorter than key) it runs stock sdpa, which is exact there.
    """
    if query.is_cuda and _HAS_FLASH_ATTN and attention_mask is None:
        return _flash_varlen(query, key, value, dropout, scaling, kwargs), None
    # padded batches (4D mask), decoding with a cache (q shorter than k): stock sdpa is exact there
    if attention_mask is not None or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    rows = _row_bounds(query, kwargs)
    if all(len(b) == 1 for b in rows):  # nothing packed: one causal call is the fastest path
        return sdpa_attention_forward(module, query, key, value, None, dropout=dropout, scaling=scaling, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    out = torch.cat([_segment_attention(query[r:r + 1], key[r:r + 1], value[r:r + 1], bounds, scaling, dropout)
                     for r, bounds in enumerate(rows)], dim=0)
    return out.transpose(1, 2).contiguous(), None


def _flash_varlen(query, key, value, dropout, scaling, kwargs) -> torch.Tensor:
    """FA2 (``flash_attn_varlen_func`` via transformers) with the pack's cu_seq_lens / position_ids."""
    from transformers.modeling_flash_attention_utils import _flash_attention_forward

    # FA takes [batch, seq, heads, dim] in half precision; fp32 inputs run in bf16 as transformers does
    return _flash_attention_forward(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), None, query_length=query.shape[2],
        is_causal=True, dropout=dropout, softmax_scale=scaling, target_dtype=torch.bfloat16,
        attn_implementation="flash_attention_2", **kwargs).to(query.dtype)


def _row_bounds(query: torch.Tensor, kwargs: dict) -> list[list[tuple[int, int]]]:
    """Segment bounds for each row of the batch (cu_seq_lens describe a single flattened row)."""
    batch, length = query.shape[0], query.shape[2]
    cu = kwargs.get("cu_seq_lens_q")
    if cu is not None:
        if batch != 1:
            raise ValueError(f"cu_seq_lens_q describes one packed row, got a batch of {batch}")
        return [segment_bounds(length, cu_seq_lens=cu)]
    pos = kwargs.get("position_ids")
    if pos is None:
        return [[(0, length)] for _ in range(batch)]
    pos = pos.expand(batch, -1)
    return [segment_bounds(length, position_ids=pos[r]) for r in range(batch)]


def _packed_mask(*args, attention_mask: torch.Tensor | None = None, **kwargs):
    """Mask factory: no mask for packed rows (the attention isolates segments), sdpa's mask otherwise."""
    if attention_mask is None:
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def enable_packed_attention(model: torch.nn.Module) -> torch.nn.Module:
    """Switch an already built HF model to the packed attention path (in place); returns it.

    A new model can instead be built with ``attn_implementation=ATTN_IMPLEMENTATION``.
    """
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    return model


AttentionInterface.register(ATTN_IMPLEMENTATION, packed_attention_forward)
ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_IMPLEMENTATION, _packed_mask)
