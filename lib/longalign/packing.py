"""Sequence packing (bin packing of token lengths) and attention-aware pack → rank scheduling.

Packing puts several sequences into one ``max_len`` row so little compute goes to padding (paper
§3.3). Which sequences share a pack matters beyond fill: Eq. 4 divides each step by its sequence
count M, so the samplers' default ``equal_counts`` keeps about equally many sequences per pack, and
:func:`schedule_packs` balances each step's attention cost (Σ a·L + b·L²) over the ranks, which
wait for the slowest one. Every function is deterministic given its seed.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Sequence

import numpy as np

STRATEGIES = ("bfd", "bfd_chunked", "next_fit", "equal_counts")
ORDERS = ("cost", "random", "in_order")
CHUNK_ROWS = 1000  # TRL's pack_dataset maps in batches of 1,000 rows and packs inside each


def _check_lengths(lengths: Sequence[int], max_len: int) -> np.ndarray:
    """Lengths as int64; any length outside [1, max_len] raises ValueError naming its index."""
    arr = np.asarray(lengths, dtype=np.int64).reshape(-1)
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    bad = np.flatnonzero((arr > max_len) | (arr < 1))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"length {int(arr[i])} at index {i} is outside [1, max_len={max_len}] "
            f"({bad.size} such lengths); truncate (from the right) before packing"
        )
    return arr


def lower_bound(lengths: Sequence[int], max_len: int) -> int:
    """ceil(ΣL / max_len): no packing can use fewer packs."""
    return int(-(-int(np.asarray(lengths, dtype=np.int64).sum()) // max_len))


def pack(lengths: Sequence[int], max_len: int, strategy: str = "bfd") -> list[list[int]]:
    """Indices per pack; every index exactly once, each pack's total length <= max_len.

    ``"bfd"``: global best-fit-decreasing (exact BFD over integer capacities, vectorised per run of
    equal lengths). ``"bfd_chunked"``: BFD inside consecutive 1,000-row chunks (TRL's default
    ``pack_dataset`` behaviour), for comparison. ``"next_fit"``: the official LongAlign repo's
    ``sort_and_group.py`` (next-fit in dataset order), except that it keeps the last pack (the
    official code drops it), lets a pack reach exactly ``max_len`` (official: ``< max_len``) and
    raises on over-length items (official: silently skips them). ``"equal_counts"``: as many packs
    as BFD (+ a few when the fill needs them), with about equally many sequences in every pack; the
    training samplers' default, because the per-step Eq. 4 divides by the step's M, so packs of very
    different counts reweight the data mixture over an epoch (``weighting.epoch_weights``).
    Deterministic; a length > ``max_len`` (or < 1) raises ``ValueError`` naming its index.
    """
    arr = _check_lengths(lengths, max_len)
    if strategy == "bfd":
        return _bfd(arr, max_len, np.arange(arr.size))
    if strategy == "bfd_chunked":
        packs: list[list[int]] = []
        for start in range(0, arr.size, CHUNK_ROWS):
            idx = np.arange(start, min(start + CHUNK_ROWS, arr.size))
            packs.extend(_bfd(arr[idx], max_len, idx))
        return packs
    if strategy == "next_fit":
        return _next_fit(arr, max_len)
    if strategy == "equal_counts":
        return _equal_counts(arr, max_len)
    raise ValueError(f"unknown packing strategy {strategy!r}; choose from {STRATEGIES}")


def _next_fit(arr: np.ndarray, max_len: int) -> list[list[int]]:
    """Official LongAlign order: fill the current pack, start a new one when the next item overflows."""
    packs, current, used = [], [], 0
    for i, length in enumerate(arr.tolist()):
        if used + length > max_len:
            packs.append(current)
            current, used = [], 0
        current.append(i)
        used += length
    if current:  # the official code drops this last pack
        packs.append(current)
    return packs


EQUAL_COUNTS_SLACK = 0.002  # packs added per retry (fraction of the count) when a try leaves sequences over
EQUAL_COUNTS_MAX_FILL = 1.01  # at most 1 % (or 2 packs) more than BFD: beyond that, BFD's packs are returned


def _equal_counts(arr: np.ndarray, max_len: int) -> list[list[int]]:
    """About n / packs sequences in every pack, with BFD's pack count (or a few more).

    Sequences longer than the mean room per sequence are spread worst-fit-decreasing (each into the
    pack with most room left), so room stays in every pack. The shorter ones follow, longest first,
    each into the pack with most room per still-open sequence slot: packs with little room are left
    for the shortest sequences. A pack count that leaves sequences over is retried with more packs,
    up to 1 % (or 2 packs) more than BFD; inputs of a few distinct lengths that BFD pairs exactly
    are retried taking exact fits first, and if that fails too BFD's packs are kept.
    """
    if arr.size == 0:
        return []
    bfd = _bfd(arr, max_len, np.arange(arr.size))
    limit = max(len(bfd) + 2, int(len(bfd) * EQUAL_COUNTS_MAX_FILL))
    for exact_first in (False, True):
        n_packs = len(bfd)
        while n_packs <= limit:
            packs, opened = _equal_counts_into(arr, max_len, n_packs, exact_first)
            if not opened:
                return packs
            n_packs = max(len(packs), n_packs + int(np.ceil(n_packs * EQUAL_COUNTS_SLACK)))
    return bfd


def _equal_counts_into(arr: np.ndarray, max_len: int, n_packs: int,
                       exact_first: bool) -> tuple[list[list[int]], int]:
    """One try at ``n_packs`` packs; also returns how many packs had to be opened beyond them."""
    big = arr > max_len * n_packs / arr.size
    bins, room = _spread_worst_fit(arr, np.flatnonzero(big), max_len, n_packs, exact_first)
    targets = _count_targets(np.array([len(b) for b in bins]), room, arr.size)
    overflow = _deal_by_room_per_slot(arr, np.flatnonzero(~big), bins, room, targets)
    before = len(bins)
    _place_fewest(arr, overflow, bins, room, max_len)
    return [sorted(b) for b in bins if b], len(bins) - max(before, n_packs)


def _spread_worst_fit(arr: np.ndarray, items: np.ndarray, max_len: int, n_packs: int,
                      exact_first: bool = False) -> tuple[list[list[int]], list[int]]:
    """Items (longest first) each into the pack with most room (or, with ``exact_first``, one it
    fills exactly); a new pack when none has room."""
    bins: list[list[int]] = [[] for _ in range(n_packs)]
    room = [max_len] * n_packs
    keys = [(max_len, b) for b in range(n_packs)]  # (room, pack), ascending
    for i in items[np.lexsort((items, -arr[items]))].tolist():
        length = int(arr[i])
        k = bisect.bisect_left(keys, (length, -1))  # the tightest pack it fits
        if k == len(keys):
            bins.append([])
            room.append(max_len)
            b = len(bins) - 1
        else:
            _, b = keys.pop(k if exact_first and keys[k][0] == length else len(keys) - 1)
        bins[b].append(i)
        room[b] -= length
        bisect.insort(keys, (room[b], b))
    return bins, room


def _count_targets(counts: np.ndarray, room: list[int], n: int) -> np.ndarray:
    """Sequences per pack summing to n, as level as the packs' current counts allow."""
    level = n // counts.size
    while level > 0 and np.maximum(counts, level).sum() > n:
        level -= 1
    targets = np.maximum(counts, level)
    extra = n - int(targets.sum())
    per_slot = np.asarray(room, dtype=np.float64) / (targets - counts + 1)
    targets[np.argsort(-per_slot, kind="stable")[:extra]] += 1  # the roomiest packs take one more
    return targets


