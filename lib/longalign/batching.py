"""Distributed batch samplers for the three training methods: naive, sorted and packed batching.

Each is a torch ``DataLoader`` ``batch_sampler`` serving ONE rank: per micro-step it yields the
dataset indices of that rank's micro-batch. Every rank yields the same number of micro-batches per
epoch (ranks stay in lock-step), over all ranks every index appears exactly once per epoch, and the
order is a pure function of (seed, epoch). ``epoch_plan(epoch)`` exposes every rank's work, which
``weighting.epoch_weights`` and ``simulate`` read, so what is analysed is what is trained. The
sampler already shards by rank: the trainer hands HF its loader without ``accelerator.prepare``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from longalign.packing import dropped_indices, pack, schedule_packs, split_packs_to_multiple


class _EpochBatchSampler:
    """Shared epoch/resume logic: subclasses build ``_plan(epoch)`` = this rank's micro-batches.

    ``len()`` is the micro-batches per rank per epoch, the same in every epoch and on every rank. A
    sampler that finishes an epoch rolls over to the next one by itself.
    """

    def __init__(self, world_size: int, rank: int, seed: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside [0, world_size={world_size})")
        self.world_size, self.rank, self.seed = world_size, rank, seed
        self.epoch, self.position = 0, 0

    def _plan(self, epoch: int) -> list[list[Any]]:
        raise NotImplementedError

    def epoch_plan(self, epoch: int) -> list[list[list[list[list[int]]]]]:
        """Step → micro-step → rank → units (lists of sequence indices) of an epoch, all ranks.

        A unit is a pack's sequence indices, or ``[i]`` for one padded row.
        """
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields (restarts at its beginning).

        HF Trainer only calls ``set_epoch`` on prepared loaders, so a callback calls it at each
        epoch's start. On resume HF wraps the sampler in a ``SkipBatchSampler`` that positions
        itself: leave ``position`` at 0 then.
        """
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def state_dict(self) -> dict[str, int]:
        """Epoch, micro-batches already handed out in it, and the seed (for a check on resume)."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume: the next iteration continues epoch ``epoch`` after ``position`` micro-batches.

        For resuming without HF's skipping, ``position`` = micro-batches the trainer consumed: the
        saved ``position`` counts batches handed out by ``__iter__``, which runs ahead of training
        when DataLoader workers prefetch.
        """
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"sampler state was saved with seed {state['seed']}, this sampler has {self.seed}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def __iter__(self) -> Iterator[list[Any]]:
        epoch, plan = self.epoch, self._plan(self.epoch)
        for k in range(self.position, len(plan)):
            # The state moves before the batch is handed out, and past the last batch it already
            # names the next epoch: a loop that stops after len(self) batches (HF's GA loop never
            # asks for one more) still gets a fresh order from the next iter().
            self.epoch, self.position = (epoch, k + 1) if k + 1 < len(plan) else (epoch + 1, 0)
            yield plan[k]

    def __len__(self) -> int:
        return len(self._plan(self.epoch))


def _deal(group: np.ndarray, world_size: int, grad_accum: int) -> list[list[list[int]]]:
    """Micro-step → rank → indices of one global batch: item j goes to slot j % (W·GA)."""
    slots = world_size * grad_accum
    return [[group[m * world_size + r::slots].tolist() for r in range(world_size)] for m in range(grad_accum)]


def _cut_groups(order: np.ndarray, size: int, min_size: int) -> list[np.ndarray]:
    """Consecutive groups of ``size`` cut from the END of ``order``; the leftover (start of
    ``order``) is its own group if it has >= min_size items, else merged into its neighbour."""
    n = order.size
    if n < min_size:
        raise ValueError(f"{n} sequences cannot fill {min_size} micro-batch slots (world_size × grad_accum)")
    rem = n % size
    bounds = list(range(rem, n + 1, size))  # [rem, rem + size, ..., n]
    if rem and (rem >= min_size or len(bounds) == 1):
        bounds = [0] + bounds
    else:
        bounds[0] = 0  # a too-small leftover joins the first full group
    return [order[s:e] for s, e in zip(bounds[:-1], bounds[1:])]


def _cut_groups_multiple(order: np.ndarray, size: int, multiple: int) -> list[np.ndarray]:
    """Groups of ``size`` cut from the END of ``order``, as many as a multiple of ``multiple`` allows;
    the rest (the start of ``order``, the shortest sequences) joins the first group, so every
    optimizer step gets exactly ``multiple`` groups."""
    n_groups = order.size // size // multiple * multiple
    start = order.size - n_groups * size
    groups = [order[start + k * size:start + (k + 1) * size] for k in range(n_groups)]
    groups[0] = order[:start + size]
    return groups


