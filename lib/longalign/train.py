"""The training entry point: HF ``Trainer`` with LongAlign's batching methods and exact loss weighting.

Methods (``TrainConfig.method``): ``naive`` and ``sorted`` batching with a per-sequence mean loss;
``packing``, packs flattened to ``[1, T]`` with restarting ``position_ids`` and the paper's biased
Eq. 3; ``packing_weighted``, the same packs with loss weighting (Eq. 4 = Eq. 2); ``pretrain``,
packed plain text with a token-mean LM loss (continual pretraining, notebook 02). The counts a loss
divides by are taken over the whole optimizer step, every micro-step on every rank, so the update
equals Eq. 2's for any gradient accumulation and world size; the official code is exact only for
GA 1 on one node. The loss itself lives in :mod:`longalign.loss`. Each run writes
``outputs/runs/{name}.json`` and HF checkpoints under ``outputs/runs/{name}/``; reruns resume. Profile
parameters become a ``TrainConfig`` through :func:`config_from_params` only.

Paper command (8xA800, ZeRO-3 + CPU offload; one run)::

    torchrun --nproc_per_node 8 scripts/train.py --profile paper --method packing_weighted --seed 0
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow.compute as pc
import torch
import torch.distributed as dist
import transformers
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

from longalign import batching, collate, models, packing, paths, records, tokenize
from longalign.dist import all_gather_rows, all_reduce_sum, barrier, is_main, num_processes
from longalign.loss import CE_CHUNK_SIZE, forward_loss_sums, objective

METHODS = ("naive", "sorted", "packing", "packing_weighted", "pretrain")
PACKED_METHODS = ("packing", "packing_weighted", "pretrain")
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}
# the tiny Llama's shape: the keys of model_overrides, and the profile keys config_from_params folds into it
TINY_OVERRIDES = ("hidden", "layers", "heads", "max_position", "rope_theta")


@dataclass
class TrainConfig:
    """One training run: method, model, data, optimisation and output name (JSON-serialisable)."""

    method: str = "packing_weighted"
    model: str = "tiny"  # "tiny" | "smollm2" | HF path / hub id (e.g. outputs/models/<name>)
    tokenizer: str | None = None  # default: bpe-8k for "tiny", the model's own otherwise
    data: list[str] = field(default_factory=list)  # chat JSONL files ({"messages", "meta"} rows)
    tokenized_dir: str | None = None  # or a datasets.save_to_disk folder with input_ids / labels
    output_name: str | None = None  # default "{method}-seed{seed}"
    max_len: int = 2048
    max_steps: int = -1  # > 0 overrides num_epochs
    num_epochs: float = 1.0
    seed: int = 0
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.03
    lr_scheduler: str = "cosine"
    adam_betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    optimizer: str = "adamw_torch"  # any TrainingArguments.optim ("sgd" in the equivalence test)
    per_device_batch: int = 1  # sequences (naive / sorted) or packs (packing*) per micro-step
    grad_accum: int = 1
    gradient_checkpointing: bool = False
    bf16: bool = False
    dtype: str = "float32"  # parameter dtype: float32 | float64 | bfloat16
    deepspeed: str | None = None  # e.g. configs/deepspeed/zero3_offload.json
    pack_strategy: str = "bfd"
    save_steps: int = 0  # 0: only the final checkpoint
    model_overrides: dict[str, Any] = field(default_factory=dict)  # tiny: hidden/layers/heads/max_position/rope_theta
    attn_implementation: str | None = None  # default: FA2 on CUDA, longalign packed attention on CPU
    explicit_sync: bool = True  # DDP only: timed barrier + one explicit gradient all-reduce
    sync_micro_steps: bool = True  # with explicit_sync: ranks meet after each micro-step (like ZeRO-3)
    use_cpu: bool = False
    ce_chunk_size: int = CE_CHUNK_SIZE  # > 0: chunked cross-entropy from hidden states (no [T, V] logits); 0: full logits
    equal_pack_counts: bool = True  # packing*: BFD's pack count with ~equal sequences per pack (keeps the data mixture)
    sorted_grouping: str = "micro_step"  # sorted: shuffled groups of one micro-step (official) | "step" (whole steps)
    num_threads: int = 0  # > 0: torch CPU threads while training (1 = one core per process, as each rank of a 2-core launch)

    def name(self) -> str:
        """The run name: ``output_name`` or ``{method}-seed{seed}``."""
        return self.output_name or f"{self.method}-seed{self.seed}"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Build from a dict, rejecting unknown keys (typos in YAML profiles fail loudly)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig keys {unknown}; known: {sorted(known)}")
        d = dict(d)
        if "adam_betas" in d:
            d["adam_betas"] = tuple(d["adam_betas"])
        return cls(**d)

    def validate(self) -> None:
        """Raise ValueError on inconsistent settings."""
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose from {METHODS}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose from {sorted(DTYPES)}")
        if self.per_device_batch < 1 or self.grad_accum < 1 or self.max_len < 2 or self.ce_chunk_size < 0:
            raise ValueError("per_device_batch and grad_accum must be >= 1, max_len >= 2 and ce_chunk_size >= 0")
        bad = sorted(set(self.model_overrides) - set(TINY_OVERRIDES))
        if bad:
            raise ValueError(f"unknown model_overrides {bad}; known: {TINY_OVERRIDES}")


# ----------------------------------------------------------------------------- batching

def batch_sampler(lengths: list[int], cfg: TrainConfig, world_size: int, rank: int):
    """This rank's micro-batch sampler for the method (core ``batching``; deterministic per seed/epoch).

    Packed methods other than pretraining use ``equal_counts`` packs when ``pack_strategy`` is
    "bfd" and ``equal_pack_counts`` is on: Eq. 4 divides each step by its own M, so steps of very
    different M would reweight the data mixture over the epoch (``longalign.weighting``).
    """
    common = dict(world_size=world_size, rank=rank, seed=cfg.seed, grad_accum=cfg.grad_accum)
    if cfg.method in PACKED_METHODS:
        even = cfg.equal_pack_counts and cfg.pack_strategy == "bfd" and cfg.method != "pretrain"
        return batching.PackedBatchSampler(lengths, cfg.max_len, packs_per_device=cfg.per_device_batch,
                                           strategy="equal_counts" if even else cfg.pack_strategy,
                                           yield_pack_ids=True, **common)
    if cfg.method == "naive":
        return batching.RandomBatchSampler(lengths, cfg.per_device_batch, **common)
    return batching.SortedBatchSampler(lengths, cfg.per_device_batch, grouping=cfg.sorted_grouping, **common)


def micro_work(batch: dict[str, Any]) -> tuple[int, int]:
    """(positions computed, attention units) of a collated micro-batch, as ``simulate.micro_features`` counts them.

    A packed row attends within each segment (Σ L_i², from ``cu_seq_lens_q``); a padded ``[B, W]``
    batch runs stock sdpa over every row's full width (B·W², padding included).
    """
    ids = batch["input_ids"]
    if "cu_seq_lens_q" in batch:
        seg = batch["cu_seq_lens_q"].to(torch.int64).diff()
        return ids.numel(), int((seg * seg).sum())
    rows, width = ids.shape
    return rows * width, rows * width * width


def collate_micro_batch(features: list[dict], packed: bool, pad_id: int) -> dict[str, Any]:
    """Core collators: packed ``[1, T]`` plus per-token ``pack_ids`` (for Eq. 3), or padded ``[B, T]``."""
    make = collate.PackingCollator(pad_token_id=pad_id) if packed else collate.PaddingCollator(pad_token_id=pad_id)
    batch = make(features)
    # no float tensor may reach Trainer: under DeepSpeed it casts them to bf16 (weights come from target_counts)
    batch.pop("loss_weights")
    if not packed:
        return batch
    sizes = torch.tensor([len(f["input_ids"]) for f in features])
    batch["pack_ids"] = torch.repeat_interleave(torch.tensor([f["pack_id"] for f in features]), sizes)[None]
    return batch


class _StepEndCallback(TrainerCallback):
    """Closes each step's log row once the optimizer has stepped."""

    def __init__(self, trainer: "LongAlignTrainer"):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer.finish_step()


