"""Scaling LongAlign (paper Table 4): train the same recipe at several model sizes / context lengths and compare.

A *variant* is a dict naming one run: ``name`` plus any :class:`longalign.train.TrainConfig` field
(``model``, ``method``, ``max_len``, ``grad_accum``, ...); ``hidden`` / ``layers`` / ``heads`` become the
tiny Llama's ``model_overrides`` (:func:`longalign.train.config_from_params`, the one parameters -> TrainConfig map). The cpu profile sweeps the tiny model's width; the paper profile lists
Llama-2-13B-64k (packing + loss weighting, sorted batching) and ChatGLM3-6B-128k. Each variant gets
one record under ``outputs/results/scaling/`` with its parameter count, final training loss,
held-out loss and an offline long-QA score.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from longalign import paths
from longalign.records import output_lock, read_record, record_exists, write_record

def variant_config(variant: dict[str, Any], data: list[str], defaults: dict[str, Any]):
    """The TrainConfig of one variant: ``defaults`` (the notebook's parameters) overridden by the variant, run name ``scale-{name}``.

    Both go through :func:`longalign.train.config_from_params`; a variant's keys are TrainConfig fields
    or tiny-Llama shape keys (:data:`longalign.train.TINY_OVERRIDES`), anything else is refused by name.
    """
    from longalign.train import config_from_params

    if "name" not in variant:
        raise ValueError(f"scaling variant {variant!r} needs a 'name'")
    fixed = {k: v for k, v in variant.items() if k != "name"}
    return config_from_params(defaults, **fixed, data=list(data), output_name=f"scale-{variant['name']}")


def seeded_variants(variants: list[dict[str, Any]], seed: int, num_seeds: int) -> list[dict[str, Any]]:
    """Each variant once per seed ``seed .. seed+num_seeds-1``; the first seed keeps the variant's name, others get ``-seed{s}``."""
    if num_seeds < 1:
        raise ValueError(f"num_seeds must be >= 1, got {num_seeds}")
    return [{**v, "seed": v.get("seed", seed) + k, "name": v["name"] if k == 0 else f"{v['name']}-seed{v.get('seed', seed) + k}"}
            for k in range(num_seeds) for v in variants]


def count_parameters(path: str | Path) -> int:
    """Number of parameters of a saved checkpoint (tied embeddings counted once)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def scaling_path(name: str) -> Path:
    """``outputs/results/scaling/{name}.json``."""
    return paths.results_dir("scaling") / f"{name}.json"


def evaluate_variant(name: str, run: dict[str, Any], heldout, qa_items: list[dict[str, Any]], *,
                     max_len: int, qa_max_new_tokens: int) -> dict[str, Any]:
    """One record: size, training loss/time, held-out loss (packed forwards) and overlap long-QA score."""
    from longalign import train
    from longalign.eval import checkpoints, curves

    if len(heldout) == 0:
        raise ValueError("the held-out set is empty: tokenize heldout-longqa.jsonl with a max_len that keeps the answers")
    start = time.time()
    ckpt = paths.outputs() / run["checkpoints"][-1]["path"]
    held = train.evaluate_loss(ckpt, heldout, max_len, run["config"].get("ce_chunk_size", train.CE_CHUNK_SIZE))
    model, tokenizer = checkpoints.load_for_eval(ckpt)
    qa, rows = curves.score_items(model, tokenizer, qa_items, max_new_tokens=qa_max_new_tokens) if qa_items else (None, [])
    return {"name": name, "run": run["name"], "method": run["method"], "max_len": run["config"]["max_len"],
            "eval_max_len": max_len,
            "seed": run["seed"], "model": run["config"]["model"], "model_overrides": run["config"].get("model_overrides", {}),
            "params": count_parameters(ckpt), "steps": run["steps"], "tokens": run["tokens"],
            "train_wall_s": run["wall_s"], "final_loss_token": run["final_loss_token"],
            "final_loss_sequence": run["final_loss_sequence"], "heldout_loss_token": held["loss_token"],
            "heldout_loss_sequence": held["loss_sequence"], "heldout_sequences": held["sequences"],
            "qa_score": qa, "qa_items": rows, "eval_wall_s": time.time() - start}


def run_scaling(variants: list[dict[str, Any]], data: list[str], defaults: dict[str, Any], heldout,
                qa_items: list[dict[str, Any]], *, eval_max_len: int, qa_max_new_tokens: int = 48,
                nproc: int = 1) -> list[dict]:
    """Train (or resume) and evaluate every variant; one record each, finished ones read back.

    ``nproc > 1`` trains through one ``torchrun`` launch (:func:`longalign.train.launch_runs`), as the paper's 8 GPUs need.
    """
    from longalign import train

    # A second sweep waits for the first, then trains and evaluates only the variants still without a record.
    with output_lock(paths.results_dir("scaling")):
        todo = [v for v in variants if not record_exists(scaling_path(v["name"]))]
        cfgs = [variant_config(v, data, defaults) for v in todo]
        runs = train.launch_runs(cfgs, nproc=nproc, tag="scaling") if cfgs else []
        for variant, cfg, run in zip(todo, cfgs, runs):
            write_record(scaling_path(variant["name"]), evaluate_variant(
                variant["name"], run, heldout, qa_items, max_len=eval_max_len, qa_max_new_tokens=qa_max_new_tokens))
    return [read_record(scaling_path(v["name"])) for v in variants]
