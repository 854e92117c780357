"""Random chat-like token data for training tests: a prompt (no targets) then a response (targets)."""

from __future__ import annotations

import datasets
import numpy as np


def random_chat_dataset(lengths: list[int], rng: np.random.Generator) -> datasets.Dataset:
    """One row per length: random ids in [10, 8000), labels -100 on a random-length prompt."""
    rows = {"input_ids": [], "labels": [], "length": []}
    for k in lengths:
        ids = rng.integers(10, 8000, size=k).tolist()
        cut = int(rng.integers(1, k - 2))
        rows["input_ids"].append(ids)
        rows["labels"].append([-100] * cut + ids[cut:])
        rows["length"].append(k)
    return datasets.Dataset.from_dict(rows)
