"""Collators: packed micro-batches (one [1, T] row, FA2 varlen kwargs) and right-padded batches.

Both turn features ``{"input_ids", "labels"}`` (labels HF-aligned, -100 on non-targets; extra keys
ignored) into model inputs plus what the loss needs: per-token weights 1/N_i, the integer
``target_counts`` N_i, and the ints ``num_sequences`` / ``num_packs`` / ``num_target_tokens`` that
the trainer sums over a step. The trainer builds its weights from the integer counts because HF
Trainer casts every floating input to the DeepSpeed dtype: in bf16, 1/N_i is off by up to 0.4 % and
``round(1/w)`` no longer gives N_i from N_i = 190, while integer tensors are only moved. Keys the
model must not see are listed in ``NON_MODEL_KEYS``: pop them (and ``labels``) before the forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

IGNORE_INDEX = -100
NON_MODEL_KEYS = ("loss_weights", "target_counts", "num_sequences", "num_packs", "num_target_tokens", "padding_fraction")


def _features(features: Sequence[dict[str, Any]]) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per feature, checked for equal lengths and non-emptiness."""
    if not features:
        raise ValueError("empty batch: the collator needs at least one feature")
    out = []
    for k, f in enumerate(features):
        ids, labels = list(f["input_ids"]), list(f["labels"])
        if len(ids) != len(labels) or not ids:
            raise ValueError(f"feature {k}: input_ids ({len(ids)}) and labels ({len(labels)}) must be equal, non-empty")
        out.append((ids, labels))
    return out


def sequence_weights(labels: Sequence[int]) -> tuple[list[int], list[float], int]:
    """Labels with the first position masked, per-token weights 1/N on targets, and N.

    Masking position 0 means no token predicts across a sequence boundary; N counts the targets
    after that. Both collators use it.
    """
    labels = [IGNORE_INDEX] + list(labels[1:])  # the first token is never predicted inside this sequence
    n = sum(1 for y in labels if y != IGNORE_INDEX)
    w = 1.0 / n if n else 0.0
    return labels, [w if y != IGNORE_INDEX else 0.0 for y in labels], n


class PackingCollator:
    """Concatenate a micro-batch's sequences (one or more packs) into one [1, T] row.

    Returns ``input_ids``, ``labels``, ``position_ids`` (restarting at 0 per sequence),
    ``loss_weights`` (``weights_dtype``; 1/N_i on sequence i's targets, 0 elsewhere) and
    ``target_counts`` (int64, N_i there), all ``[1, T]``; ``cu_seq_lens_q`` / ``cu_seq_lens_k``
    (int32 ``[n_seq + 1]``) and ``max_length_q`` / ``max_length_k`` as transformers' FA2 varlen path
    expects; ints ``num_sequences`` (sequences with >= 1 target), ``num_packs`` (distinct ``pack_id``
    values, 1 when absent) and ``num_target_tokens``. ``pad_to_multiple_of`` pads the end with one
    extra segment (label -100, weight 0, its own cu_seq_lens entry). Call the model with
    ``position_ids``, no ``attention_mask`` and ``use_cache=False``. Float64 ``weights_dtype`` keeps
    notebook 00's weight tables exact.
    """

    def __init__(self, pad_to_multiple_of: int | None = None, pad_token_id: int = 0,
                 weights_dtype: torch.dtype = torch.float32):
        self.pad_to_multiple_of = pad_to_multiple_of
        self.pad_token_id = pad_token_id
        self.weights_dtype = weights_dtype

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        ids, labels, weights, counts, positions, seq_lens = [], [], [], [], [], []
        num_sequences = num_targets = 0
        for seq_ids, seq_labels in _features(features):
            masked, w, n = sequence_weights(seq_labels)
            ids += seq_ids
            labels += masked
            weights += w
            counts += [n if y != IGNORE_INDEX else 0 for y in masked]
            positions += range(len(seq_ids))
            seq_lens.append(len(seq_ids))
            num_sequences += n > 0
            num_targets += n
        pad = self._pad_len(len(ids))
        if pad:  # padding is its own segment, so it never attends to (or is seen by) real tokens
            ids += [self.pad_token_id] * pad
            labels += [IGNORE_INDEX] * pad
            weights += [0.0] * pad
            counts += [0] * pad
            positions += range(pad)
            seq_lens.append(pad)
        batch = _packed_batch(ids, labels, weights, positions, seq_lens, num_sequences, num_targets,
                              _num_packs(features))
        batch["loss_weights"] = batch["loss_weights"].to(self.weights_dtype)
        batch["target_counts"] = torch.tensor([counts], dtype=torch.long)
        return batch

    def _pad_len(self, total: int) -> int:
        m = self.pad_to_multiple_of
        return (-total) % m if m else 0