def _deal_by_room_per_slot(arr: np.ndarray, items: np.ndarray, bins: list[list[int]], room: list[int],
                           targets: np.ndarray) -> list[int]:
    """Longest first, each item into the pack with most room per open slot; returns those that did not fit."""
    slots = targets - np.array([len(b) for b in bins])
    heap = [(-room[b] / slots[b], b) for b in range(len(bins)) if slots[b] > 0]
    heapq.heapify(heap)
    overflow = []
    for i in items[np.lexsort((items, -arr[items]))].tolist():
        length = int(arr[i])
        if not heap or room[heap[0][1]] < length:
            overflow.append(i)
            continue
        b = heap[0][1]
        bins[b].append(i)
        room[b] -= length
        slots[b] -= 1
        if slots[b] > 0:
            heapq.heapreplace(heap, (-room[b] / slots[b], b))
        else:
            heapq.heappop(heap)
    return overflow


def _place_fewest(arr: np.ndarray, items: list[int], bins: list[list[int]], room: list[int], max_len: int) -> None:
    """Longest first, each item into the pack with fewest sequences that has room (ties: least room)."""
    rooms = np.asarray(room, dtype=np.int64)
    counts = np.array([len(b) for b in bins])
    for i in sorted(items, key=lambda j: (-arr[j], j)):
        length = int(arr[i])
        pool = np.flatnonzero(rooms >= length)
        if pool.size:
            b = int(pool[np.lexsort((pool, rooms[pool], counts[pool]))[0]])
        else:
            b = len(bins)
            bins.append([])
            rooms, counts = np.append(rooms, max_len), np.append(counts, 0)
        bins[b].append(i)
        rooms[b] -= length
        counts[b] += 1


