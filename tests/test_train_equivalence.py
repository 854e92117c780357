"""Packed + weighted training through ``longalign.train`` equals unpacked per-sequence-mean training (Eq. 2).

One optimizer step with SGD (lr 1, no momentum, no clipping, no decay) in float64 makes the
parameter update equal to the accumulated gradient. The reference runs every sequence of the
step alone through the same freshly initialised tiny Llama, takes the mean CE over its target
tokens, averages over all M sequences and back-propagates: no packing, no weights, no Trainer.
The dataset is built so that its packs fill exactly one optimizer step (world x packs/device x GA
packs), so the step's sequences are the whole dataset. Eq. 3 (``packing``) must differ.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
from chatdata import random_chat_dataset
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from longalign import models
from longalign.train import TrainConfig, free_port, run_training

ROOT = Path(__file__).resolve().parents[1]
MAX_LEN = 48
OVERRIDES = {"hidden": 32, "layers": 2, "heads": 2}


def _pack_lengths(n_packs: int, rng: np.random.Generator) -> list[int]:
    """Lengths that best-fit-decreasing packs into exactly ``n_packs`` full packs of MAX_LEN.

    Two-sequence packs (b, MAX_LEN - b) with distinct b: each remainder best-fits only its own
    pack. Every third pack is a single full-length sequence, so packs differ in sequence count.
    """
    big = rng.choice(np.arange(25, MAX_LEN - 4), size=n_packs, replace=False)
    lengths = []
    for k, b in enumerate(big.tolist()):
        lengths += [MAX_LEN] if k % 3 == 1 else [b, MAX_LEN - b]
    return lengths


def make_dataset(n_packs: int, seed: int = 0) -> datasets.Dataset:
    """Random token sequences: a prompt (no targets) then a response (targets)."""
    rng = np.random.default_rng(seed)
    return random_chat_dataset(list(_pack_lengths(n_packs, rng)), rng)


def sgd_config(method: str, ga: int, ppd: int, name: str, **kw) -> TrainConfig:
    """One SGD step, lr 1, float64: the update is the gradient."""
    return TrainConfig(method=method, output_name=name, max_len=MAX_LEN, max_steps=1, seed=0, dtype="float64",
                       optimizer="sgd", learning_rate=1.0, lr_scheduler="constant", warmup_ratio=0.0,
                       max_grad_norm=0.0, weight_decay=0.0, per_device_batch=ppd, grad_accum=ga,
                       model_overrides=OVERRIDES, **kw)


def initial_model() -> torch.nn.Module:
    """The model ``run_training`` starts from (tiny Llama, seed 0, float64).

    Stock sdpa, not HF's eager attention: eager takes its softmax in float32 even for float64
    models, which leaves a ~5e-8 residue whose size depends on the CPU's vector width.
    """
    tok = models.cpu_tokenizer()
    conf = models.tiny_llama_config(len(tok), hidden=32, layers=2, heads=2, max_position=8192)
    return models.tiny_llama(conf, seed=0, dtype=torch.float64, attn_implementation="sdpa")


def reference_gradient(ds: datasets.Dataset, model: torch.nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Eq. 2 by hand: mean over sequences of each sequence's own mean target CE, unpacked (default: initial_model())."""
    model = model if model is not None else initial_model()
    losses = []
    for row in ds:
        ids = torch.tensor([row["input_ids"]])
        labels = torch.tensor(row["labels"])
        logits = model(input_ids=ids, use_cache=False).logits[0]
        losses.append(F.cross_entropy(logits[:-1], labels[1:], ignore_index=-100))
    torch.stack(losses).mean().backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def update_from_checkpoint(path: Path, start: torch.nn.Module | None = None, lr: float = 1.0) -> dict[str, torch.Tensor]:
    """(θ0 − θ1) / lr of the trained checkpoint (= the gradient under SGD); θ0 defaults to initial_model()."""
    before = dict((start if start is not None else initial_model()).named_parameters())
    after = dict(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64).named_parameters())
    return {n: (before[n] - after[n]).detach() / lr for n in before}