class _SamplerEpochCallback(TrainerCallback):
    """Trainer only reaches ``set_epoch`` of prepared loaders; ours is per-rank and unprepared."""

    def __init__(self, sampler):
        self.sampler = sampler

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.sampler.set_epoch(int(state.epoch or 0))


# ----------------------------------------------------------------------------- the Trainer

class LongAlignTrainer(Trainer):
    """Trainer whose loss is counted over the whole optimizer step (all ranks x all micro-steps).

    K (packs), M (sequences with targets) and N (target tokens) are all-reduced over the step before
    its first forward (:meth:`get_batch_samples`). Trainer's division by GA is switched off
    (``loss_is_scaled_for_ga``) and :func:`longalign.loss.objective` multiplies by ``world_size`` to
    undo DDP's / DeepSpeed's gradient mean, so the accumulated gradient equals Eq. 2's for any GA,
    world size and packs per device (tested against an unpacked reference in
    ``tests/test_train_equivalence.py`` and under two-process ZeRO-3 + CPU offload in
    ``tests/test_deepspeed.py``). The weights 1/N_i come from the collators' integer
    ``target_counts``: Trainer casts float inputs to bf16 under DeepSpeed, which would move 1/N_i by
    up to 0.4 %, so no float tensor is handed to it.
    """

    def __init__(self, *args, cfg: TrainConfig, lengths: list[int], pad_id: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.cfg, self.lengths, self.pad_id = cfg, list(lengths), pad_id
        self.packed = cfg.method in PACKED_METHODS
        self.loss_is_scaled_for_ga = True  # our loss already divides by the step totals
        self.step_log: list[dict[str, Any]] = []
        self._micro, self._n_micro, self._totals, self._acc, self._pending = 0, 0, {}, {}, None
        self.add_callback(_StepEndCallback(self))

    # -- data
    def get_train_dataloader(self) -> torch.utils.data.DataLoader:
        """Per-rank sampler + core collator; not passed through accelerate (the sampler already shards)."""
        sampler = batch_sampler(self.lengths, self.cfg, self.args.world_size, self.args.process_index)
        self.add_callback(_SamplerEpochCallback(sampler))
        data = batching.WithPackIds(self.train_dataset) if self.packed else self.train_dataset
        return torch.utils.data.DataLoader(
            data, batch_sampler=sampler, num_workers=0,
            collate_fn=lambda feats: collate_micro_batch(feats, self.packed, self.pad_id))

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Fetch the step's micro-batches and all-reduce K, M, N and token counts before any forward."""
        batches = []
        for _ in range(num_batches):
            try:
                batches.append(next(epoch_iterator))
            except StopIteration:
                break
        local = torch.zeros(6, dtype=torch.float64)
        for b in batches:
            real = int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel()
            local += torch.tensor([b["num_target_tokens"], b["num_sequences"], b["num_packs"], real,
                                   b["input_ids"].numel(), 1.0], dtype=torch.float64)
        total = all_reduce_sum(local, self.args.device)
        self._totals = dict(zip(("targets", "sequences", "packs", "tokens", "positions", "micro"), total.tolist()))
        self._micro, self._n_micro = 0, len(batches)
        self._acc = {"ce": 0.0, "seq": 0.0, "compute": 0.0, "wait": 0.0, "comm": 0.0, "micro_rows": [],
                     "t0": time.perf_counter()}
        return batches, None

    # -- loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """This rank's weighted share of the step objective (see the class docstring).

        ``world_size * Σ_t w_t CE_t / D`` with w = 1/N_i, D = M for per-sequence means; w = 1/N_pack,
        D = K for Eq. 3; w = 1, D = N for pretraining.
        """
        sums, out = forward_loss_sums(model, inputs, self.cfg.method, self.cfg.ce_chunk_size,
                                      self.packed and self._varlen())
        totals = self._totals or {"targets": inputs["num_target_tokens"], "sequences": inputs["num_sequences"],
                                  "packs": inputs["num_packs"]}  # outside a training step (evaluation)
        self._acc["ce"] = self._acc.get("ce", 0.0) + float(sums["ce"].detach())
        self._acc["seq"] = self._acc.get("seq", 0.0) + float(sums["seq"].detach())
        loss = objective(self.cfg.method, sums, totals, self.args.world_size)
        return (loss, out) if return_outputs else loss

    def _varlen(self) -> bool:
        impl = getattr(self.model.config, "_attn_implementation", "")
        return impl in ("flash_attention_2", "longalign_packed")

    # -- step
    def training_step(self, model, inputs, num_items_in_batch=None):
        """Forward + backward of one micro-step, timed; the last one reduces gradients and logs the step.

        Under plain DDP with ``explicit_sync`` gradients are reduced by one explicit all-reduce after
        a timed barrier, and with ``sync_micro_steps`` ranks also meet after every micro-step (as
        ZeRO-3's per-layer gathers force), so wait time is measured, not inferred. The step's row logs
        the token-mean and sequence-mean loss (whatever the objective), the learning rate,
        per-rank compute / wait / communication seconds and, per rank and micro-step, the compute
        seconds with the work done (:func:`micro_work`), which ``simulate.fit_cost_model`` fits.
        """
        model.train()
        work = micro_work(inputs)
        inputs = self._prepare_inputs(inputs)
        explicit = self._explicit(model)
        t0 = time.perf_counter()
        with (model.no_sync() if explicit else contextlib.nullcontext()):
            with self.compute_loss_context_manager():
                loss = self.compute_loss(model, inputs)
            kwargs = {"scale_wrt_gas": False} if self.is_deepspeed_enabled else {}
            last = self._micro == self._n_micro - 1
            if last:  # the learning rate this step's update will use
                self._acc["lr"] = self._get_learning_rate()
            self.accelerator.backward(loss, **kwargs)
        self._acc["compute"] += time.perf_counter() - t0
        self._acc["micro_rows"].append([time.perf_counter() - t0, *work])
        if explicit and (self.cfg.sync_micro_steps or last):
            self._acc["wait"] += self._timed_barrier()
        if explicit and last:
            self._acc["comm"] += self._reduce_gradients(model)
        self._micro += 1
        if last:
            self._log_step()
        return loss.detach()

    def _explicit(self, model) -> bool:
        return self.cfg.explicit_sync and isinstance(model, DistributedDataParallel)

    def _timed_barrier(self) -> float:
        t0 = time.perf_counter()
        dist.barrier()
        return time.perf_counter() - t0

    def _reduce_gradients(self, model) -> float:
        """One flat all-reduce of all gradients, averaged as DDP would (the loss carries the x world)."""
        t0 = time.perf_counter()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.args.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()
        return time.perf_counter() - t0

    def _log_step(self) -> None:
        """All-reduce the step's loss sums, gather per-rank timings, append one log row."""
        a, t = self._acc, self._totals
        sums = all_reduce_sum(torch.tensor([a["ce"], a["seq"]], dtype=torch.float64), self.args.device).tolist()
        timing = all_gather_rows(torch.tensor([a["compute"], a["wait"], a["comm"]], dtype=torch.float64), self.args.device)
        # [rank, micro-step, (seconds, positions, attention)]: ranks run the same number of micro-steps
        micro = all_gather_rows(torch.tensor(a["micro_rows"], dtype=torch.float64).reshape(-1), self.args.device)
        micro = micro.reshape(micro.shape[0], -1, 3)
        row = {
            "step": self.state.global_step + 1, "loss_token": sums[0] / max(t["targets"], 1),
            "loss_sequence": sums[1] / max(t["sequences"], 1), "lr": a.get("lr"),
            "targets": int(t["targets"]), "sequences": int(t["sequences"]), "packs": int(t["packs"]),
            "tokens": int(t["tokens"]), "positions": int(t["positions"]), "micro_batches": int(t["micro"]),
            "compute_s": timing[:, 0].tolist(), "wait_s": timing[:, 1].tolist(), "comm_s": timing[:, 2].tolist(),
            "micro_compute_s": micro[:, :, 0].tolist(), "micro_positions": micro[:, :, 1].astype(int).tolist(),
            "micro_attention": micro[:, :, 2].astype(int).tolist(),
        }
        self._pending = row  # completed by on_step_end, after the optimizer step

    def finish_step(self) -> None:
        """Stamp the step's wall time (batch fetch -> optimizer step done) and append its log row."""
        row, self._pending = getattr(self, "_pending", None), None
        if row is None:
            return
        row["step_s"] = time.perf_counter() - self._acc["t0"]
        self.step_log.append(row)
        if self.args.process_index == 0:
            records.append_jsonl(Path(self.args.output_dir) / "log.jsonl", row)


# ----------------------------------------------------------------------------- model, data, arguments

def load_tokenizer(cfg: TrainConfig):
    """The run's tokenizer: ``cfg.tokenizer``, else bpe-8k for the tiny model, else the model's own."""
    name = cfg.tokenizer or ("bpe-8k" if cfg.model == "tiny" else cfg.model)
    return models.load_tokenizer(name)


def default_attn_implementation() -> str:
    """FA2 on CUDA with flash_attn; on CPU the exact per-segment packed attention of ``longalign.attention``."""
    impl = models.attention_implementation()
    if impl == "sdpa":
        try:  # lazily: registering the attention needs a recent transformers, and only CPU/sdpa runs use it
            from longalign.attention import ATTN_IMPLEMENTATION
            return ATTN_IMPLEMENTATION
        except ImportError:
            return impl
    return impl


def build_model(cfg: TrainConfig, tokenizer) -> torch.nn.Module:
    """A fresh tiny Llama (seeded) or a pretrained causal LM, in ``cfg.dtype``."""
    attn = cfg.attn_implementation or default_attn_implementation()
    dtype = DTYPES[cfg.dtype]
    if cfg.model == "tiny":
        o = cfg.model_overrides
        conf = models.tiny_llama_config(
            len(tokenizer), hidden=o.get("hidden", 256), layers=o.get("layers", 4), heads=o.get("heads", 4),
            max_position=o.get("max_position", max(8192, cfg.max_len)), rope_theta=o.get("rope_theta", 10_000.0))
        return models.tiny_llama(conf, seed=cfg.seed, dtype=dtype, attn_implementation=attn)
    if cfg.model_overrides:
        raise ValueError("model_overrides apply to model='tiny' only; extend pretrained models with longalign.context")
    model = models.load_causal_lm(cfg.model, dtype=dtype, attn_implementation=attn)
    check_packing_supported(cfg, model.config.to_dict())  # the loaded config, in case config.json was unreadable
    return model


def check_packing_supported(cfg: TrainConfig, config: dict | None = None) -> None:
    """ValueError naming the model when a packed method would let its packed sequences attend to each other.

    transformers' native architectures keep attention inside each packed sequence from the
    restarting ``position_ids``; ChatGLM's remote code does not, so only naive / sorted remain there.
    """
    if cfg.method not in PACKED_METHODS or cfg.model == "tiny":
        return
    problem = models.packing_refusal(cfg.model, config if config is not None else models.config_dict(cfg.model))
    if problem:
        raise ValueError(problem)


def load_train_dataset(cfg: TrainConfig, tokenizer):
    """Tokenized rows (input_ids, labels, length) from ``tokenized_dir`` or the chat JSONL ``data``.

    Data without a single target token (no rows, or every label -100) is refused, naming the data:
    it would train to a loss of 0.0 and be saved as a finished run.
    """
    if cfg.tokenized_dir:
        return check_trainable(_load_from_disk(cfg.tokenized_dir), f"tokenized_dir {cfg.tokenized_dir}")
    if not cfg.data:
        raise ValueError("TrainConfig needs `data` (JSONL paths) or `tokenized_dir` (or pass dataset=...)")
    missing = [p for p in cfg.data if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"training data not found: {missing}")
    name = _tokenized_name(cfg, tokenizer)
    if is_main() and not tokenize.tokenized_dir(name).is_dir():  # tokenize once, shared by runs and ranks
        dataset, stats = tokenize.tokenize_jsonl(cfg.data, tokenizer, cfg.max_len)  # refuses data with no targets
        tokenize.save_tokenized(dataset, name, stats)
    barrier()
    return check_trainable(tokenize.load_tokenized(name), f"{', '.join(map(str, cfg.data))} "
                                                         f"(tokenized in {tokenize.tokenized_dir(name)})")


def _load_from_disk(folder: str | Path):
    """``datasets.load_from_disk``, refusing a saved dataset with no rows (``datasets`` itself crashes on it)."""
    state = Path(folder) / "state.json"
    if state.is_file() and not json.loads(state.read_text(encoding="utf-8")).get("_data_files"):
        raise ValueError(f"training data tokenized_dir {folder} has no rows (an empty saved dataset): nothing to train on")
    return datasets.load_from_disk(str(folder))


def check_trainable(dataset, where: str):
    """``dataset`` if it has rows and at least one target label; else ValueError naming ``where``."""
    missing = {"input_ids", "labels"} - set(dataset.column_names)
    if missing:
        raise ValueError(f"training data {where} lacks the column(s) {sorted(missing)}; "
                         f"tokenize it with longalign.tokenize.tokenize_jsonl")
    if len(dataset) == 0:
        raise ValueError(f"training data {where} has no rows: nothing to train on; check the data files "
                         f"(notebook 01 writes them) and the tokenize summary of skipped records")
    if _target_tokens(dataset) == 0:
        raise ValueError(f"training data {where}: every label is -100 in all {len(dataset)} rows, so there is no "
                         f"target token (the loss would be 0.0 and nothing learned); check the label masking")
    return dataset


def _target_tokens(dataset) -> int:
    """Labels other than IGNORE_INDEX after each row's first position (never predicted), counted in Arrow."""
    labels = dataset.with_format("arrow")[:]["labels"]
    return int(pc.sum(pc.not_equal(pc.list_flatten(pc.list_slice(labels, 1)), collate.IGNORE_INDEX)).as_py() or 0)


def _tokenized_name(cfg: TrainConfig, tokenizer) -> str:
    """Cache key of the tokenized data: files (path, size, mtime), tokenizer and max_len."""
    key = [(str(Path(p).resolve()), Path(p).stat().st_size, Path(p).stat().st_mtime_ns) for p in cfg.data]
    key.append((getattr(tokenizer, "name_or_path", ""), len(tokenizer), cfg.max_len))
    digest = hashlib.sha1(json.dumps(key).encode()).hexdigest()[:10]
    return f"{Path(cfg.data[0]).stem}-{cfg.max_len}-{digest}"


def row_lengths(dataset, max_len: int) -> list[int]:
    """Token length of every row; rows longer than ``max_len`` are an error (truncate when tokenizing)."""
    lengths = list(dataset["length"]) if "length" in dataset.column_names else [len(x) for x in dataset["input_ids"]]
    bad = [i for i, n in enumerate(lengths) if n > max_len or n < 2]
    if bad:
        raise ValueError(f"{len(bad)} rows have length outside [2, max_len={max_len}] (first: row {bad[0]}, "
                         f"length {lengths[bad[0]]}); truncate from the right when tokenizing")
    return lengths


def training_arguments(cfg: TrainConfig, out_dir: Path) -> TrainingArguments:
    """HF TrainingArguments for the run (AdamW betas, cosine, warmup ratio, DeepSpeed, CPU/gloo)."""
    cpu = cfg.use_cpu or not torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=str(out_dir), max_steps=cfg.max_steps if cfg.max_steps > 0 else -1,
        num_train_epochs=cfg.num_epochs, per_device_train_batch_size=cfg.per_device_batch,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_ratio, lr_scheduler_type=cfg.lr_scheduler,
        adam_beta1=cfg.adam_betas[0], adam_beta2=cfg.adam_betas[1], weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm, optim=cfg.optimizer, bf16=cfg.bf16,
        activation_checkpointing=cfg.gradient_checkpointing, deepspeed=cfg.deepspeed,
        save_strategy="steps" if cfg.save_steps > 0 else "no", save_steps=max(cfg.save_steps, 1),
        logging_steps=1, report_to="none", seed=cfg.seed, data_seed=cfg.seed, remove_unused_columns=False,
        dataloader_num_workers=0, use_cpu=cpu, ddp_backend="gloo" if cpu and num_processes() > 1 else None,
        disable_tqdm=False, save_only_model=False,
    )
    if cfg.deepspeed and cpu and args.world_size > 1:
        # use_cpu makes accelerate start a plain gloo group; DeepSpeed's comm layer must wrap it too
        import deepspeed  # optional dependency: only DeepSpeed runs import it
        deepspeed.init_distributed(dist_backend="gloo")
    return args


# ----------------------------------------------------------------------------- the run

def run_dir(cfg: TrainConfig) -> Path:
    """``outputs/runs/{name}``: checkpoints, log.jsonl and the stored config of the run."""
    return paths.runs_dir() / cfg.name()


def record_path(cfg: TrainConfig) -> Path:
    """``outputs/runs/{name}.json``: the run record."""
    return paths.runs_dir() / f"{cfg.name()}.json"


def run_training(cfg: TrainConfig, dataset=None, overwrite: bool = False) -> dict[str, Any]:
    """Train (or resume, or return the finished record of) one run; returns the run record."""
    cfg.validate()
    check_packing_supported(cfg)  # before any tokenizing or loading
    out_dir, rec_path = run_dir(cfg), record_path(cfg)
    args = training_arguments(cfg, out_dir)  # first: it starts the process group under torchrun
    if overwrite and is_main():
        shutil.rmtree(out_dir, ignore_errors=True)
        rec_path.unlink(missing_ok=True)
    barrier()
    if rec_path.is_file():
        return _finished_record(cfg, rec_path)
    resume = _check_resume(cfg, out_dir)
    tokenizer = load_tokenizer(cfg)
    dataset = check_trainable(dataset, "dataset=") if dataset is not None else load_train_dataset(cfg, tokenizer)
    lengths = row_lengths(dataset, cfg.max_len)
    _seed_everything(cfg.seed)
    model = build_model(cfg, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    trainer = LongAlignTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                               cfg=cfg, lengths=lengths, pad_id=pad_id)
    t0 = time.perf_counter()
    with _torch_threads(cfg.num_threads):
        trainer.train(resume_from_checkpoint=resume)
    train_s = time.perf_counter() - t0
    _final_checkpoint(trainer, out_dir)
    rec = _make_record(cfg, trainer, out_dir, train_s, lengths) if is_main() else {}
    if is_main():
        records.write_record(rec_path, rec)
    barrier()
    return rec if is_main() else records.read_record(rec_path)


@contextlib.contextmanager
def _torch_threads(n: int):
    """Train with ``n`` torch CPU threads (0: leave as is), restoring the caller's count afterwards."""
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _finished_record(cfg: TrainConfig, rec_path: Path) -> dict[str, Any]:
    """The stored record of a finished run with this exact config (a different config is an error)."""
    rec = records.read_record(rec_path)
    if rec.get("config") != _jsonable(cfg):
        raise ValueError(f"{rec_path} holds a run with a different config; pick another output_name or overwrite=True")
    return rec


def _check_resume(cfg: TrainConfig, out_dir: Path) -> str | bool:
    """The newest complete checkpoint of the same config to resume from (False: none); store the config.

    Incomplete checkpoints (a kill during saving: missing or truncated files) are moved aside to
    ``broken-checkpoint-{step}-{time}``, never deleted, and the fallback is printed.
    """
    stored = out_dir / "train_config.json"
    if stored.is_file() and json.loads(stored.read_text()) != _jsonable(cfg):
        raise ValueError(f"{stored}: an unfinished run with a different config; pick another output_name or overwrite=True")
    if is_main():
        _set_aside_broken_checkpoints(out_dir)
        if not _checkpoints(out_dir):
            (out_dir / "log.jsonl").unlink(missing_ok=True)
        records.atomic_write_text(stored, json.dumps(_jsonable(cfg), indent=1))
    barrier()
    ckpts = _checkpoints(out_dir)  # after the barrier every rank sees the same, complete folders
    return str(ckpts[-1]) if ckpts else False


def _checkpoints(out_dir: Path) -> list[Path]:
    """``checkpoint-{step}`` folders (the names the Trainer resumes from), by step."""
    found = [p for p in out_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-", 1)[1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))


def _set_aside_broken_checkpoints(out_dir: Path) -> None:
    """Rename every incomplete checkpoint folder aside and say which complete one the run resumes from."""
    broken = [(p, why) for p in _checkpoints(out_dir) if (why := checkpoint_problem(p))]
    for path, why in broken:
        aside = path.with_name(f"broken-{path.name}-{time.strftime('%Y%m%dT%H%M%S')}")
        path.rename(aside)
        print(f"[train {out_dir.name}] {path.name} is incomplete ({why}): moved aside to {aside.name}", flush=True)
    if broken:
        left = _checkpoints(out_dir)
        print(f"[train {out_dir.name}] resuming from {left[-1].name}" if left else
              f"[train {out_dir.name}] no complete checkpoint left: training starts from step 0", flush=True)


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why a Trainer checkpoint folder cannot be resumed from (missing / truncated file), or None if complete."""
    ckpt = Path(ckpt)
    for name in ("trainer_state.json", "config.json"):
        if not _json_ok(ckpt / name):
            return f"{name} missing or unreadable"
    deepspeed_dir = _deepspeed_dir(ckpt)
    weights = sorted(ckpt.glob("*.safetensors")) + sorted(ckpt.glob("pytorch_model*.bin"))
    if not weights and deepspeed_dir is None:
        return "no model weights"
    if deepspeed_dir is None and not (ckpt / "optimizer.pt").is_file():
        return "no optimizer state (optimizer.pt)"
    if deepspeed_dir is not None and not any(deepspeed_dir.glob("*optim_states.pt")):
        return f"no optimizer state in {deepspeed_dir.name}/"
    for path in sorted(ckpt.rglob("*")):
        if path.is_file() and not _file_ok(path):
            return f"{path.relative_to(ckpt)} is truncated or unreadable"
    return None


def _deepspeed_dir(ckpt: Path) -> Path | None:
    """The ``global_step*`` folder named by DeepSpeed's ``latest`` file (maybe missing), if this is a DeepSpeed checkpoint."""
    latest = ckpt / "latest"
    return ckpt / latest.read_text().strip() if latest.is_file() else None


def _json_ok(path: Path) -> bool:
    try:
        json.loads(path.read_text(encoding="utf-8"))
        return True
    except (OSError, ValueError):
        return False


def _file_ok(path: Path) -> bool:
    """Cheap completeness test: torch files are zip archives (end record present), safetensors sizes add up."""
    if path.suffix in (".pt", ".pth", ".bin"):
        return zipfile.is_zipfile(path)
    if path.suffix == ".safetensors":
        return _safetensors_ok(path)
    if path.suffix == ".json":
        return _json_ok(path)
    return True


def _safetensors_ok(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(size))
    except (OSError, ValueError):
        return False
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    return path.stat().st_size == 8 + size + end


def _final_checkpoint(trainer: LongAlignTrainer, out_dir: Path) -> Path:
    """Save model + tokenizer at ``checkpoint-{final step}`` unless the Trainer already did."""
    path = out_dir / f"checkpoint-{trainer.state.global_step}"
    if not (path / "config.json").is_file():
        trainer.save_model(str(path))  # every rank calls it (ZeRO-3 gathers weights); rank 0 writes
    return path


def _make_record(cfg: TrainConfig, trainer: LongAlignTrainer, out_dir: Path, train_s: float,
                 lengths: list[int]) -> dict[str, Any]:
    """The run record (log read back from log.jsonl so it survives resumes)."""
    log = _read_log(out_dir / "log.jsonl")
    wall = float(sum(r["step_s"] for r in log))
    tokens, positions = sum(r["tokens"] for r in log), sum(r["positions"] for r in log)
    ckpts = _checkpoints(out_dir)
    return {
        "name": cfg.name(), "method": cfg.method, "seed": cfg.seed, "config": _jsonable(cfg),
        "world_size": trainer.args.world_size, "steps": len(log), "wall_s": wall, "process_train_s": train_s,
        "tokens": tokens, "tokens_per_s": tokens / wall if wall > 0 else None,
        "tokens_per_s_steady": _steady_throughput(log),
        "padding_fraction": 1 - tokens / positions if positions else 0.0,
        "final_loss_token": log[-1]["loss_token"] if log else None,
        "final_loss_sequence": log[-1]["loss_sequence"] if log else None,
        "n_sequences": len(lengths), "dataset_tokens": int(sum(lengths)),
        "attn_implementation": trainer.model.config._attn_implementation,
        "log": log, "checkpoints": [{"step": int(p.name.split("-")[1]), "path": str(p.relative_to(paths.outputs()))}
                                    for p in ckpts if (p / "config.json").is_file()],
        "machine": machine_info(),
    }


def _steady_throughput(log: list[dict[str, Any]]) -> float | None:
    """Tokens per second without the first step (one-time warm-up: allocations, lazy inits)."""
    rest = log[1:]
    wall = sum(r["step_s"] for r in rest)
    return sum(r["tokens"] for r in rest) / wall if rest and wall > 0 else None


def _read_log(path: Path) -> list[dict[str, Any]]:
    """Per-step rows, last write per step wins (a resumed run rewrites steps after its checkpoint)."""
    rows = {r["step"]: r for r in records.read_jsonl(path)} if path.is_file() else {}
    return [rows[k] for k in sorted(rows)]


def machine_info() -> dict[str, Any]:
    """Host, CPU/GPU and library versions for the record."""
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    try:
        import deepspeed
        info["deepspeed"] = deepspeed.__version__
    except ImportError:
        info["deepspeed"] = None
    return info


def _jsonable(cfg: TrainConfig) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(cfg)))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- notebook 03 / CLI runs

