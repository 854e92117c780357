"""Packed sequences do not see each other: packed logits equal separate-sequence logits (fp32)."""

import numpy as np
import pytest
import torch

from longalign.collate import PackingCollator
from longalign.models import tiny_llama, tiny_llama_config

VOCAB = 64


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_logits_equal_separate_logits(attn):
    rng = np.random.default_rng(0)
    feats = [{"input_ids": rng.integers(0, VOCAB, n).tolist()} for n in (5, 17, 1, 30, 9)]
    for f in feats:
        f["labels"] = list(f["input_ids"])
    config = tiny_llama_config(VOCAB, hidden=64, layers=2, heads=4, max_position=256)
    model = tiny_llama(config, seed=0, dtype=torch.float32, attn_implementation=attn).eval()
    batch = PackingCollator(pad_to_multiple_of=8)(feats)  # trailing padding segment included
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        cu = batch["cu_seq_lens_q"].tolist()
        for (s, e), f in zip(zip(cu[:-1], cu[1:]), feats):
            alone = model(input_ids=torch.tensor([f["input_ids"]]), use_cache=False).logits[0]
            assert torch.allclose(packed[s:e], alone, atol=1e-5, rtol=0), (attn, s, e)
        # the check has teeth: without position_ids the later sequences see earlier ones
        leaky = model(input_ids=batch["input_ids"], use_cache=False).logits[0]
        s, e = cu[1], cu[2]
        assert (leaky[s:e] - packed[s:e]).abs().max() > 1e-3
