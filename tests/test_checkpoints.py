"""The evaluation loader: dtype / device policy, ``run:NAME`` lookup and model tags."""

from __future__ import annotations

import pytest
import torch

from longalign import models, paths
from longalign.eval import checkpoints
from longalign.records import write_record


def test_placement_policy_and_overrides(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert checkpoints.eval_placement() == (torch.float32, "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert checkpoints.eval_placement() == (torch.bfloat16, "cuda")
    assert checkpoints.eval_placement(device="cpu") == (torch.float32, "cpu")
    assert checkpoints.eval_placement(torch.float64, "cuda:1") == (torch.float64, "cuda:1")


def test_model_tags_are_folder_safe():
    assert checkpoints.model_tag("HuggingFaceTB/SmolLM2-135M-Instruct") == "SmolLM2-135M-Instruct"
    assert checkpoints.model_tag("outputs/models/ctx ext:64k/") == "ctx_ext_64k"
    assert checkpoints.model_tag("smollm2") == "smollm2"


def test_run_spec_loads_the_final_checkpoint_in_fp32_on_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    tok = models.cpu_tokenizer()
    cfg = models.tiny_llama_config(len(tok), hidden=32, layers=1, heads=2, max_position=128)
    ckpts = []
    for step in (3, 1):
        folder = paths.runs_dir() / "r-seed0" / f"checkpoint-{step}"
        models.tiny_llama(cfg, seed=step).save_pretrained(folder)
        tok.save_pretrained(folder)
        ckpts.append({"step": step, "path": str(folder.relative_to(paths.outputs()))})
    (paths.runs_dir() / "r-seed0" / "checkpoint-5").mkdir()  # recorded but never written: not loadable
    write_record(paths.runs_dir() / "r-seed0.json", {"name": "r-seed0", "checkpoints": ckpts + [
        {"step": 5, "path": "runs/r-seed0/checkpoint-5"}]})
    assert checkpoints.model_tag("run:r-seed0") == "r-seed0-step3"
    model, tokenizer = checkpoints.load_for_eval("run:r-seed0")
    want = models.tiny_llama(cfg, seed=3).state_dict()
    assert not model.training and len(tokenizer) == len(tok)
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())
    assert list(checkpoints.final_checkpoints()) == ["r-seed0"]  # listing only needs the folder
    with pytest.raises(FileNotFoundError, match="03_training_methods"):
        checkpoints.load_for_eval("run:missing")