def suite_data(outputs_root: Path, suite: str) -> Path:
    """``outputs/data/mix-{suite}.jsonl`` written by notebook 01 (clear error if missing)."""
    path = Path(outputs_root) / "data" / f"mix-{suite}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run notebooks/01_data_construction.ipynb first (it writes mix-*.jsonl)")
    return path


def resolve_model(base_model: str, outputs_root: Path) -> str:
    """``tiny``, a folder under ``outputs/models`` (e.g. notebook 02's extended model), or a path / hub id."""
    local = Path(outputs_root) / "models" / base_model
    return str(local) if base_model != "tiny" and local.is_dir() else base_model


def config_from_params(params: dict[str, Any], outputs_root: Path | None = None, **fixed: Any) -> TrainConfig:
    """The one map from profile parameters to a TrainConfig: keys named after TrainConfig fields, ``fixed`` over them.

    Keys that are not TrainConfig fields (a notebook's other parameters) are ignored, except
    ``base_model`` (the default ``model``, looked up under ``outputs/models`` first) and the tiny
    Llama's shape keys (:data:`TINY_OVERRIDES`), which become ``model_overrides`` when the model is
    ``tiny`` (given in ``fixed``, they always do; an explicit ``model_overrides`` wins over both). A
    repo-relative ``deepspeed`` becomes absolute; a ``None`` left for a field that needs a value is refused.
    """
    known = {f.name for f in fields(TrainConfig)}
    spec = {k: v for k, v in params.items() if k in known and k not in fixed}
    spec["model"] = resolve_model(fixed.pop("model", params.get("model", params.get("base_model", "tiny"))),
                                  Path(outputs_root) if outputs_root is not None else paths.outputs())
    shape = {k: params[k] for k in TINY_OVERRIDES if k in params and spec["model"] == "tiny"}
    shape.update({k: fixed.pop(k) for k in TINY_OVERRIDES if k in fixed})
    spec.update(fixed)
    if shape:
        spec["model_overrides"] = {**shape, **spec.get("model_overrides", {})}
    unset = sorted(k for k, v in spec.items() if v is None and getattr(TrainConfig, k, None) is not None)
    if unset:
        raise ValueError(f"parameters {unset} are None (unset) but TrainConfig needs a value; set them in the profile")
    if spec.get("deepspeed") and not Path(spec["deepspeed"]).is_absolute():
        spec["deepspeed"] = str(paths.ROOT / spec["deepspeed"])
    return TrainConfig.from_dict(spec)


