"""Packed attention (longalign.attention) equals separate runs: logits and gradients, with GQA."""

from __future__ import annotations

import copy

import pytest
import torch

from longalign import attention as A
from longalign.models import tiny_llama, tiny_llama_config

LENGTHS = [5, 9, 5, 3, 9, 1]  # equal lengths exercise the batched path, 1 the degenerate segment


def _models(dtype, kv_heads=2):
    cfg = tiny_llama_config(300, hidden=64, layers=2, heads=4)
    cfg.num_key_value_heads = kv_heads
    ref = tiny_llama(cfg, seed=0, dtype=dtype, attn_implementation="sdpa")
    packed = copy.deepcopy(ref)
    A.enable_packed_attention(packed)
    return ref, packed


def _pack(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(0, 300, (n,), generator=g) for n in lengths]
    pos = torch.cat([torch.arange(n) for n in lengths])[None]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return seqs, torch.cat(seqs)[None], pos, cu


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("use_cu", [True, False])
def test_packed_equals_separate_forward_and_backward(dtype, tol, use_cu):
    ref, packed = _models(dtype)
    seqs, ids, pos, cu = _pack(LENGTHS)
    extra = {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": max(LENGTHS), "max_length_k": max(LENGTHS)}
    out = packed(input_ids=ids, position_ids=pos, use_cache=False, **(extra if use_cu else {})).logits
    sep = torch.cat([ref(input_ids=s[None], use_cache=False).logits for s in seqs], dim=1)
    assert (out - sep).abs().max().item() <= tol
    w = torch.randn(out.shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
    (out * w).sum().backward()
    (sep * w).sum().backward()
    g_packed, g_ref = _grads(packed), _grads(ref)
    for name, g in g_ref.items():
        assert (g_packed[name] - g).abs().max().item() <= tol * max(1.0, g.abs().max().item()), name


def test_dense_block_mask_reference_agrees():
    """Independent reference: stock sdpa with position_ids resets builds the dense block mask."""
    ref, packed = _models(torch.float64, kv_heads=1)
    _, ids, pos, _ = _pack(LENGTHS, seed=3)
    a = packed(input_ids=ids, position_ids=pos, use_cache=False).logits
    b = ref(input_ids=ids, position_ids=pos, use_cache=False).logits
    assert (a - b).abs().max().item() <= 1e-10


def test_single_segment_and_padded_batch_fall_back_to_sdpa():
    ref, packed = _models(torch.float64)
    seqs, ids, _, _ = _pack([12])
    assert torch.allclose(packed(input_ids=ids, use_cache=False).logits, ref(input_ids=ids, use_cache=False).logits,
                          atol=1e-12, rtol=0)
    # a right-padded batch with a 2D mask must use the mask (rows of different lengths)
    ids2 = torch.randint(0, 300, (2, 7), generator=torch.Generator().manual_seed(5))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    a = packed(input_ids=ids2, attention_mask=mask, use_cache=False).logits
    b = ref(input_ids=ids2, attention_mask=mask, use_cache=False).logits
    assert (a - b).abs().max().item() <= 1e-10
    short = ref(input_ids=ids2[1:, :4], use_cache=False).logits
    assert (a[1, :4] - short[0]).abs().max().item() <= 1e-10


def test_batched_rows_from_position_ids():
    ref, packed = _models(torch.float64)
    _, ids_a, pos_a, _ = _pack([4, 6], seed=1)
    _, ids_b, pos_b, _ = _pack([3, 3, 4], seed=2)
    out = packed(input_ids=torch.cat([ids_a, ids_b]), position_ids=torch.cat([pos_a, pos_b]), use_cache=False).logits
    row_b = packed(input_ids=ids_b, position_ids=pos_b, use_cache=False).logits
    assert (out[1:] - row_b).abs().max().item() <= 1e-10


def test_generation_with_cache_still_works():
    ref, packed = _models(torch.float32)
    ids = torch.randint(0, 300, (1, 6), generator=torch.Generator().manual_seed(7))
    a = packed.generate(ids, max_new_tokens=4, do_sample=False)
    b = ref.generate(ids, max_new_tokens=4, do_sample=False)
    assert torch.equal(a, b)


def test_segment_bounds_validation():
    assert A.segment_bounds(6, position_ids=torch.tensor([0, 1, 2, 0, 1, 0])) == [(0, 3), (3, 5), (5, 6)]
    assert A.segment_bounds(5, cu_seq_lens=torch.tensor([0, 2, 5])) == [(0, 2), (2, 5)]
    with pytest.raises(ValueError, match="do not tile"):
        A.segment_bounds(6, cu_seq_lens=torch.tensor([0, 2, 5]))
