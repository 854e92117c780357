"""Two-process DeepSpeed ZeRO-3 + CPU offload run of the training entry point on packed data (CPU, gloo).

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

from longalign import context, models
from longalign.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
DS_CONFIG = ROOT / "configs" / "deepspeed" / "zero3_offload.json"


def test_config_matches_paper_settings():
    ds = json.loads(DS_CONFIG.read_text())
    z = ds["zero_optimization"]
    assert z["stage"] == 3 and z["offload_optimizer"]["device"] == "cpu" and z["offload_param"]["device"] == "cpu"
    assert ds["bf16"]["enabled"] == "auto" and ds["train_micro_batch_size_per_gpu"] == "auto"
    assert ds["gradient_accumulation_steps"] == "auto" and ds["gradient_clipping"] == "auto"


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
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29544",
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
