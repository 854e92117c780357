"""How each loss treats each sequence: paper Eq. 2 (reference), Eq. 3 (plain packing), Eq. 4 (weighted).

Analysis helpers for notebook 00 (teaching) and its tests. With M sequences in K packs and N_i
target tokens in sequence i, a sequence's share of the loss is
  Eq. 2:  1/M                                  (every sequence counts the same)
  Eq. 3:  N_i / (K · Σ_{j∈pack(i)} N_j)         (favours long answers and sparsely filled packs)
  Eq. 4:  K/(N_i M) per token × N_i tokens / K  = 1/M  (restores Eq. 2)
:func:`losses_three_ways` evaluates all three on a real model, Eq. 2 from separate unpacked runs.

Over an epoch the per-step objectives add up: each step divides by its OWN M (or K), so sequence i
of step s weighs 1/M_s (Eq. 2 / 4, naive and sorted batching: per-sequence mean per step) or
N_i / (K_s · N_pack(i)) (Eq. 3). :func:`epoch_weights` computes that vector from a sampler's
``epoch_plan`` and :func:`weight_share` the share of it that falls on a subset (e.g. the long
sequences); with equal M in every step it equals the subset's share of the data.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from longalign.collate import IGNORE_INDEX, PackingCollator, sequence_weights
from longalign.loss import loss_sums


def sequence_table(packs: Sequence[Sequence[int]], num_targets: Sequence[int]) -> pd.DataFrame:
    """One row per sequence: pack, N_i, pack size, and its loss share under Eq. 2, 3 and 4."""
    k = len(packs)
    m = sum(1 for pack in packs for i in pack if num_targets[i] > 0)
    rows = []
    for p, pack in enumerate(packs):
        pack_targets = sum(num_targets[i] for i in pack)
        for i in pack:
            n = num_targets[i]
            rows.append({"sequence": i, "pack": p, "n_targets": n, "pack_sequences": len(pack),
                         "pack_targets": pack_targets, "w_eq2": 1 / m if n else 0.0,
                         "w_eq3": n / (k * pack_targets) if pack_targets else 0.0,
                         "w_eq4": (k / (n * m)) * n / k if n else 0.0})
    table = pd.DataFrame(rows)
    table["eq3_over_eq2"] = table["w_eq3"] / table["w_eq2"].where(table["w_eq2"] > 0)
    return table


def segments_frame(batch: dict[str, Any]) -> pd.DataFrame:
    """Segments (start, end, targets) of a packed row, from its ``cu_seq_lens_q``."""
    cu = batch["cu_seq_lens_q"].tolist()
    labels = batch["labels"][0]
    return pd.DataFrame([{"segment": s, "start": a, "end": b, "n_targets": int((labels[a:b] != IGNORE_INDEX).sum())}
                         for s, (a, b) in enumerate(zip(cu[:-1], cu[1:]))])


def tokens_frame(batch: dict[str, Any]) -> pd.DataFrame:
    """Per-token position id, target flag and loss weight of a packed row."""
    return pd.DataFrame({"position": range(batch["input_ids"].shape[1]),
                         "position_id": batch["position_ids"][0].tolist(),
                         "is_target": (batch["labels"][0] != IGNORE_INDEX).tolist(),
                         "weight": batch["loss_weights"][0].tolist()})


def _sequence_mean_ce(model, feature: dict[str, list[int]]) -> torch.Tensor:
    """One sequence run alone: mean CE over its targets, 0 without targets (the first token is never a target)."""
    batch = PackingCollator()([feature])
    logits = model(input_ids=batch["input_ids"], use_cache=False).logits
    return loss_sums(logits, batch)["seq"]  # Σ CE/N_i over one sequence = its mean CE


@torch.no_grad()
def losses_three_ways(model, features: Sequence[dict[str, list[int]]], packs: Sequence[Sequence[int]]) -> dict[str, float]:
    """Eq. 2 from separate runs, and Eq. 3 / Eq. 4 from packed forwards, on the same model (the trainer's loss sums)."""
    per_seq = [_sequence_mean_ce(model, f) for f in features]
    eq2 = torch.stack(per_seq).sum() / sum(1 for f in features if sequence_weights(f["labels"])[2])
    collate = PackingCollator()
    batches = [collate([features[i] for i in pack]) for pack in packs]
    m = sum(b["num_sequences"] for b in batches)
    eq3 = eq4 = 0.0
    for b in batches:
        logits = model(input_ids=b["input_ids"], position_ids=b["position_ids"], use_cache=False).logits
        sums = loss_sums(logits, b)
        eq3 = eq3 + sums["ce"] / max(b["num_target_tokens"], 1) / len(batches)  # each pack's token mean, averaged
        eq4 = eq4 + sums["seq"] / m  # Eq. 4: K/M · Σ_i L_i/N_i per pack, averaged over the K packs
    return {"eq2_unpacked": float(eq2), "eq3_packed": float(eq3), "eq4_packed_weighted": float(eq4),
            "abs_diff_eq4_eq2": abs(float(eq4 - eq2)), "abs_diff_eq3_eq2": abs(float(eq3 - eq2))}


OBJECTIVES = ("sequence", "pack")


def epoch_weights(plan: Sequence, lengths: Sequence[int], objective: str = "sequence",
                  num_targets: Sequence[int] | None = None) -> np.ndarray:
    """Each sequence's total loss weight over an epoch, from a sampler's ``epoch_plan`` (sums to #steps).

    ``plan``: step → micro-step → rank → units (packs, or ``[i]`` rows). ``objective="sequence"``
    (Eq. 2 / Eq. 4, naive, sorted): 1/M_s, M_s = sequences of the step with >= 1 target;
    ``"pack"`` (Eq. 3): N_i / (K_s · N_pack), K_s = packs of the step. ``num_targets`` (N_i, target
    tokens per sequence) defaults to ``lengths``.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose from {OBJECTIVES}")
    targets = np.asarray(lengths if num_targets is None else num_targets, dtype=np.float64)
    w = np.zeros(targets.size)
    for step in plan:
        units = [np.asarray(u, dtype=np.int64) for micro in step for rank in micro for u in rank]
        if objective == "sequence":
            idx = np.concatenate(units) if units else np.zeros(0, dtype=np.int64)
            m = int((targets[idx] > 0).sum())
            w[idx] += (targets[idx] > 0) / max(m, 1)
        else:
            for u in units:
                w[u] += targets[u] / max(targets[u].sum(), 1.0) / len(units)
    return w


def weight_share(weights: np.ndarray, subset: np.ndarray) -> float:
    """Share of the epoch's total weight that falls on ``subset`` (a boolean mask or indices)."""
    weights = np.asarray(weights, dtype=np.float64)
    total = weights.sum()
    return float(weights[subset].sum() / total) if total > 0 else 0.0


def long_rows(metas: Sequence[str | dict]) -> np.ndarray:
    """Mask of the rows whose ``meta`` (dict or JSON text, as tokenized datasets store it) has kind "long"."""
    return np.array([(json.loads(m) if isinstance(m, str) else (m or {})).get("kind") == "long" for m in metas], dtype=bool)