def relative_error(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """||a − b|| / ||b|| over all parameters."""
    num = sum(float(((a[n] - b[n]) ** 2).sum()) for n in b)
    den = sum(float((b[n] ** 2).sum()) for n in b)
    return (num / den) ** 0.5


@pytest.fixture()
def outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGALIGN_OUTPUTS", str(tmp_path / "out"))
    return tmp_path / "out"


def _checkpoint(rec: dict, outputs: Path) -> Path:
    return outputs / rec["checkpoints"][-1]["path"]


@pytest.mark.parametrize("ga,ppd", [(1, 1), (3, 1), (1, 2), (3, 2)])
def test_weighted_packing_equals_unpacked_mean_single_rank(ga, ppd, outputs):
    ds = make_dataset(ga * ppd)
    rec = run_training(sgd_config("packing_weighted", ga, ppd, f"eq-ga{ga}-p{ppd}", ce_chunk_size=5), dataset=ds)
    assert rec["steps"] == 1 and rec["log"][0]["sequences"] == len(ds)
    err = relative_error(update_from_checkpoint(_checkpoint(rec, outputs)), reference_gradient(ds))
    assert err <= 1e-12, f"relative error {err:.3e}"


@pytest.mark.parametrize("ce_chunk_size", [0, 7])
def test_exact_with_stock_sdpa_block_mask(ce_chunk_size, outputs):
    """Stock sdpa (dense block mask from the restarting position_ids) is exact too, with either loss path."""
    ds = make_dataset(6)
    cfg = sgd_config("packing_weighted", 3, 2, f"eq-sdpa-{ce_chunk_size}", attn_implementation="sdpa",
                     ce_chunk_size=ce_chunk_size)
    rec = run_training(cfg, dataset=ds)
    err = relative_error(update_from_checkpoint(_checkpoint(rec, outputs)), reference_gradient(ds))
    assert err <= 1e-12, f"relative error {err:.3e}"


def test_unweighted_packing_is_biased(outputs):
    """Eq. 3 (each pack's token mean, averaged over packs) is not the per-sequence mean."""
    ds = make_dataset(3)
    rec = run_training(sgd_config("packing", 3, 1, "eq3"), dataset=ds)
    err = relative_error(update_from_checkpoint(_checkpoint(rec, outputs)), reference_gradient(ds))
    assert err > 1e-2, f"Eq. 3 unexpectedly matched Eq. 2 (relative difference {err:.3e})"


def test_naive_and_sorted_use_sequence_mean(outputs):
    ds = make_dataset(2)
    ref = reference_gradient(ds)
    for method in ("naive", "sorted"):
        rec = run_training(sgd_config(method, 2, len(ds) // 2, f"eq-{method}"), dataset=ds)
        err = relative_error(update_from_checkpoint(_checkpoint(rec, outputs)), ref)
        assert rec["log"][0]["sequences"] == len(ds) and err <= 1e-12, f"{method}: {err:.3e}"


@pytest.mark.parametrize("method", ["naive", "sorted", "packing", "packing_weighted", "pretrain"])
def test_chunked_cross_entropy_equals_full_logits(method, outputs):
    """Every method's objective and logged losses: chunked CE from hidden states = full logits, to float64 rounding."""
    ds = make_dataset(4)
    ppd = 2 if method in ("naive", "sorted") else 1
    updates, logs = [], []
    for chunk in (0, 5):
        cfg = sgd_config(method, 2, ppd, f"{method}-chunk{chunk}", ce_chunk_size=chunk)
        rec = run_training(cfg, dataset=ds)
        updates.append(update_from_checkpoint(_checkpoint(rec, outputs)))
        logs.append([(r["loss_token"], r["loss_sequence"]) for r in rec["log"]])
    assert relative_error(updates[1], updates[0]) <= 1e-12
    assert np.allclose(logs[1], logs[0], rtol=1e-12, atol=0)


def test_chunked_cross_entropy_with_gradient_checkpointing(outputs):
    """The head pre-hook still sees the final hidden states when the decoder layers are checkpointed."""
    ds = make_dataset(4)
    cfg = sgd_config("packing_weighted", 2, 2, "eq-ckpt", gradient_checkpointing=True, ce_chunk_size=5)
    rec = run_training(cfg, dataset=ds)
    err = relative_error(update_from_checkpoint(_checkpoint(rec, outputs)), reference_gradient(ds))
    assert err <= 1e-12, f"relative error {err:.3e}"


@pytest.mark.slow
def test_weighted_packing_equals_unpacked_mean_two_ranks(tmp_path):
    """Two gloo processes (torchrun), GA in {1, 3} x packs/device in {1, 2}, one launch."""
    out = tmp_path / "out"
    grid = [(ga, ppd, 0) for ga in (1, 3) for ppd in (1, 2)] + [(3, 2, 5)]  # last: chunked cross-entropy
    cfgs = []
    for ga, ppd, chunk in grid:
        data_dir = tmp_path / f"data-{ga}-{ppd}"
        make_dataset(2 * ga * ppd, seed=ga * 10 + ppd).save_to_disk(str(data_dir))
        cfg = sgd_config("packing_weighted", ga, ppd, f"eq2-ga{ga}-p{ppd}-c{chunk}", tokenized_dir=str(data_dir),
                         ce_chunk_size=chunk)
        cfgs.append(json.loads(json.dumps(cfg.__dict__)))
    (tmp_path / "runs.json").write_text(json.dumps(cfgs))
    env = {**os.environ, "LONGALIGN_OUTPUTS": str(out), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(ROOT / "scripts" / "train.py"), "--config-file", str(tmp_path / "runs.json")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    for (ga, ppd, chunk), cfg in zip(grid, cfgs):
        rec = json.loads((out / "runs" / f"{cfg['output_name']}.json").read_text())
        ds = datasets.load_from_disk(cfg["tokenized_dir"])
        assert rec["world_size"] == 2 and rec["log"][0]["sequences"] == len(ds)
        err = relative_error(update_from_checkpoint(out / rec["checkpoints"][-1]["path"]), reference_gradient(ds))
        assert err <= 1e-12, f"GA {ga}, packs/device {ppd}, chunk {chunk}: relative error {err:.3e}"