class _GroupedBatchSampler(_EpochBatchSampler):
    """Global batches (an ordering cut into groups) dealt over ranks and GA micro-steps."""

    def __init__(self, lengths: Sequence[int], batch_size: int, world_size: int = 1, rank: int = 0,
                 seed: int = 0, grad_accum: int = 1):
        super().__init__(world_size, rank, seed)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size, self.grad_accum = batch_size, grad_accum
        self.num_micro_batches_per_step = grad_accum
        self._cache: tuple[int, list[list[int]]] | None = None

    def _groups(self, epoch: int) -> list[np.ndarray]:
        raise NotImplementedError

    def epoch_plan(self, epoch: int) -> list[list[list[list[list[int]]]]]:
        """Step → micro-step → rank → units (one ``[i]`` per padded row)."""
        return [[[[[i] for i in rank] for rank in micro] for micro in _deal(g, self.world_size, self.grad_accum)]
                for g in self._groups(epoch)]

    def _plan(self, epoch: int) -> list[list[int]]:
        if self._cache is None or self._cache[0] != epoch:
            plan = [[u[0] for u in micro[self.rank]] for step in self.epoch_plan(epoch) for micro in step]
            self._cache = (epoch, plan)
        return self._cache[1]

class RandomBatchSampler(_GroupedBatchSampler):
    """Naive batching: a seeded random permutation per epoch, cut into global batches.

    A global batch holds ``batch_size * world_size * grad_accum`` sequences, dealt round-robin over
    its micro-batch slots (slot k → micro-step k // world_size, rank k % world_size). A leftover
    smaller than one item per slot is merged into the neighbouring group.
    """

    def _groups(self, epoch: int) -> list[np.ndarray]:
        order = np.random.default_rng([self.seed, epoch]).permutation(self.lengths.size)
        slots = self.world_size * self.grad_accum
        return _cut_groups(order, self.batch_size * slots, slots)


class SortedBatchSampler(_GroupedBatchSampler):
    """Sorted batching: length-sorted consecutive groups (one micro-step each, or one whole step)
    in a seeded random order per epoch.

    ``grouping="micro_step"`` (default) is LongAlign's sorted batching as the official code does
    it: groups of ONE micro-step (``batch_size * world_size`` sequences) cut from the long end, so
    the one short leftover group holds the shortest sequences (the official code drops it),
    shuffled per epoch; gradient accumulation puts ``grad_accum`` consecutive groups of that order in
    one optimizer step, so a step mixes lengths. When there are at least ``grad_accum`` groups their
    count is made a multiple of ``grad_accum`` (the leftover joins the shortest group). Item j of a
    group runs on rank j % world_size. ``grouping="step"``: whole optimizer steps of consecutive
    sorted sequences (steps all long or all short), dealt like :class:`RandomBatchSampler`.
    """

    GROUPINGS = ("micro_step", "step")

    def __init__(self, lengths: Sequence[int], batch_size: int, world_size: int = 1, rank: int = 0,
                 seed: int = 0, grad_accum: int = 1, grouping: str = "micro_step"):
        if grouping not in self.GROUPINGS:
            raise ValueError(f"unknown grouping {grouping!r}; choose from {self.GROUPINGS}")
        super().__init__(lengths, batch_size, world_size, rank, seed, grad_accum)
        self.grouping = grouping

    def _sorted_groups(self, epoch: int, per_group: int, multiple: int = 1) -> list[np.ndarray]:
        order = np.lexsort((np.arange(self.lengths.size), self.lengths))  # by length, ties by index
        size = self.batch_size * per_group
        if order.size // size >= multiple > 1:
            groups = _cut_groups_multiple(order, size, multiple)
        else:
            groups = _cut_groups(order, size, per_group)
        perm = np.random.default_rng([self.seed, epoch]).permutation(len(groups))
        return [groups[k] for k in perm]

    def _micro_groups(self, epoch: int) -> list[list[np.ndarray]]:
        """Step → its micro-step groups: GA consecutive groups of the shuffled order."""
        groups = self._sorted_groups(epoch, self.world_size, self.grad_accum)
        return [groups[k:k + self.grad_accum] for k in range(0, len(groups), self.grad_accum)]

    def _groups(self, epoch: int) -> list[np.ndarray]:
        if self.grouping == "step":
            return self._sorted_groups(epoch, self.world_size * self.grad_accum)
        return [np.concatenate(step) for step in self._micro_groups(epoch)]

    def epoch_plan(self, epoch: int) -> list[list[list[list[list[int]]]]]:
        """Step → micro-step → rank → units; with ``micro_step`` grouping item j of a group runs on rank j % W."""
        if self.grouping == "step":
            return super().epoch_plan(epoch)
        w = self.world_size
        return [[[[[i] for i in g[r::w].tolist()] for r in range(w)] for g in step] for step in self._micro_groups(epoch)]