def method_settings(params: dict[str, Any], method: str) -> dict[str, Any]:
    """``params["method_overrides"][method]`` (TrainConfig fields only; a ``None`` grad_accum is derived later)."""
    return _overrides(params, "method_overrides", method)


def _overrides(params: dict[str, Any], key: str, name: str) -> dict[str, Any]:
    """``params[key][name]``, refused (naming both) when a key is not a TrainConfig field."""
    return _fields_only((params.get(key) or {}).get(name) or {}, f"{key}[{name!r}]")


def _fields_only(overrides: dict[str, Any], label: str) -> dict[str, Any]:
    """A copy of ``overrides``, refused (naming ``label``) when a key is not a TrainConfig field."""
    known = {f.name for f in fields(TrainConfig)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise ValueError(f"{label} has keys {bad} that are not TrainConfig fields; known: {sorted(known)}")
    return dict(overrides)


def seeds_of_method(params: dict[str, Any], method: str) -> int:
    """How many seeds ``method`` trains on the main suite: ``method_seeds[method]``, else ``num_seeds``."""
    extra = params.get("method_seeds") or {}
    unknown = sorted(set(extra) - set(METHODS))  # not params["methods"]: callers narrow that list
    if unknown:  # a mistyped method would silently train the default count
        raise ValueError(f"method_seeds names methods {unknown} that do not exist; methods: {list(METHODS)}")
    n = extra.get(method, params.get("num_seeds", 1))
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"method_seeds[{method!r}] must be an int >= 1, got {n!r}")
    return n


