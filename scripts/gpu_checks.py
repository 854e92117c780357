"""GPU checks for a machine with a CUDA GPU: FA2 varlen isolation, bf16 Eq. 4 = Eq. 2, memory.

Run as one script on the GPU machine (see README, "GPU checks"):
    python scripts/gpu_checks.py --out $OUT/gpu_checks.jsonl
Each check prints and appends one JSON line: name, value, tolerance / goal, ok, and the versions.
Checks:
1. packed logits (FA2 varlen via cu_seq_lens when flash_attn is importable, else our per-segment
   attention on CUDA) equal separate runs of each sequence, bf16 and fp32;
2. bf16 autocast training step: packed + weighted gradient (the trainer's ``loss.loss_sums`` and
   ``loss.objective``) vs unpacked per-sequence mean (Eq. 2, from the model's own HF loss);
3. peak GPU memory and time of one training step on a long pack with the plain loss vs the chunked
   cross-entropy, both through the trainer's ``loss.forward_loss_sums``, with gradient checkpointing.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from longalign import attention, models
from longalign.collate import IGNORE_INDEX, PackingCollator, sequence_weights
from longalign.loss import CE_CHUNK_SIZE, forward_loss_sums, loss_sums, objective


def _emit(out: Path, name: str, value: float, goal: float, lower_is_ok: bool = True, **extra) -> None:
    ok = value <= goal if lower_is_ok else value >= goal
    row = {"name": name, "value": value, "goal": goal, "ok": bool(ok), "torch": torch.__version__,
           "device": torch.cuda.get_device_name(0), "flash_attn": attention._HAS_FLASH_ATTN, **extra}
    print(json.dumps(row), flush=True)
    with open(out, "a") as fh:
        fh.write(json.dumps(row) + "\n")


def _features(rng: random.Random, n: int, lo: int, hi: int, vocab: int) -> list[dict]:
    feats = []
    for _ in range(n):
        length = rng.randint(lo, hi)
        ids = [rng.randrange(4, vocab) for _ in range(length)]
        cut = rng.randint(1, length - 2)
        feats.append({"input_ids": ids, "labels": [IGNORE_INDEX] * cut + ids[cut:]})
    return feats


def _cuda(batch: dict) -> dict:
    return {k: (v.cuda() if torch.is_tensor(v) else v) for k, v in batch.items()}


def _model(dtype: torch.dtype, attn: str, hidden: int = 512, layers: int = 4):
    cfg = models.tiny_llama_config(8192, hidden=hidden, layers=layers, heads=8, max_position=65536)
    return models.tiny_llama(cfg, seed=0, dtype=dtype, attn_implementation=attn).cuda()


def check_isolation(out: Path, dtype: torch.dtype, tol: float) -> None:
    """Packed logits vs separate runs (same kernel family), max abs difference."""
    impl = "flash_attention_2" if attention._HAS_FLASH_ATTN else attention.ATTN_IMPLEMENTATION
    model = _model(dtype, impl).eval()
    feats = _features(random.Random(0), 8, 64, 2048, 8192)
    batch = PackingCollator()(feats)
    kwargs = {k: (v.cuda() if torch.is_tensor(v) else v) for k, v in batch.items()
              if k in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")}
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"].cuda(), position_ids=batch["position_ids"].cuda(),
                       use_cache=False, **kwargs).logits[0].float()
        alone = torch.cat([model(input_ids=torch.tensor([f["input_ids"]]).cuda(), use_cache=False).logits[0].float()
                           for f in feats])
    _emit(out, f"isolation_{impl}_{str(dtype).split('.')[-1]}", float((packed - alone).abs().max()), tol)


def check_bf16_gradient(out: Path) -> None:
    """bf16 autocast: relative error of the packed + weighted gradient against unpacked Eq. 2."""
    model = _model(torch.float32, attention.ATTN_IMPLEMENTATION)
    feats = _features(random.Random(1), 12, 32, 512, 8192)
    packs = [feats[:3], feats[3:4], feats[4:9], feats[9:]]
    m = len(feats)

    def grads(fn) -> torch.Tensor:
        model.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            fn()
        return torch.cat([p.grad.flatten().float() for p in model.parameters()])

    def reference() -> None:  # each sequence alone, HF's own token-mean loss, averaged over the M sequences
        for f in feats:
            masked, _, _ = sequence_weights(f["labels"])
            out = model(input_ids=torch.tensor([f["input_ids"]]).cuda(), labels=torch.tensor([masked]).cuda(),
                        use_cache=False)
            (out.loss / m).backward()

    def packed() -> None:  # the trainer's step objective, summed over the micro-batches
        for pack in packs:
            b = _cuda(PackingCollator()(pack))
            logits = model(input_ids=b["input_ids"], position_ids=b["position_ids"], use_cache=False).logits
            objective("packing_weighted", loss_sums(logits, b), {"sequences": m}, 1).backward()

    ref, got = grads(reference), grads(packed)
    _emit(out, "bf16_grad_rel_err_eq4_vs_eq2", float((got - ref).norm() / ref.norm()), 2e-2)


def check_memory(out: Path, tokens: int) -> None:
    """Peak memory and time of a training step on one long pack: plain loss vs chunked CE."""
    model = _model(torch.bfloat16, attention.ATTN_IMPLEMENTATION, hidden=1024, layers=8)
    model.gradient_checkpointing_enable()
    feats = _features(random.Random(2), max(tokens // 4096, 1), 2048, 6144, 8192)
    b = _cuda(PackingCollator()(feats))
    for name, chunk in (("plain", 0), ("chunked", CE_CHUNK_SIZE)):
        torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); start = time.perf_counter()
        sums, _ = forward_loss_sums(model, b, "packing_weighted", chunk, varlen=True)  # the trainer's loss path
        loss = objective("packing_weighted", sums, {"sequences": b["num_sequences"]}, 1)
        loss.backward(); model.zero_grad(); torch.cuda.synchronize()
        _emit(out, f"step_peak_gib_{name}", torch.cuda.max_memory_allocated() / 2**30, 80.0,
              tokens=int(b["input_ids"].shape[1]), seconds=time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_checks.jsonl"))
    parser.add_argument("--tokens", type=int, default=65536)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_checks: no CUDA device; this script is for a machine with a GPU")
    check_isolation(args.out, torch.float32, 1e-4)
    check_isolation(args.out, torch.bfloat16, 6e-2)
    check_bf16_gradient(args.out)
    check_memory(args.out, args.tokens)


if __name__ == "__main__":
    main()
