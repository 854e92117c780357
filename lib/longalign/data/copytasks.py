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


def frequent_tokens(stream: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` most frequent token ids of ``stream`` (the alphabet of the random-token tasks)."""
    counts = np.bincount(stream)
    return np.argsort(-counts, kind="stable")[:n]