def training_run_configs(params: dict[str, Any], outputs_root: Path) -> list[TrainConfig]:
    """Notebook 03's runs from its parameters: methods x seeds on ``suite``, then packing_weighted per suite.

    Every method trains ``num_seeds`` seeds from ``seed`` unless ``method_seeds`` gives it its own count
    (a claim resting on a small difference between two methods gets more seeds than the rest); the
    suite runs train ``num_seeds``.

    Each method's run is :func:`config_from_params` of the parameters with ``method_overrides[method]``
    over them (e.g. ``{"naive": {"grad_accum": 12, "max_len": 57344}}``: the paper's GA 12 and, for
    ChatGLM, 56k naive / sorted data, footnote 5). A naive / sorted ``grad_accum: None`` is derived
    here (:func:`derive_naive_grad_accum`), for the notebook and scripts/train.py alike. ``run_overrides``
    (run name -> TrainConfig fields) comes last, e.g. one run's intermediate checkpoints. Notebook 05's own
    learning-curve run is not a compared run: :func:`curve_run_configs`.
    """
    seed, num_seeds = params.get("seed", 0), params.get("num_seeds", 1)
    per_method = {m: seeds_of_method(params, m) for m in params["methods"]}
    seeds = [seed + k for k in range(num_seeds)]
    settings = _resolved_settings(params, outputs_root, {*params["methods"], "packing_weighted"})
    # seed-major, so runs trained side by side (parallel_runs) pair up alike
    runs = [(m, s, params["suite"], "") for s in range(seed, seed + max(per_method.values(), default=0))
            for m in params["methods"] if s < seed + per_method[m]]
    runs += [("packing_weighted", s, suite, f"{suite}-") for suite in params.get("suites", [])
             if suite != params["suite"] for s in seeds]
    names = {f"{prefix}{m}-seed{s}" for m, s, _, prefix in runs}
    unknown = sorted(set(params.get("run_overrides") or {}) - names)
    if unknown:  # a mistyped run name would silently change nothing
        raise ValueError(f"run_overrides names runs {unknown} that this recipe does not train; runs: {sorted(names)}")
    return [config_from_params(params, outputs_root, **{**settings[m], **_overrides(params, "run_overrides", name)},
                               method=m, seed=s, data=[str(suite_data(outputs_root, suite))], output_name=name)
            for m, s, suite, prefix in runs for name in [f"{prefix}{m}-seed{s}"]]


