"""The trainer's loss (Eq. 2/3/4) against independent unpacked references; chunked loss = plain loss."""

import numpy as np
import pytest
import torch

from longalign.collate import IGNORE_INDEX, PackingCollator, PaddingCollator
from longalign.loss import linear_cross_entropy, loss_sums, loss_sums_from_hidden, objective
from longalign.models import tiny_llama, tiny_llama_config

VOCAB = 48


def sequences(seed: int, n: int, max_len: int = 24) -> list[dict]:
    """Random chat-like sequences: a prompt part (no targets) then a target part of varied size."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        length = int(rng.integers(4, max_len))
        ids = rng.integers(0, VOCAB, length).tolist()
        start = int(rng.integers(1, length - 1))
        labels = [IGNORE_INDEX] * start + ids[start:]
        out.append({"input_ids": ids, "labels": labels})
    return out


def reference_ce(logits: torch.Tensor, ids: list[int], labels: list[int]) -> tuple[torch.Tensor, int]:
    """Σ CE of one unpacked sequence from an explicit log-softmax loop (independent of F.cross_entropy)."""
    logp = torch.log_softmax(logits[0].double(), dim=-1)
    total, n = logp.new_zeros(()), 0
    for t in range(len(ids) - 1):
        if labels[t + 1] != IGNORE_INDEX:
            total = total - logp[t, labels[t + 1]]
            n += 1
    return total, n


def with_pack_ids(batch: dict, pack_sizes: list[int]) -> dict:
    """``pack_ids`` over a packed row whose consecutive sequences form packs of ``pack_sizes`` sequences."""
    cu = batch["cu_seq_lens_q"].tolist()
    ids, seq = [], 0
    for p, size in enumerate(pack_sizes):
        ids += [p] * (cu[seq + size] - cu[seq])
        seq += size
    return {**batch, "pack_ids": torch.tensor([ids])}


def test_loss_sums_match_explicit_formula():
    feats = sequences(0, 5)
    batch = with_pack_ids(PackingCollator(weights_dtype=torch.float64)(feats), [2, 3])
    torch.manual_seed(0)
    logits = torch.randn(1, batch["input_ids"].shape[1], VOCAB, dtype=torch.float64)
    cu = batch["cu_seq_lens_q"].tolist()
    totals, counts = [], []
    for s, e, f in zip(cu[:-1], cu[1:], feats):
        total, n = reference_ce(logits[:, s:e], f["input_ids"], f["labels"])
        totals.append(total)
        counts.append(n)
    per_seq = torch.stack([t / n for t, n in zip(totals, counts)])
    expected = 3 * per_seq.sum() / 5  # K/M · Σ_i L_i/N_i with K=3
    sums = loss_sums(logits, batch)
    assert torch.allclose(objective("packing_weighted", sums, {"sequences": 5}, 3), expected)
    assert torch.allclose(objective("naive", sums, {"sequences": 5}, 1), expected / 3)
    assert float(sums["seq"]) == pytest.approx(float(expected) * 5 / 3)
    assert sum(counts) == batch["num_target_tokens"]
    assert float(sums["ce"]) == pytest.approx(float(sum(totals)))
    pack_means = [sum(totals[:2]) / sum(counts[:2]), sum(totals[2:]) / sum(counts[2:])]  # Eq. 3: token mean per pack
    assert torch.allclose(objective("packing", sums, {"packs": 2}, 1), torch.stack(pack_means).mean())


def test_padding_collator_gives_sequence_mean():
    feats = sequences(1, 4)
    batch = PaddingCollator(pad_token_id=0, weights_dtype=torch.float64)(feats)
    torch.manual_seed(1)
    logits = torch.randn(*batch["input_ids"].shape, VOCAB, dtype=torch.float64)
    ref = []
    for row, f in enumerate(feats):
        total, n = reference_ce(logits[row:row + 1, :len(f["input_ids"])], f["input_ids"], f["labels"])
        ref.append(total / n)
    got = objective("naive", loss_sums(logits, batch), {"sequences": batch["num_sequences"]}, 1)
    assert torch.allclose(got, torch.stack(ref).mean())


@pytest.mark.parametrize("chunk_size", [1, 5, 4096])
def test_chunked_loss_equals_plain_loss_and_gradients(chunk_size):
    feats = sequences(2, 6)
    batch = PackingCollator(weights_dtype=torch.float64)(feats)
    torch.manual_seed(2)
    T, H = batch["input_ids"].shape[1], 16
    hidden = torch.randn(1, T, H, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(VOCAB, H, dtype=torch.float64, requires_grad=True)

    def step(sums: dict) -> torch.Tensor:  # 2 ranks, M = 6: the trainer's step objective
        return objective("packing_weighted", sums, {"sequences": 6}, 2)

    def chunked_loss() -> torch.Tensor:
        return step(loss_sums_from_hidden(hidden, weight, batch, "packing_weighted", chunk_size))

    plain = step(loss_sums(hidden @ weight.T, batch))
    g_plain = torch.autograd.grad(plain, (hidden, weight))
    chunked = chunked_loss()
    g_chunked = torch.autograd.grad(chunked, (hidden, weight))
    assert torch.allclose(chunked, plain, rtol=1e-12, atol=0)
    for a, b in zip(g_chunked, g_plain):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-14)
    with torch.no_grad():  # the no-grad path (evaluation) gives the same value
        assert torch.allclose(chunked_loss(), plain)


def test_linear_cross_entropy_rows_match_cross_entropy():
    """Each row's CE equals F.cross_entropy of the full logits; a bad chunk size is refused."""
    torch.manual_seed(3)
    hidden, weight = torch.randn(9, 8, dtype=torch.float64), torch.randn(VOCAB, 8, dtype=torch.float64)
    targets, w = torch.randint(0, VOCAB, (9,)), torch.rand(9, dtype=torch.float64)
    total, ce = linear_cross_entropy(hidden, weight, targets, w, chunk_size=4)
    ref = torch.nn.functional.cross_entropy(hidden @ weight.T, targets, reduction="none")
    assert torch.allclose(ce, ref, rtol=1e-12) and torch.allclose(total, (w * ref).sum(), rtol=1e-12)
    assert not ce.requires_grad
    with pytest.raises(ValueError, match="chunk_size"):
        linear_cross_entropy(hidden, weight, targets, w, chunk_size=0)