def _num_packs(features: Sequence[dict[str, Any]]) -> int:
    """Distinct pack ids among the features (1 when they carry none)."""
    ids = {f["pack_id"] for f in features if f.get("pack_id") is not None}
    return max(len(ids), 1)


def _packed_batch(ids, labels, weights, positions, seq_lens, num_sequences, num_targets, num_packs) -> dict[str, Any]:
    """Tensors of a packed row plus the FA2 varlen kwargs."""
    cu = torch.zeros(len(seq_lens) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(seq_lens, dtype=torch.int64), 0).to(torch.int32)
    max_len = max(seq_lens)
    return {
        "input_ids": torch.tensor([ids], dtype=torch.long),
        "labels": torch.tensor([labels], dtype=torch.long),
        "position_ids": torch.tensor([positions], dtype=torch.long),
        "loss_weights": torch.tensor([weights], dtype=torch.float64),
        "cu_seq_lens_q": cu, "cu_seq_lens_k": cu.clone(),
        "max_length_q": max_len, "max_length_k": max_len,
        "num_sequences": int(num_sequences), "num_packs": int(num_packs),
        "num_target_tokens": int(num_targets),
    }


class PaddingCollator:
    """Right-pad a micro-batch of sequences into [B, T] with attention_mask and 1/N_i weights.

    Returns ``input_ids``, ``attention_mask``, ``labels`` (-100 on padding), ``loss_weights``
    (1/N_i per target: Σ weight × CE is the sum of the rows' sequence means) and ``target_counts``,
    all ``[B, T]``; ints ``num_sequences``, ``num_packs`` (= 1: a padded micro-batch is one averaging
    unit) and ``num_target_tokens``; ``padding_fraction`` (pad tokens / all tokens).
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None,
                 weights_dtype: torch.dtype = torch.float32):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.weights_dtype = weights_dtype

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        pairs = _features(features)
        width = max(len(ids) for ids, _ in pairs)
        if self.pad_to_multiple_of:
            width += (-width) % self.pad_to_multiple_of
        batch = {k: torch.full((len(pairs), width), v, dtype=dt) for k, v, dt in (
            ("input_ids", self.pad_token_id, torch.long), ("attention_mask", 0, torch.long),
            ("labels", IGNORE_INDEX, torch.long), ("loss_weights", 0.0, self.weights_dtype),
            ("target_counts", 0, torch.long))}
        num_sequences = num_targets = real = 0
        for row, (ids, seq_labels) in enumerate(pairs):
            masked, w, n = sequence_weights(seq_labels)
            batch["input_ids"][row, :len(ids)] = torch.tensor(ids)
            batch["attention_mask"][row, :len(ids)] = 1
            batch["labels"][row, :len(ids)] = torch.tensor(masked)
            batch["loss_weights"][row, :len(ids)] = torch.tensor(w, dtype=torch.float64)
            batch["target_counts"][row, :len(ids)] = torch.tensor([n if y != IGNORE_INDEX else 0 for y in masked])
            num_sequences += n > 0
            num_targets += n
            real += len(ids)
        batch.update(num_sequences=int(num_sequences), num_packs=1, num_target_tokens=int(num_targets),
                     padding_fraction=1.0 - real / (len(pairs) * width))
        return batch