def _resolved_settings(params: dict[str, Any], outputs_root: Path, methods: Iterable[str]) -> dict[str, dict[str, Any]]:
    """:func:`method_settings` of each method, a naive / sorted ``grad_accum: None`` derived (once per batch size)."""
    settings = {m: method_settings(params, m) for m in methods}
    derived: dict[int | None, int] = {}  # one derivation per naive batch size (it tokenizes the suite)
    for method, over in settings.items():
        if "grad_accum" in over and over["grad_accum"] is None and method not in PACKED_METHODS:
            batch = over.get("per_device_batch")
            if batch not in derived:
                derived[batch] = derive_naive_grad_accum(params, outputs_root, batch)
            over["grad_accum"] = derived[batch]
    return settings


def curve_run_configs(params: dict[str, Any], outputs_root: Path) -> list[TrainConfig]:
    """Notebook 05's learning-curve run, ``curve-{method}-seed{seed}`` on ``suite``: ``curve_run``'s fields over the method's.

    Empty ``curve_run`` (the paper profile, whose compared runs already save checkpoints): no run.
    On the cpu profile the compared runs stop after a handful of steps, so the curve (Fig. 6: the
    paper's 2 epochs, checkpoints along the way) gets its own run; its method is ``packing_weighted``
    (the paper's Fig. 6 run) and its seed ``seed`` unless ``curve_run`` names others.
    """
    over = _fields_only(params.get("curve_run") or {}, "curve_run")
    if not over:
        return []
    method, seed = over.pop("method", "packing_weighted"), over.pop("seed", params.get("seed", 0))
    settings = _resolved_settings(params, outputs_root, [method])[method]  # as for the compared runs
    return [config_from_params(params, outputs_root, **{**settings, **over}, method=method, seed=seed,
                               data=[str(suite_data(outputs_root, params["suite"]))],
                               output_name=f"curve-{method}-seed{seed}")]


