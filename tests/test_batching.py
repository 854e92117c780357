"""Samplers: exactly-once across ranks, lock-step ranks, similar lengths, epochs, resume, DataLoader use."""

import numpy as np
import pytest
from torch.utils.data import DataLoader

from longalign.batching import PackedBatchSampler, RandomBatchSampler, SortedBatchSampler, WithPackIds
from longalign.collate import PackingCollator


def lengths(n: int = 203, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(5, 1.2, n).astype(np.int64), 2, 2000)


def all_ranks(cls, world: int, epoch: int, **kw) -> list[list[list[int]]]:
    """Per rank, the micro-batches of one epoch."""
    out = []
    for rank in range(world):
        sampler = cls(world_size=world, rank=rank, **kw)
        sampler.set_epoch(epoch)
        out.append(list(sampler))
    return out


def step_indices(sampler, epoch: int) -> list[np.ndarray]:
    """Per optimizer step, every index it trains (all micro-steps, all ranks), from ``epoch_plan``."""
    return [np.array([i for micro in step for rank in micro for unit in rank for i in unit])
            for step in sampler.epoch_plan(epoch)]


CASES = [(1, 4, 1), (2, 4, 1), (4, 3, 2), (3, 5, 3), (8, 1, 1), (4, 50, 1)]


@pytest.mark.parametrize("cls", [SortedBatchSampler, RandomBatchSampler])
@pytest.mark.parametrize("world,batch,ga", CASES)
def test_grouped_exactly_once_lockstep(cls, world, batch, ga):
    lens = lengths()
    for epoch in (0, 1):
        per_rank = all_ranks(cls, world, epoch, lengths=lens, batch_size=batch, grad_accum=ga, seed=3)
        assert len({len(r) for r in per_rank}) == 1  # every rank runs the same number of micro-steps
        assert len(per_rank[0]) % ga == 0
        flat = sorted(i for r in per_rank for mb in r for i in mb)
        assert flat == list(range(len(lens)))
        assert all(len(mb) >= 1 for r in per_rank for mb in r)


def test_sorted_step_grouping_keeps_whole_steps_consecutive():
    lens = lengths(1000, 1)
    sampler = SortedBatchSampler(lens, batch_size=8, world_size=2, seed=0, grouping="step")
    rank_of_sorted = np.empty(len(lens), dtype=np.int64)
    rank_of_sorted[np.lexsort((np.arange(len(lens)), lens))] = np.arange(len(lens))
    spreads = []
    for group in step_indices(sampler, 0):
        pos = np.sort(rank_of_sorted[group])
        assert np.all(np.diff(pos) == 1)  # a consecutive run of the length-sorted order
        spreads.append(lens[group].max() - lens[group].min())
    random = step_indices(RandomBatchSampler(lens, batch_size=8, world_size=2, seed=0), 0)
    random_spreads = [lens[g].max() - lens[g].min() for g in random]
    assert np.mean(spreads) < 0.1 * np.mean(random_spreads)


@pytest.mark.parametrize("cls", [SortedBatchSampler, RandomBatchSampler])
def test_order_changes_per_epoch_and_is_seeded(cls):
    lens = lengths()
    a0 = all_ranks(cls, 2, 0, lengths=lens, batch_size=4, seed=0)
    a1 = all_ranks(cls, 2, 1, lengths=lens, batch_size=4, seed=0)
    b0 = all_ranks(cls, 2, 0, lengths=lens, batch_size=4, seed=1)
    assert a0 != a1 and a0 != b0
    assert a0 == all_ranks(cls, 2, 0, lengths=lens, batch_size=4, seed=0)


def packed_kw(**extra):
    return dict(lengths=lengths(300, 2), max_len=2048, seed=5, **extra)


@pytest.mark.parametrize("world,ppd,ga", [(1, 1, 1), (2, 1, 2), (4, 2, 1), (3, 2, 2)])
def test_packed_sampler_exactly_once_capacity_lockstep(world, ppd, ga):
    lens = lengths(300, 2)
    for epoch in (0, 1):
        per_rank = all_ranks(PackedBatchSampler, world, epoch, packs_per_device=ppd, grad_accum=ga, **packed_kw())
        assert len({len(r) for r in per_rank}) == 1
        flat = sorted(i for r in per_rank for mb in r for i in mb)
        assert flat == list(range(len(lens)))
        assert all(lens[mb].sum() <= 2048 * ppd for r in per_rank for mb in r)
    sampler = PackedBatchSampler(world_size=world, packs_per_device=ppd, grad_accum=ga, **packed_kw())
    totals = sampler.step_totals(0)
    for step, tot in zip(sampler.schedule(0), totals):
        assert all(lens[pk].sum() <= 2048 for rank in step for pk in rank)
        assert len({len(rank) for rank in step}) == 1
        assert tot["sequences"] == sum(len(pk) for rank in step for pk in rank)
    assert all(t["micro_batches"] == ga * world for t in totals[:-1])
    assert sum(t["micro_batches"] for t in totals) == world * len(per_rank[0])


@pytest.mark.parametrize("make", [
    lambda: SortedBatchSampler(lengths(), batch_size=4, world_size=2, rank=1, grad_accum=2, seed=7),
    lambda: RandomBatchSampler(lengths(), batch_size=3, world_size=2, rank=0, seed=7),
    lambda: PackedBatchSampler(world_size=2, rank=1, **packed_kw()),
])
def test_resume_reproduces_order(make):
    full = make()
    full.set_epoch(1)
    expected = list(full)
    partial = make()
    partial.set_epoch(1)
    it = iter(partial)
    head = [next(it) for _ in range(5)]
    state = partial.state_dict()
    assert state["epoch"] == 1 and state["position"] == 5
    resumed = make()
    resumed.load_state_dict(state)
    assert head + list(resumed) == expected
    assert resumed.state_dict()["epoch"] == 2  # a finished epoch rolls over to the next one
    with pytest.raises(ValueError, match="seed"):
        make().load_state_dict({**state, "seed": 99})


