"""DeepSpeed: the bf16 input cast, and two-process ZeRO-3 + CPU offload runs of the entry point (CPU, gloo).

The config is the paper's ``configs/deepspeed/zero3_offload.json`` (the official LongAlign stage-3
file: optimizer and parameter offload to CPU, bf16 "auto"), used through
``TrainingArguments(deepspeed=...)`` under ``torchrun --nproc_per_node 2`` with DS_ACCELERATOR=cpu.
DeepSpeed compiles its CPU Adam op once into ~/.cache/torch_extensions (75-130 s the first time).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from longalign import context, models, paths
from longalign.loss import loss_sums, target_weights
from longalign.train import (LongAlignTrainer, TrainConfig, build_model, collate_micro_batch, free_port, load_tokenizer,
                             training_arguments)

ROOT = Path(__file__).resolve().parents[1]
DS_CONFIG = ROOT / "configs" / "deepspeed" / "zero3_offload.json"
REFERENCE_DS_CONFIG = paths.SHARED / "reference" / "longalign_ds_config" / "stage3.json"


def test_config_matches_paper_settings():
    """Paper section 4.1: "DeepSpeed+ZeRO3+CPU offloading"; the official scripts train with --bf16, which
    "auto" follows (fp16 must not be forced on)."""
    ds = json.loads(DS_CONFIG.read_text())
    z = ds["zero_optimization"]
    assert (z["stage"], z["offload_optimizer"]["device"], z["offload_param"]["device"]) == (3, "cpu", "cpu")
    assert ds["bf16"]["enabled"] in (True, "auto") and ds["fp16"]["enabled"] in (False, "auto")


@pytest.mark.skipif(not REFERENCE_DS_CONFIG.is_file(), reason="../shared/reference/longalign_ds_config absent")
def test_config_equals_official_stage3_file():
    """Independent reference: the official LongAlign ``ds_config/stage3.json``, parsed, key for key."""
    assert json.loads(DS_CONFIG.read_text()) == json.loads(REFERENCE_DS_CONFIG.read_text())


@pytest.mark.slow
def test_zero3_offload_two_processes(tmp_path):
    tok = models.cpu_tokenizer()
    text = " ".join(f"record {i % 13} holds value {i % 7}." for i in range(600))
    data_dir = tmp_path / "data"
    context.pretrain_dataset([text] * 4, tok, max_len=96).save_to_disk(str(data_dir))
    cfg = TrainConfig(method="packing_weighted", tokenized_dir=str(data_dir), output_name="ds", max_len=192,
                      max_steps=4, learning_rate=3e-3, warmup_ratio=0.0, grad_accum=2, deepspeed=str(DS_CONFIG),
                      model_overrides={"hidden": 32, "layers": 1, "heads": 2})
    # the same run with chunked cross-entropy: the lm_head weight is gathered outside its module's forward
    chunked = {**cfg.__dict__, "output_name": "ds-chunked", "ce_chunk_size": 16}
    env = {**os.environ, "LONGALIGN_OUTPUTS": str(tmp_path / "out"), "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(ROOT / "scripts" / "train.py"), "--config-json", json.dumps(cfg.__dict__),
           "--config-json", json.dumps(chunked)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    rec = json.loads((tmp_path / "out" / "runs" / "ds.json").read_text())
    losses = [r["loss_sequence"] for r in rec["log"]]
    assert rec["world_size"] == 2 and len(losses) == 4
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0], losses
    assert (tmp_path / "out" / rec["checkpoints"][-1]["path"] / "config.json").is_file()
    # steps 2-4 depend on the earlier updates, so equal losses mean equal gradients through ZeRO-3
    rec_c = json.loads((tmp_path / "out" / "runs" / "ds-chunked.json").read_text())
    chunked_losses = [r["loss_sequence"] for r in rec_c["log"]]
    assert chunked_losses == pytest.approx(losses, rel=1e-5), (chunked_losses, losses)


@pytest.fixture()
def bf16_trainer(tmp_path):
    """A real LongAlignTrainer with the paper's DeepSpeed config and bf16 (no engine: only its input preparation)."""
    from accelerate.state import AcceleratorState
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    cfg = TrainConfig(method="packing_weighted", max_len=64, bf16=True, deepspeed=str(DS_CONFIG), use_cpu=True,
                      model_overrides={"hidden": 16, "layers": 1, "heads": 2})
    environ = dict(os.environ)  # TrainingArguments sets ACCELERATE_USE_DEEPSPEED and friends
    tok = load_tokenizer(cfg)
    model = build_model(cfg, tok)  # before the arguments: with a ZeRO-3 config alive, models build under zero.Init
    args = training_arguments(cfg, tmp_path / "run")
    feats = {"input_ids": [[1, 2, 3]], "labels": [[-100, 2, 3]]}
    import datasets
    trainer = LongAlignTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_dict(feats),
                               processing_class=tok, cfg=cfg, lengths=[3], pad_id=0)
    assert trainer.is_deepspeed_enabled
    yield trainer
    unset_hf_deepspeed_config()  # later tests in this process must not see a DeepSpeed setup
    AcceleratorState._reset_state(reset_partial_state=True)
    os.environ.clear()
    os.environ.update(environ)