def derive_naive_grad_accum(params: dict[str, Any], outputs_root: Path, per_device_batch: int | None = None) -> int:
    """Naive / sorted GA giving as many sequences per optimizer step as packing has on average (paper: 12).

    Sequences per pack come from packing the main suite's token lengths at ``max_len``; the step of
    packing holds ``per_device_batch x grad_accum`` packs (packing's, overrides included), that of
    naive / sorted ``per_device_batch x GA`` sequences (``per_device_batch`` when given, else the parameters').
    """
    p = {**params, **method_settings(params, "packing")}
    probe = TrainConfig(model=resolve_model(p.get("base_model", "tiny"), outputs_root), max_len=p["max_len"],
                        data=[str(suite_data(outputs_root, p["suite"]))])
    lengths = _suite_lengths(probe)
    per_pack = len(lengths) / len(packing.pack(lengths, p["max_len"]))
    per_step = per_pack * p.get("per_device_batch", 1) * p.get("grad_accum", 1)
    return max(1, round(per_step / (per_device_batch or params.get("per_device_batch", 1))))


def _suite_lengths(cfg: TrainConfig) -> list[int]:
    """Token lengths of ``cfg.data`` (tokenized and cached by one process, in memory on every rank of a launch)."""
    tokenizer = load_tokenizer(cfg)
    if num_processes() == 1:
        return row_lengths(load_train_dataset(cfg, tokenizer), cfg.max_len)
    # before the process group exists ranks cannot share the tokenized cache safely: tokenize in memory
    dataset, _ = tokenize.tokenize_jsonl(cfg.data, tokenizer, cfg.max_len, progress=False)
    return row_lengths(dataset, cfg.max_len)