def test_packed_sampler_in_dataloader_with_pack_ids():
    lens = lengths(60, 4)
    data = [{"input_ids": list(range(n)), "labels": list(range(n))} for n in lens.tolist()]
    make = lambda: PackedBatchSampler(lens, max_len=2048, packs_per_device=2, yield_pack_ids=True, seed=1)
    expected = list(make())
    sampler = make()
    loader = DataLoader(WithPackIds(data), batch_sampler=sampler, collate_fn=PackingCollator())
    assert len(loader) == len(expected)
    seen = 0
    for batch, micro in zip(loader, expected):
        assert batch["num_packs"] == len({p for _, p in micro})
        assert batch["input_ids"].shape[1] == sum(lens[i] for i, _ in micro)
        seen += batch["num_sequences"]
    assert seen == len(lens)


def test_too_few_sequences_raise():
    with pytest.raises(ValueError, match="micro-batch slots"):
        list(SortedBatchSampler([5, 6, 7], batch_size=1, world_size=4))


def test_epoch_rolls_over_without_stop_iteration():
    """A consumer that takes exactly len(sampler) batches (like HF's GA loop) still sees epoch 1 next."""
    sampler = SortedBatchSampler(lengths(), batch_size=4, world_size=2, rank=0, seed=0)
    it = iter(sampler)
    epoch0 = [next(it) for _ in range(len(sampler))]
    assert sampler.state_dict()["epoch"] == 1 and sampler.state_dict()["position"] == 0
    epoch1 = list(sampler)
    ref = SortedBatchSampler(lengths(), batch_size=4, world_size=2, rank=0, seed=0)
    ref.set_epoch(1)
    assert epoch1 == list(ref) and epoch1 != epoch0


def sorted_positions(lens: np.ndarray) -> np.ndarray:
    pos = np.empty(len(lens), dtype=np.int64)
    pos[np.lexsort((np.arange(len(lens)), lens))] = np.arange(len(lens))
    return pos


def test_sorted_default_groups_one_micro_step_and_mixes_steps():
    """Official grouping: each micro-step (all ranks) is a consecutive run of batch × world sorted
    sequences; a step of GA micro-steps joins runs from all over the order."""
    lens = lengths(1000, 1)
    pos = sorted_positions(lens)
    sampler = SortedBatchSampler(lens, batch_size=2, world_size=4, grad_accum=6, seed=0)
    plan = sampler.epoch_plan(0)
    spans, sizes = [], []
    for step in plan:
        runs = [np.sort(pos[[u[0] for rank in micro for u in rank]]) for micro in step]
        assert all(np.all(np.diff(r) == 1) for r in runs)
        sizes += [len(r) for r in runs]
        spans.append(max(r[-1] for r in runs) - min(r[0] for r in runs))
    assert sum(n != 8 for n in sizes) <= 1  # the leftover joins the shortest group (1000 % 48 = 40 here)
    assert sorted(sizes)[-1] == 8 + 1000 % 48 and len(sizes) % 6 == 0
    # whole steps would span < 48 positions; mixed steps span most of the order
    assert np.median(spans) > len(lens) / 2
    assert sorted(u[0] for step in plan for micro in step for rank in micro for u in rank) == list(range(len(lens)))
    with pytest.raises(ValueError, match="grouping"):
        SortedBatchSampler(lens, batch_size=2, grouping="bogus")


@pytest.mark.parametrize("make", [
    lambda w, r: SortedBatchSampler(lengths(), batch_size=3, world_size=w, rank=r, grad_accum=2, seed=1),
    lambda w, r: SortedBatchSampler(lengths(), batch_size=3, world_size=w, rank=r, grad_accum=2, seed=1, grouping="step"),
    lambda w, r: RandomBatchSampler(lengths(), batch_size=2, world_size=w, rank=r, grad_accum=3, seed=1),
    lambda w, r: PackedBatchSampler(lengths(300, 2), max_len=2048, world_size=w, rank=r, packs_per_device=2,
                                    grad_accum=2, seed=1),
])
def test_epoch_plan_is_what_every_rank_iterates(make):
    world = 3
    plan = make(world, 0).epoch_plan(1)
    for rank in range(world):
        sampler = make(world, rank)
        sampler.set_epoch(1)
        expected = [[i for unit in micro[rank] for i in unit] for step in plan for micro in step]
        assert list(sampler) == expected


def test_single_sequence_packs_that_cannot_split_are_reported_not_crashed():
    lengths = [64] * 10  # pretraining windows: every pack holds one sequence, 10 packs over 4 ranks
    with pytest.warns(UserWarning, match="2 sequence\\(s\\) left out of every epoch"):
        samplers = [PackedBatchSampler(lengths, 64, world_size=4, rank=r) for r in range(4)]
    assert samplers[0].dropped == samplers[3].dropped and len(samplers[0].dropped) == 2
    seen = sorted(i for s in samplers for mb in s for i in mb)
    assert seen == sorted(set(range(10)) - set(samplers[0].dropped))  # the rest exactly once
    assert len({len(s) for s in samplers}) == 1  # lock-step