def test_bf16_input_cast_keeps_weights_exact(bf16_trainer):
    """Trainer._prepare_inputs casts float inputs to bf16 under DeepSpeed; the weights still come out exactly 1/N_i.

    Every N_i in 1..65,536 once: the integer counts pass the cast untouched, while the float 1/N_i the
    collator used to send is cast, and ``round(1/w)`` then misses 64,278 of the 65,536 counts.
    """
    n = torch.arange(1, 65537)
    batch = {"labels": torch.full((1, 65537), 7), "target_counts": torch.cat([torch.zeros(1, dtype=torch.long), n])[None],
             "legacy_weights": torch.cat([torch.zeros(1), 1.0 / n.float()])[None]}
    batch["labels"][0, 0] = -100
    prepared = bf16_trainer._prepare_inputs(batch)
    assert prepared["legacy_weights"].dtype == torch.bfloat16 and prepared["target_counts"].dtype == torch.long
    recovered = torch.round(1.0 / prepared["legacy_weights"][0, 1:].double()).long()
    assert int((recovered != n).sum()) == 64278 and int(recovered[:189].ne(n[:189]).sum()) == 0
    valid = prepared["labels"][:, 1:] != -100
    assert torch.equal(target_weights(prepared, valid, torch.float64)["seq"], 1.0 / n.double())


def test_bf16_input_cast_keeps_per_sequence_mean(bf16_trainer):
    """A collated micro-batch through the cast: Σ CE/N_i equals the per-sequence means (N_i = 190, 777, 3001)."""
    feats = [{"input_ids": [5] * (n + 4), "labels": [-100] * 4 + [6] * n, "pack_id": 0} for n in (190, 777, 3001)]
    prepared = bf16_trainer._prepare_inputs(collate_micro_batch(feats, True, 0))
    assert not any(torch.is_tensor(v) and v.is_floating_point() for v in prepared.values())
    logits = torch.randn(1, prepared["input_ids"].shape[1], 11, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ce = F.cross_entropy(logits[0, :-1], prepared["labels"][0, 1:], ignore_index=-100, reduction="none")
    bounds = prepared["cu_seq_lens_q"].tolist()
    means = [ce[s:e - 1][prepared["labels"][0, s + 1:e] != -100].mean() for s, e in zip(bounds[:-1], bounds[1:])]
    assert [int((prepared["labels"][0, s + 1:e] != -100).sum()) for s, e in zip(bounds[:-1], bounds[1:])] == [190, 777, 3001]
    assert torch.allclose(loss_sums(logits, prepared)["seq"], torch.stack(means).sum(), rtol=1e-13, atol=0)


@pytest.mark.slow
def test_zero3_offload_gradient_equals_unpacked_reference(tmp_path):
    """Two ranks, ZeRO-3 + CPU offload, fp32: one SGD step of packing_weighted (GA 2) is Eq. 2's gradient.

    The paper's DeepSpeed file with only ``zero_force_ds_cpu_optimizer: false`` added (so a plain torch SGD
    may run on offloaded parameters). The update (θ0 − θ1) / lr is compared with the float64 unpacked
    reference (each sequence alone, mean over its targets, mean over all sequences of the step).
    Tolerance 1e-5: fp32 forward/backward, the fp32 update and the cross-rank reduction leave 3.9e-7
    relative (measured; fp32 eps is 6e-8), while a wrong rank or micro-step scaling, or Eq. 3's
    per-pack means, are off by 10 % or more.
    """
    from test_train_equivalence import make_dataset, reference_gradient, relative_error, update_from_checkpoint

    tok = models.cpu_tokenizer()
    start = tmp_path / "start"  # a saved start: under ZeRO-3 the run loads it, so both sides share θ0
    conf = models.tiny_llama_config(len(tok), hidden=32, layers=2, heads=2, max_position=8192)
    models.tiny_llama(conf, seed=0, dtype=torch.float32).save_pretrained(start)
    ds_cfg = json.loads(DS_CONFIG.read_text())
    (tmp_path / "ds.json").write_text(json.dumps({**ds_cfg, "zero_force_ds_cpu_optimizer": False}))
    data = make_dataset(4, seed=3)
    data.save_to_disk(str(tmp_path / "data"))
    lr = 10.0
    cfg = TrainConfig(method="packing_weighted", model=str(start), tokenizer="bpe-8k", tokenized_dir=str(tmp_path / "data"),
                      output_name="z3-grad", max_len=48, max_steps=1, optimizer="sgd", learning_rate=lr,
                      lr_scheduler="constant", warmup_ratio=0.0, max_grad_norm=0.0, grad_accum=2,
                      deepspeed=str(tmp_path / "ds.json"), ce_chunk_size=7)
    env = {**os.environ, "LONGALIGN_OUTPUTS": str(tmp_path / "out"), "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(ROOT / "scripts" / "train.py"), "--config-json", json.dumps(cfg.__dict__)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    rec = json.loads((tmp_path / "out" / "runs" / "z3-grad.json").read_text())
    assert rec["world_size"] == 2 and rec["log"][0]["sequences"] == len(data) and rec["log"][0]["micro_batches"] == 4
    start64 = AutoModelForCausalLM.from_pretrained(start, dtype=torch.float64)
    got = update_from_checkpoint(tmp_path / "out" / rec["checkpoints"][-1]["path"], start64, lr)
    err = relative_error(got, reference_gradient(data, AutoModelForCausalLM.from_pretrained(
        start, dtype=torch.float64, attn_implementation="sdpa")))
    assert err <= 1e-5, f"relative error {err:.3e}"