class PackedBatchSampler(_EpochBatchSampler):
    """Packing: fixed packs, attention-cost-balanced per-step rank schedule reshuffled per epoch.

    Packs once with ``packing.pack(strategy)`` (then ``split_packs_to_multiple`` so the count is a
    multiple of ``world_size``); per epoch ``packing.schedule_packs(order)`` gives each rank
    ``packs_per_device * grad_accum`` packs per step, cut into micro-batches of ``packs_per_device``
    packs (heaviest first); a shorter leftover step comes last. Yields the micro-batch's sequence
    indices, or ``(index, pack_id)`` pairs with ``yield_pack_ids`` (read through
    :class:`WithPackIds` so ``collate.PackingCollator`` can count ``num_packs``).
    """

    def __init__(self, lengths: Sequence[int], max_len: int, world_size: int = 1, rank: int = 0,
                 packs_per_device: int = 1, grad_accum: int = 1, seed: int = 0, strategy: str = "equal_counts",
                 a: float = 1.0, b: float = 1 / 4096, yield_pack_ids: bool = False, order: str = "cost"):
        super().__init__(world_size, rank, seed)
        self.lengths, self.max_len = np.asarray(lengths, dtype=np.int64), max_len
        self.packs_per_device, self.grad_accum = packs_per_device, grad_accum
        self.num_micro_batches_per_step = grad_accum
        self.a, self.b, self.yield_pack_ids, self.order = a, b, yield_pack_ids, order
        self.packs = split_packs_to_multiple(pack(self.lengths, max_len, strategy), self.lengths, world_size,
                                             drop_remainder=True)
        self.dropped = dropped_indices(self.packs, self.lengths.size)
        if self.dropped:  # only when (almost) every pack holds one sequence, e.g. pretraining windows
            warnings.warn(f"packing: {len(self.dropped)} sequence(s) left out of every epoch (indices "
                          f"{self.dropped[:8]}): the packs hold too few sequences to split into a multiple of "
                          f"world_size={world_size}, and ranks must stay in lock-step", stacklevel=2)
        self._cache: tuple[int, list[list[Any]]] | None = None

    def _steps(self, epoch: int) -> list[list[list[int]]]:
        """Step → rank → pack ids for an epoch."""
        seed = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0])
        return schedule_packs(self.packs, self.lengths, self.world_size,
                              self.packs_per_device * self.grad_accum, self.a, self.b, seed=seed, order=self.order)

    def schedule(self, epoch: int) -> list[list[list[list[int]]]]:
        """Step → rank → packs (each a list of sequence indices) for an epoch."""
        return [[[self.packs[p] for p in rank] for rank in step] for step in self._steps(epoch)]

    def epoch_plan(self, epoch: int) -> list[list[list[list[list[int]]]]]:
        """Step → micro-step → rank → packs (lists of sequence indices) of an epoch."""
        ppd, plan = self.packs_per_device, []
        for step in self._steps(epoch):
            n_micro = -(-max(len(r) for r in step) // ppd)
            plan.append([[[self.packs[p] for p in rank[m * ppd:(m + 1) * ppd]] for rank in step]
                         for m in range(n_micro)])
        return plan

    def step_totals(self, epoch: int) -> list[dict[str, int]]:
        """Per optimizer step, over all ranks: ``micro_batches`` (GA steps × world_size), ``packs`` (K)
        and ``sequences`` (M) — the step totals ``loss.objective`` divides by for the exact Eq. 2.

        Tokenized records all have >= 1 target, so ``sequences`` = M. A step's micro-batches are the
        next ``micro_batches / world_size`` this rank yields.
        """
        out = []
        for step in self._steps(epoch):
            per_rank = -(-len(step[0]) // self.packs_per_device)
            out.append({"micro_batches": per_rank * self.world_size, "packs": sum(map(len, step)),
                        "sequences": sum(len(self.packs[p]) for rank in step for p in rank)})
        return out

    def _plan(self, epoch: int) -> list[list[Any]]:
        if self._cache is None or self._cache[0] != epoch:
            plan = []
            for step in self._steps(epoch):
                mine = step[self.rank]
                for m in range(0, len(mine), self.packs_per_device):
                    plan.append(self._micro_batch(mine[m:m + self.packs_per_device]))
            self._cache = (epoch, plan)
        return self._cache[1]

    def _micro_batch(self, pack_ids: list[int]) -> list[Any]:
        if self.yield_pack_ids:
            return [(i, p) for p in pack_ids for i in self.packs[p]]
        return [i for p in pack_ids for i in self.packs[p]]


class WithPackIds:
    """Dataset view for ``PackedBatchSampler(yield_pack_ids=True)``: item (i, p) = dataset[i] + pack_id p."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, pack_id = key
        return {**self.dataset[int(index)], "pack_id": int(pack_id)}

