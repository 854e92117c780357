"""Training throughput on this CPU: same data, same tiny model, methods interleaved.

Each round draws one subset of the long-tail sequences; every method trains on exactly that subset
its own way (forward + backward + AdamW step per micro-batch), so rounds are comparable; the result
is the median over rounds of real (non-padding) tokens per second. torch runs on ONE thread and the
targets are judged on tokens per CPU-second of this process: on this shared, overloaded 2-core
machine wall time mostly measures the other jobs (wall-clock tokens/s are reported beside it).

- naive: random batches of 8, right padding (attention_mask), HF loss.
- group_by_length: transformers' LengthGroupedSampler (what ``group_by_length=True`` uses), batch 8.
- trl_bfd: ``trl.pack_dataset(strategy="bfd")`` to 2,048 + TRL's padding-free collator, stock sdpa
  (transformers isolates the sequences with a dense block mask built from position_ids).
- trl_wrapped: ``trl.pack_dataset(strategy="wrapped")``: sequences attend to each other, no mask
  (the mask-free ceiling, not a correct method).
- ours: ``longalign.packing.pack`` BFD to 2,048 + ``PackingCollator`` + per-segment attention
  (``longalign.attention``) + loss-weighted CE through the trainer's own loss path
  (``loss.forward_loss_sums`` + ``loss.objective``), chunked (``ce_chunk_size`` 4096, the profiles'
  setting); ours_full_ce: the same with full [T, V] logits (``ce_chunk_size`` 0).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from common import median, result
from workload import MAX_LEN, features, long_tail_lengths, models

from longalign import packing
from longalign.collate import NON_MODEL_KEYS, PackingCollator, PaddingCollator
from longalign.loss import CE_CHUNK_SIZE, forward_loss_sums, objective

METHODS = ("naive", "group_by_length", "trl_bfd", "trl_wrapped", "ours_full_ce", "ours")
BATCH = 8


def _padded(feats: list[dict], order) -> list[dict]:
    coll = PaddingCollator(pad_token_id=0)
    return [coll([feats[i] for i in order[s:s + BATCH]]) for s in range(0, len(order), BATCH)]


def _trl(feats: list[dict], strategy: str) -> list[dict]:
    from datasets import Dataset, disable_progress_bars
    from trl import pack_dataset
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    disable_progress_bars()
    ds = pack_dataset(Dataset.from_list([{"input_ids": f["input_ids"]} for f in feats]), MAX_LEN, strategy)
    coll = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=strategy == "bfd")
    return [coll([row]) for row in ds]  # one pack (2,048 tokens at most) per micro-batch


def batches(method: str, feats: list[dict], seed: int) -> list[dict]:
    """The micro-batches ``method`` makes of these features."""
    lengths = [len(f["input_ids"]) for f in feats]
    if method == "naive":
        return _padded(feats, np.random.default_rng(seed).permutation(len(feats)).tolist())
    if method == "group_by_length":
        from transformers.trainer_pt_utils import LengthGroupedSampler
        torch.manual_seed(seed)
        return _padded(feats, list(LengthGroupedSampler(BATCH, lengths=lengths)))
    if method.startswith("trl_"):
        return _trl(feats, method.removeprefix("trl_"))
    coll = PackingCollator()
    return [coll([feats[i] for i in p]) for p in packing.pack(lengths, MAX_LEN, "bfd")]


def train_step(method: str, model, opt, batch: dict) -> int:
    """One optimizer step on one micro-batch; returns its real (non-padding) token count."""
    batch = dict(batch)
    if method.startswith("ours"):
        chunk = 0 if method == "ours_full_ce" else CE_CHUNK_SIZE
        sums, _ = forward_loss_sums(model, batch, "packing_weighted", chunk, varlen=True)
        loss = objective("packing_weighted", sums, {"sequences": batch["num_sequences"]}, 1)
        real = batch["input_ids"].numel()
    else:
        for k in NON_MODEL_KEYS + ("seq_idx",):
            batch.pop(k, None)
        loss = model(**batch, use_cache=False).loss
        real = int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return real


def run(quick: bool) -> dict:
    """Median tokens/s per method over interleaved rounds on identical subsets."""
    rounds, per_round = (3, 24) if quick else (5, 96)
    lengths = long_tail_lengths(1200, seed=0)
    feats = features(lengths, seed=0)
    nets = models(list(METHODS))
    opts = {m: torch.optim.AdamW(nets[m].parameters(), lr=1e-4) for m in METHODS}
    tps: dict[str, list[float]] = {m: [] for m in METHODS}
    wall: dict[str, list[float]] = {m: [] for m in METHODS}
    rng = np.random.default_rng(1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for r in range(rounds):
            subset = [feats[i] for i in rng.choice(len(feats), per_round, replace=False)]
            for m in (METHODS if r % 2 == 0 else METHODS[::-1]):
                prepared = batches(m, subset, seed=r)
                t0, c0 = time.perf_counter(), time.process_time()
                tokens = sum(train_step(m, nets[m], opts[m], b) for b in prepared)
                tps[m].append(tokens / (time.process_time() - c0))
                wall[m].append(tokens / (time.perf_counter() - t0))
    finally:
        torch.set_num_threads(threads)
    med = {m: median(v) for m, v in tps.items()}
    ours, naive, trl_bfd = med["ours"], med["naive"], med["trl_bfd"]
    return result("throughput_tok_s", ours, naive, ">= 3.0 x naive and >= 1.2 x TRL bfd", "tokens per CPU-s (1 thread)",
                  ours / naive >= 3.0 and ours / trl_bfd >= 1.2, tokens_per_s=med,
                  ratio_vs_trl_bfd=ours / trl_bfd, ratio_vs_trl_wrapped=ours / med["trl_wrapped"],
                  ratio_vs_group_by_length=ours / med["group_by_length"],
                  ratio_chunked_vs_full_ce=ours / med["ours_full_ce"], rounds=rounds,
                  sequences_per_round=per_round, naive_padding_fraction=_naive_padding(lengths),
                  per_round=tps, wall_tokens_per_s_median={m: median(v) for m, v in wall.items()})


def _naive_padding(lengths: np.ndarray) -> float:
    b = lengths[: len(lengths) // BATCH * BATCH].reshape(-1, BATCH)
    return float(1 - b.sum() / (b.max(axis=1).sum() * BATCH))