@torch.no_grad()
def evaluate_loss(model_path: str | Path, dataset, max_len: int, ce_chunk_size: int = CE_CHUNK_SIZE) -> dict[str, float]:
    """Token-mean and sequence-mean target loss of a checkpoint on tokenized rows (packed forwards)."""
    model = AutoModelForCausalLM.from_pretrained(model_path, attn_implementation=default_attn_implementation())
    model.eval()
    totals = {"ce": 0.0, "seq": 0.0, "targets": 0, "sequences": 0}
    for pack in tqdm(packing.pack(row_lengths(dataset, max_len), max_len), desc="eval packs", leave=False):
        batch = collate_micro_batch([{**dataset[i], "pack_id": 0} for i in pack], True, 0)
        sums, _ = forward_loss_sums(model, batch, "packing_weighted", ce_chunk_size, varlen=True)
        totals["ce"] += float(sums["ce"])
        totals["seq"] += float(sums["seq"])
        totals["targets"] += batch["num_target_tokens"]
        totals["sequences"] += batch["num_sequences"]
    return {"loss_token": totals["ce"] / max(totals["targets"], 1),
            "loss_sequence": totals["seq"] / max(totals["sequences"], 1),
            "targets": totals["targets"], "sequences": totals["sequences"]}


def launch_runs(cfgs: list[TrainConfig], nproc: int = 1, tag: str = "runs", port: int | None = None,
                workers: int = 1) -> list[dict[str, Any]]:
    """Train configs here, ``workers`` single-process runs at once, or in one ``torchrun`` launch (``nproc`` ranks)."""
    if nproc <= 1 and workers > 1 and len(cfgs) > 1:
        return _parallel_runs(cfgs, workers, tag)
    if nproc <= 1:
        return [run_training(c) for c in tqdm(cfgs, desc=tag)]
    port = port or free_port()
    spec = paths.outputs() / "launch" / f"{tag}.json"
    records.atomic_write_text(spec, json.dumps([asdict(c) for c in cfgs]))
    env = {**os.environ, "LONGALIGN_OUTPUTS": str(paths.outputs()),
           "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // nproc))}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(port),
           str(paths.ROOT / "scripts" / "train.py"), "--config-file", str(spec)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    print("\n".join(line for line in proc.stdout.splitlines() if line.startswith("{")))
    if proc.returncode:
        raise RuntimeError(f"torchrun failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-4000:]}")
    return [records.read_record(record_path(c)) for c in cfgs]


def _parallel_runs(cfgs: list[TrainConfig], workers: int, tag: str) -> list[dict[str, Any]]:
    """Independent single-process runs, ``workers`` at a time, each in a spawned process (one core each on 2 cores).

    A 1-thread run leaves the other core of a 2-core machine idle; two at once nearly halve the wall
    time. Datasets are tokenized here first: two processes must not write one cache folder.
    """
    for cfg in cfgs:
        if not record_path(cfg).is_file() and not cfg.tokenized_dir:
            load_train_dataset(cfg, load_tokenizer(cfg))
    threads = max(1, (os.cpu_count() or 2) // workers)  # for runs with num_threads 0 (torch's default: every core)
    log = paths.outputs() / "launch" / f"{tag}.log"  # the workers' Trainer output (the caller's screen stays readable)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.unlink(missing_ok=True)
    context = multiprocessing.get_context("spawn")  # a fork of a process holding torch threads can deadlock
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_setup, initargs=(threads, str(log))) as pool:
        futures = {pool.submit(run_training, c): c for c in cfgs}
        try:
            for done in tqdm(as_completed(futures), total=len(futures), desc=f"{tag} ({workers} at once)"):
                _raise_failed(done, futures[done], log)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # runs not started yet are dropped; records stay atomic
            raise
    return [records.read_record(record_path(c)) for c in cfgs]


def _raise_failed(done, cfg: TrainConfig, log: Path) -> None:
    """Re-raise a worker's failure naming the run and the worker log (the worker's traceback is chained)."""
    try:
        done.result()
    except Exception as err:
        raise RuntimeError(f"run {cfg.name()} failed: {err} (worker output: {log})") from err


def _worker_setup(threads: int, log: str) -> None:
    """Process-pool initializer: ``threads`` torch CPU threads, stdout and stderr appended to ``log``."""
    torch.set_num_threads(threads)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def free_port() -> int:
    """A TCP port nothing listens on now (two launches on one machine must not share a rendezvous port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
