"""Notebook 00's analysis: per-sequence loss shares and the three losses against a direct reference."""

from __future__ import annotations

import random

import pytest
import torch

from longalign import models, weighting


def test_sequence_table_shares():
    packs = [[0], [1, 2, 3]]
    n = [100, 10, 10, 80]
    table = weighting.sequence_table(packs, n).set_index("sequence")
    # Eq. 3 by hand: K = 2 packs; sequence 0 alone -> 1/2; sequence 1 -> 10 / (2 * 100) = 0.05
    assert table.loc[0, "w_eq3"] == pytest.approx(0.5)
    assert table.loc[1, "w_eq3"] == pytest.approx(0.05)
    assert table["w_eq3"].sum() == pytest.approx(1.0)
    assert (table["w_eq2"] == 0.25).all() and table["w_eq4"].to_numpy() == pytest.approx(table["w_eq2"].to_numpy())


def _features(rng: random.Random, count: int) -> list[dict]:
    feats = []
    for _ in range(count):
        length = rng.randint(6, 30)
        ids = [rng.randrange(3, 60) for _ in range(length)]
        prompt = rng.randint(1, length - 2)
        feats.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return feats


def test_eq4_equals_unpacked_eq2_and_eq3_differs():
    rng = random.Random(0)
    feats = _features(rng, 7)
    packs = [[0, 1, 2], [3], [4, 5, 6]]
    model = models.tiny_llama(models.tiny_llama_config(64, hidden=32, layers=2, heads=2), dtype=torch.float64,
                              attn_implementation="sdpa")
    with torch.no_grad():
        losses = weighting.losses_three_ways(model, feats, packs)
    # Independent reference: per-sequence mean CE computed token by token from separate runs.
    ref = []
    for f in feats:
        logits = model(input_ids=torch.tensor([f["input_ids"]]), use_cache=False).logits[0]
        logp = torch.log_softmax(logits, -1)
        tok = [-logp[t - 1, f["labels"][t]] for t in range(1, len(f["labels"])) if f["labels"][t] != -100]
        ref.append(torch.stack(tok).mean().detach())
    eq2 = float(torch.stack(ref).mean())
    assert losses["eq2_unpacked"] == pytest.approx(eq2, rel=1e-10)
    assert losses["eq4_packed_weighted"] == pytest.approx(eq2, rel=1e-6)  # weights are float32 in the collator
    assert losses["abs_diff_eq3_eq2"] > 1e3 * losses["abs_diff_eq4_eq2"]
