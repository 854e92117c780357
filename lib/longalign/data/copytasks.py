"""Synthetic copy tasks: does a model copy from its context, and by position or by content?

Needle retrieval needs *content-based* copying (an induction mechanism): find the earlier place
where the current tokens occurred and continue from there, wherever that is. A model can also copy
*by position* (always look back a fixed distance), which needs no content matching. These tasks
tell the two apart, so ``benchmarks/bench_induction.py`` can measure how many training tokens a
tiny Llama needs before it copies by content, and which training data gets it there
(:func:`repeated_sequence`, the densest copy supervision): the measurement behind findings 1, 2 and 5
of the cpu profile (``longalign.findings``). Every example is ``(ids, mask)``: ``mask[t]`` marks the tokens
that a copying model can predict from an earlier copy and a non-copying model cannot (the first
token of each copy is left out: nothing announces where a copy starts).
"""

from __future__ import annotations

import time

import numpy as np
import torch

Example = tuple[np.ndarray, np.ndarray]


def fixed_offset_copy(rng: np.random.Generator, alphabet: np.ndarray, length: int) -> Example:
    """Random tokens whose second half repeats the first: copying by position (look back length/2) suffices."""
    half = length // 2
    ids = rng.choice(alphabet, length)
    ids[half:2 * half] = ids[:half]
    mask = np.zeros(length, bool)
    mask[half + 1:2 * half] = True
    return ids, mask


def content_copy(rng: np.random.Generator, alphabet: np.ndarray, length: int, span: tuple[int, int] = (8, 32)) -> Example:
    """Random tokens with one span repeated at a random later place, random length: only content finds the source."""
    ids = rng.choice(alphabet, length)
    return _repeat_span(rng, ids, span)


def repeated_sequence(rng: np.random.Generator, alphabet: np.ndarray, length: int, period: tuple[int, int] = (8, 24)) -> Example:
    """A random sequence of random period repeated to fill ``length``: every token after the first copy is a copy.

    The densest copy supervision there is. The period varies, so no single look-back distance fits every
    example; measured (``benchmarks/bench_induction.py``), a model trained on these learns to copy by
    content and does so on :func:`content_copy` examples it never saw, where training on those fails.
    """
    k = int(rng.integers(period[0], period[1] + 1))
    ids = np.resize(rng.choice(alphabet, k), length)
    mask = np.zeros(length, bool)
    mask[k + 1:] = True
    return ids, mask


def natural_copy(rng: np.random.Generator, stream: np.ndarray, length: int, span: tuple[int, int] = (8, 32)) -> Example:
    """A window of natural text with one of its spans repeated later (what a retrieved quote looks like)."""
    start = int(rng.integers(0, len(stream) - length))
    return _repeat_span(rng, stream[start:start + length].copy(), span)


def natural_repeat(rng: np.random.Generator, stream: np.ndarray, length: int, period: tuple[int, int] = (16, 128)) -> Example:
    """A random chunk of natural text repeated to fill ``length``: dense copy supervision in natural text.

    Measured (``benchmarks/bench_length.py``): a model that copies at 64 tokens copies natural-text spans
    at 256 tokens only when these are in the mix (one repeated span per window is too sparse a signal).
    """
    k = int(rng.integers(period[0], min(period[1], length // 2) + 1))
    start = int(rng.integers(0, len(stream) - k))
    ids = np.resize(stream[start:start + k], length)
    mask = np.zeros(length, bool)
    mask[k + 1:] = True
    return ids, mask


def distant_copy(rng: np.random.Generator, stream: np.ndarray, length: int, distance: tuple[int, int], after: int = 0,
                 span: tuple[int, int] = (8, 32)) -> Example:
    """A window of natural text with one span copied ``distance`` tokens later (low <= d < high), the copy at >= ``after``.

    Retrieval at a set distance: far copies test whether a model finds a source beyond its
    pretraining length; near copies placed late test new positions at a familiar distance.
    """
    k = int(rng.integers(span[0], span[1] + 1))
    low = max(distance[0], k)  # a copy never overlaps its source
    if low >= distance[1] or max(after, low) + k > length:
        raise ValueError(f"no copy of {k} tokens at distance {distance} after {after} fits in {length} tokens")
    start = int(rng.integers(0, len(stream) - length))
    ids = stream[start:start + length].copy()
    dst = int(rng.integers(max(after, low), length - k + 1))
    src = dst - int(rng.integers(low, min(distance[1], dst + 1)))
    ids[dst:dst + k] = ids[src:src + k]
    mask = np.zeros(length, bool)
    mask[dst + 1:dst + k] = True
    return ids, mask


def _repeat_span(rng: np.random.Generator, ids: np.ndarray, span: tuple[int, int]) -> Example:
    """Copy a random span of the first half of ``ids`` over a random later place; mask all but its first token."""
    length = len(ids)
    k = int(rng.integers(span[0], min(span[1], length // 4) + 1))
    src = int(rng.integers(0, length // 2 - k + 1))
    dst = int(rng.integers(src + k, length - k + 1))
    ids[dst:dst + k] = ids[src:src + k]
    mask = np.zeros(length, bool)
    mask[dst + 1:dst + k] = True
    return ids, mask


def batch(examples: list[Example]) -> tuple[torch.Tensor, np.ndarray]:
    """Stack examples of one length into ``(input_ids, mask)``."""
    return torch.tensor(np.stack([ids for ids, _ in examples]), dtype=torch.long), np.stack([m for _, m in examples])


@torch.no_grad()
def copy_accuracy(model: torch.nn.Module, examples: list[Example]) -> dict[str, float]:
    """Greedy next-token accuracy on the copied tokens (``copy``) and on all other tokens (``other``)."""
    ids, mask = batch(examples)
    was_training = model.training
    model.eval()
    pred = model(input_ids=ids).logits[:, :-1].argmax(-1).numpy()
    model.train(was_training)
    hit, mask = pred == ids[:, 1:].numpy(), mask[:, 1:]
    return {"copy": float(hit[mask].mean()), "other": float(hit[~mask].mean())}


def train_copies(model: torch.nn.Module, make, *, steps: int, batch_size: int, lr: float, every: int,
                 evaluate, seed: int = 0, warmup: int = 20) -> list[dict]:
    """Train on ``batch_size`` examples of ``make(rng)`` per step; ``evaluate(model)`` every ``every`` steps and at the end.

    AdamW without weight decay, linear warm-up over ``warmup`` steps, then constant: the copy
    benchmarks compare data and schedules, so the optimiser stays the same everywhere.
    Each evaluation row: step, tokens trained so far, seconds, and what ``evaluate`` returns.
    """
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    evals, tokens, t0 = [], 0, time.perf_counter()
    for step in range(steps + 1):
        if step % every == 0 or step == steps:
            evals.append({"step": step, "tokens": tokens, "s": round(time.perf_counter() - t0, 1), **evaluate(model)})
        if step == steps:
            break
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup)
        ids, _ = batch([make(rng) for _ in range(batch_size)])
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        tokens += ids.numel()
    return evals


def frequent_tokens(stream: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` most frequent token ids of ``stream`` (the alphabet of the random-token tasks)."""
    counts = np.bincount(stream)
    return np.argsort(-counts, kind="stable")[:n]