def tiny_model(attn: str = "sdpa"):
    config = tiny_llama_config(VOCAB, hidden=32, layers=2, heads=4, max_position=256)
    return tiny_llama(config, seed=0, dtype=torch.float64, attn_implementation=attn)


def flat_grad(model) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def reference_eq2_grad(model, feats) -> torch.Tensor:
    """Eq. 2 by brute force: each sequence alone, its mean target CE, averaged over all M sequences."""
    model.zero_grad()
    losses = []
    for f in feats:
        logits = model(input_ids=torch.tensor([f["input_ids"]]), use_cache=False).logits
        total, n = reference_ce(logits, f["input_ids"], f["labels"])
        losses.append(total / n)
    torch.stack(losses).mean().backward()
    return flat_grad(model)


def packed_grad(model, rows: list[list[dict]], weighted: bool, num_sequences: int) -> torch.Tensor:
    """Trainer-style step over micro-batch rows (one pack each unless weighted): Eq. 4 weighted, else Eq. 3."""
    model.zero_grad()
    collate = PackingCollator(weights_dtype=torch.float64)
    method = "packing_weighted" if weighted else "packing"
    totals = {"sequences": num_sequences, "packs": len(rows)}
    for row in rows:
        batch = {**collate(row), "pack_ids": torch.zeros(1, sum(len(f["input_ids"]) for f in row), dtype=torch.long)}
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        objective(method, loss_sums(logits, batch), totals, 1).backward()  # summed over micro-steps, not averaged
    return flat_grad(model)


def test_packed_weighted_gradients_equal_unpacked_reference():
    torch.manual_seed(0)
    model = tiny_model()
    feats = sequences(3, 9)
    packs = [feats[0:1], feats[1:3], feats[3:7], feats[7:9]]  # packs of 1, 2, 4 and 2 sequences
    ref = reference_eq2_grad(model, feats)
    rel = lambda g: float((g - ref).norm() / ref.norm())
    # one pack per micro-batch (the paper's layout): K = 4 packs, M = 9 sequences
    assert rel(packed_grad(model, packs, True, len(feats))) <= 1e-9
    # two packs per [1, T] row: the trainer averages 2 rows, so num_packs = 2
    rows = [packs[0] + packs[1], packs[2] + packs[3]]
    assert rel(packed_grad(model, rows, True, len(feats))) <= 1e-9
    # unweighted packing (Eq. 3: mean over packs of each pack's token mean) is biased
    assert rel(packed_grad(model, packs, False, len(feats))) > 0.1


def test_sampler_step_totals_give_eq2_per_step():
    """Simulated 2 ranks × GA 2: the trainer's objective with step_totals, summed over GA, averaged over ranks = Eq. 2."""
    from longalign.batching import PackedBatchSampler
    feats = sequences(4, 14, max_len=20)
    lens = [len(f["input_ids"]) for f in feats]
    model = tiny_model().eval()
    collate = PackingCollator(weights_dtype=torch.float64)
    world, ga = 2, 2
    samplers = [PackedBatchSampler(lens, max_len=40, world_size=world, rank=r, grad_accum=ga, seed=0)
                for r in range(world)]
    plans = [list(s) for s in samplers]
    start = 0
    with torch.no_grad():
        for tot in samplers[0].step_totals(0):
            n_local = tot["micro_batches"] // world
            rank_losses, step_seqs = [], []
            for plan in plans:
                micro = plan[start:start + n_local]
                losses = []
                for mb in micro:
                    batch = collate([feats[i] for i in mb])
                    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                                   use_cache=False).logits
                    losses.append(objective("packing_weighted", loss_sums(logits, batch), tot, world))
                    step_seqs += mb
                rank_losses.append(torch.stack(losses).sum())  # no GA division (loss_is_scaled_for_ga)
            start += n_local
            step_loss = torch.stack(rank_losses).mean()  # DDP average over ranks
            ref = []
            for i in step_seqs:
                logits = model(input_ids=torch.tensor([feats[i]["input_ids"]]), use_cache=False).logits
                total, n = reference_ce(logits, feats[i]["input_ids"], feats[i]["labels"])
                ref.append(total / n)
            assert len(step_seqs) == tot["sequences"]
            assert torch.allclose(step_loss, torch.stack(ref).mean(), rtol=1e-12)
    assert start == len(plans[0])