class _CapacityIndex:
    """Open bins bucketed by integer remaining capacity: a sorted list of the capacities held
    (bisect finds the smallest capacity >= L) and a stack of bin ids per capacity (LIFO tie-break).
    Bins whose capacity is below the smallest length still to come are dead and not kept."""

    def __init__(self, min_useful: int):
        self.caps: list[int] = []
        self.stacks: dict[int, list[int]] = {}
        self.min_useful = min_useful

    def push(self, cap: int, bins: list[int]) -> None:
        if cap < self.min_useful or not bins:
            return
        stack = self.stacks.get(cap)
        if not stack:
            bisect.insort(self.caps, cap)
            stack = self.stacks[cap] = []
        stack.extend(bins)

    def pop(self, cap: int, n: int) -> list[int]:
        stack = self.stacks[cap]
        taken = stack[len(stack) - n:][::-1]  # top of the stack first
        del stack[len(stack) - n:]
        if not stack:
            del self.caps[bisect.bisect_left(self.caps, cap)]
        return taken

    def smallest_at_least(self, need: int) -> int:
        """Smallest capacity >= need held by an open bin, or -1."""
        i = bisect.bisect_left(self.caps, need)
        return self.caps[i] if i < len(self.caps) else -1


def _bfd(arr: np.ndarray, max_len: int, ids: np.ndarray) -> list[list[int]]:
    """Exact best-fit-decreasing; ties between equal lengths go in index order."""
    if arr.size == 0:
        return []
    order = np.lexsort((ids, -arr))  # decreasing length, then increasing index
    sorted_len, sorted_ids = arr[order], ids[order]
    item_bin = np.empty(sorted_len.size, dtype=np.int64)
    # Items longer than max_len / 2 can never share a bin with each other: one fresh bin each.
    n_big = int(np.searchsorted(-sorted_len, -(max_len // 2), side="left"))
    item_bin[:n_big] = np.arange(n_big)
    index = _CapacityIndex(min_useful=int(sorted_len[-1]))
    for b, cap in enumerate((max_len - sorted_len[:n_big]).tolist()):
        index.push(cap, [b])
    rest = sorted_len[n_big:]
    starts = np.flatnonzero(np.r_[True, rest[1:] != rest[:-1]])[:rest.size] + n_big  # run starts
    ends = np.r_[starts[1:], sorted_len.size]
    n_bins = n_big
    for s, e, length in zip(starts.tolist(), ends.tolist(), sorted_len[starts].tolist()):
        n_bins = _place_run(index, length, s, e, item_bin, n_bins, max_len)
    return _group_by_bin(item_bin, sorted_ids, n_bins)


def _place_run(index: _CapacityIndex, length: int, s: int, e: int, item_bin: np.ndarray,
               n_bins: int, max_len: int) -> int:
    """Place items s..e-1 (all of one length) exactly as BFD would, one capacity bucket at a time.

    BFD puts each item in the bin of smallest capacity >= length; that bin then holds
    cap - length, which is still the smallest feasible capacity while >= length, so a bin of
    capacity cap takes cap // length consecutive items of the run before BFD moves on.
    """
    pos = s
    while pos < e:
        cap = index.smallest_at_least(length)
        if cap < 0:  # no open bin fits: open as many fresh bins as the run still needs
            n_new = -(-(e - pos) // (max_len // length))
            index.push(max_len, list(range(n_bins + n_new - 1, n_bins - 1, -1)))  # bin n_bins on top
            n_bins += n_new
            cap = max_len
        per_bin = cap // length
        n_use = min(len(index.stacks[cap]), -(-(e - pos) // per_bin))
        bins = index.pop(cap, n_use)
        take = min(e - pos, n_use * per_bin)
        last = take - per_bin * (n_use - 1)  # items in the last bin used (the others take per_bin)
        if n_use == 1:
            item_bin[pos:pos + take] = bins[0]
        else:
            counts = np.full(n_use, per_bin, dtype=np.int64)
            counts[-1] = last
            item_bin[pos:pos + take] = np.repeat(np.asarray(bins, dtype=np.int64), counts)
            index.push(cap - per_bin * length, bins[-2::-1])
        pos += take
        index.push(cap - last * length, [bins[-1]])
    return n_bins


def _group_by_bin(item_bin: np.ndarray, item_ids: np.ndarray, n_bins: int) -> list[list[int]]:
    """Packs as lists of original indices, packs in opening order, indices ascending inside."""
    order = np.lexsort((item_ids, item_bin))
    grouped = item_ids[order]
    bounds = np.searchsorted(item_bin[order], np.arange(n_bins + 1))
    flat = grouped.tolist()
    return [flat[bounds[k]:bounds[k + 1]] for k in range(n_bins)]


def pack_cost(lengths: Sequence[int], a: float = 1.0, b: float = 1 / 4096) -> float:
    """Attention-aware compute cost of one pack: Σ a·L + b·L² over its sequences."""
    arr = np.asarray(lengths, dtype=np.float64)
    return float(a * arr.sum() + b * (arr * arr).sum())


def assign_to_ranks(costs: Sequence[float], world_size: int, equal_counts: bool = True) -> list[list[int]]:
    """Split packs over ranks minimising the heaviest rank: LPT greedy, then move/swap refinement.

    With ``equal_counts`` every rank gets ``len(costs) // world_size`` packs (±1), so ranks run
    equally many micro-batches; returns each rank's indices into ``costs``.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    cost = np.asarray(costs, dtype=np.float64)
    slots = _rank_slots(cost.size, world_size, equal_counts)
    ranks: list[list[int]] = [[] for _ in range(world_size)]
    heap = [(0.0, r) for r in range(world_size)]
    for i in sorted(range(cost.size), key=lambda j: (-cost[j], j)):
        full = []
        load, r = heapq.heappop(heap)
        while len(ranks[r]) >= slots[r]:  # this rank's slots are used up: try the next lightest
            full.append((load, r))
            load, r = heapq.heappop(heap)
        ranks[r].append(i)
        heapq.heappush(heap, (load + cost[i], r))
        for item in full:
            heapq.heappush(heap, item)
    _refine(ranks, cost, allow_moves=not equal_counts)
    return [sorted(r, key=lambda j: (-cost[j], j)) for r in ranks]


def _rank_slots(n: int, world_size: int, equal_counts: bool) -> list[int]:
    """Pack slots per rank: n // W (+1 for the first n % W ranks), or unlimited."""
    if not equal_counts:
        return [n] * world_size
    return [n // world_size + (1 if r < n % world_size else 0) for r in range(world_size)]


def _refine(ranks: list[list[int]], cost: np.ndarray, allow_moves: bool, max_rounds: int = 200) -> None:
    """Improve the makespan: swap (or move) one pack between the heaviest rank and another."""
    for _ in range(max_rounds):
        loads = [float(cost[r].sum()) if r else 0.0 for r in ranks]
        hi = int(np.argmax(loads))
        if not _improve_once(ranks, cost, loads, hi, allow_moves):
            return


def _improve_once(ranks: list[list[int]], cost: np.ndarray, loads: list[float], hi: int,
                  allow_moves: bool) -> bool:
    """Apply the best single swap/move that lowers max(load_hi, load_lo); False if none does."""
    best, best_gain = None, 1e-12 * max(loads)
    for lo in range(len(ranks)):
        if lo == hi:
            continue
        for x in ranks[hi]:
            if allow_moves:
                gain = loads[hi] - max(loads[hi] - cost[x], loads[lo] + cost[x])
                if gain > best_gain:
                    best, best_gain = (lo, x, None), gain
            for y in ranks[lo]:
                d = cost[x] - cost[y]
                gain = loads[hi] - max(loads[hi] - d, loads[lo] + d)
                if gain > best_gain:
                    best, best_gain = (lo, x, y), gain
    if best is None:
        return False
    lo, x, y = best
    ranks[hi].remove(x)
    ranks[lo].append(x)
    if y is not None:
        ranks[lo].remove(y)
        ranks[hi].append(y)
    return True


def schedule_packs(packs: Sequence[Sequence[int]], lengths: Sequence[int], world_size: int,
                   packs_per_rank: int = 1, a: float = 1.0, b: float = 1 / 4096,
                   seed: int = 0, order: str = "cost") -> list[list[list[int]]]:
    """Step → rank → pack indices: cost-sorted consecutive steps, seeded step order, balanced ranks.

    ``order="cost"``: packs ordered by cost, cut into consecutive steps of
    ``world_size * packs_per_rank`` (similar costs, so ranks can be balanced), the full steps'
    order shuffled with ``seed``, each step split with :func:`assign_to_ranks`. ``"random"``: packs
    shuffled with ``seed`` into steps (then split the same way). ``"in_order"``: packs in their
    given order, dealt round-robin (the official repo). A smaller leftover step comes last; its
    ranks get equally many packs only if its pack count is a multiple of ``world_size``
    (:func:`split_packs_to_multiple` arranges that).
    """
    arr = np.asarray(lengths, dtype=np.int64)
    costs = np.array([pack_cost(arr[list(p)], a, b) for p in packs], dtype=np.float64)
    per_step = world_size * packs_per_rank
    if order == "in_order":  # pack k of a step goes to rank k % world_size, as a sequential sampler deals them
        return [[list(range(s + r, min(s + per_step, len(packs)), world_size)) for r in range(world_size)]
                for s in range(0, len(packs), per_step)]
    if order == "random":
        ranked = np.random.default_rng(seed).permutation(costs.size)
    elif order == "cost":
        ranked = np.lexsort((np.arange(costs.size), -costs))
    else:
        raise ValueError(f"unknown step order {order!r}; choose from {ORDERS}")
    steps = [ranked[i:i + per_step] for i in range(0, ranked.size, per_step)]
    full = len(steps) - (1 if ranked.size % per_step else 0)
    # Full steps in seeded random order; a short leftover step goes last, like a final partial
    # gradient-accumulation step, so every earlier step has exactly packs_per_rank per rank.
    schedule = []
    for k in np.random.default_rng(seed).permutation(full).tolist() + list(range(full, len(steps))):
        step = steps[k]
        split = assign_to_ranks(costs[step], world_size, equal_counts=True)
        schedule.append([[int(step[j]) for j in rank] for rank in split])
    return schedule


def split_packs_to_multiple(packs: Sequence[Sequence[int]], lengths: Sequence[int], multiple: int,
                            drop_remainder: bool = False) -> list[list[int]]:
    """Split multi-sequence packs (most sequences first) until len(packs) % multiple == 0.

    No index is lost or repeated. With too few multi-sequence packs (e.g. pretraining windows that
    each fill a pack) this raises ``ValueError``, or with ``drop_remainder`` leaves out the fewest
    single-sequence packs (< ``multiple``, the last ones) so that ranks stay in lock-step; the
    caller must report them (:func:`dropped_indices`).
    """
    out = [list(p) for p in packs]
    need = (-len(out)) % multiple
    arr = np.asarray(lengths, dtype=np.int64)
    candidates = sorted(range(len(out)), key=lambda k: (-len(out[k]), k))
    splittable = sum(1 for k in candidates if len(out[k]) > 1)
    if splittable < need:
        if not drop_remainder:
            raise ValueError(f"cannot split {len(out)} packs into a multiple of {multiple}: too few multi-sequence packs")
        drop = set(sorted(range(len(out)), key=lambda k: (len(out[k]), -k))[:len(out) % multiple])
        return [p for k, p in enumerate(out) if k not in drop]  # fewest sequences first, the last such packs
    for k in candidates[:need]:
        seqs = sorted(out[k], key=lambda i: (-arr[i], i))
        out[k], extra = seqs[0::2], seqs[1::2]  # alternate so both halves have similar lengths
        out.append(extra)
    return out


def dropped_indices(packs: Sequence[Sequence[int]], n: int) -> list[int]:
    """Indices in ``range(n)`` that no pack holds (what ``drop_remainder`` left out)."""
    held = np.zeros(n, dtype=bool)
    for p in packs:
        held[list(p)] = True
    return np.flatnonzero(~held).tolist()
