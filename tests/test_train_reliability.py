"""Training refuses data with nothing to learn, and resumes past a checkpoint cut short by a kill."""

from __future__ import annotations

import json
import shutil

import datasets
import numpy as np
import pytest
import torch
from chatdata import random_chat_dataset
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from longalign.records import DataError
from longalign.train import TrainConfig, checkpoint_problem, run_training

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small(name: str, **kw) -> TrainConfig:
    base = dict(method="packing_weighted", output_name=name, max_len=64, max_steps=2, learning_rate=1e-3,
                warmup_ratio=0.0, dtype="float64", model_overrides={"hidden": 32, "layers": 1, "heads": 2})
    return TrainConfig(**{**base, **kw})


@pytest.fixture()
def outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGALIGN_OUTPUTS", str(tmp_path / "out"))
    return tmp_path / "out"


def _chat(user: str, answer: str | None) -> str:
    msgs = [{"role": "user", "content": user}] + ([{"role": "assistant", "content": answer}] if answer else [])
    return json.dumps({"messages": msgs}) + "\n"


@pytest.mark.parametrize("content,message", [("", "no records in"), ("\n\n", "no records in"),
                                             (_chat("q", None) * 3, "zero_target=3")])
def test_jsonl_without_targets_is_refused_naming_the_file(outputs, tmp_path, content, message):
    path = tmp_path / "mix-empty.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as err:
        run_training(small("empty", data=[str(path)]))
    assert str(path) in str(err.value)
    assert not (outputs / "runs" / "empty.json").exists(), "no finished-run record"


@pytest.mark.parametrize("labels,message", [([], "has no rows"), ([[-100] * 5, [7, -100, -100]], "every label is -100")])
def test_tokenized_data_without_targets_is_refused(outputs, tmp_path, labels, message):
    folder = tmp_path / "tok"
    datasets.Dataset.from_dict({"input_ids": [[5] * len(x) for x in labels], "labels": labels,
                                "length": [len(x) for x in labels]},
                               features=datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int32")),
                                                           "labels": datasets.Sequence(datasets.Value("int32")),
                                                           "length": datasets.Value("int64")})).save_to_disk(str(folder))
    with pytest.raises(ValueError, match=message) as err:
        run_training(small("masked", tokenized_dir=str(folder)))
    assert str(folder) in str(err.value)
    assert not (outputs / "runs" / "masked.json").exists()


def test_in_memory_dataset_without_targets_is_refused(outputs):
    ds = datasets.Dataset.from_dict({"input_ids": [[5, 6, 7], [8, 9]], "labels": [[-100] * 3, [8, -100]]})
    with pytest.raises(ValueError, match="dataset=: every label is -100"):
        run_training(small("masked-mem"), dataset=ds)
    assert not (outputs / "runs" / "masked-mem.json").exists()


def _fake_checkpoint(path):
    """The files a Trainer checkpoint holds, written by the same libraries (torch zip files, safetensors)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    save_file({"w": torch.zeros(64, 64)}, str(path / "model.safetensors"))
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"):
        torch.save({"state": torch.ones(100)}, path / name)
    return path


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("breakage,reason", [
    (None, None), (lambda p: _truncate(p / "optimizer.pt"), "optimizer.pt is truncated"),
    (lambda p: _truncate(p / "model.safetensors"), "model.safetensors is truncated"),
    (lambda p: _truncate(p / "rng_state.pth"), "rng_state.pth is truncated"),
    (lambda p: (p / "trainer_state.json").unlink(), "trainer_state.json missing"),
    (lambda p: (p / "trainer_state.json").write_text('{"global_st'), "trainer_state.json missing or unreadable"),
    (lambda p: (p / "optimizer.pt").unlink(), "no optimizer state"),
    (lambda p: (p / "model.safetensors").unlink(), "no model weights")])
def test_checkpoint_problem_names_the_broken_file(tmp_path, breakage, reason):
    ckpt = _fake_checkpoint(tmp_path / "checkpoint-2")
    if breakage:
        breakage(ckpt)
    problem = checkpoint_problem(ckpt)
    assert problem == reason if reason is None else reason in problem


@pytest.mark.slow
def test_resume_falls_back_to_newest_complete_checkpoint(outputs, capsys):
    """A kill while checkpoint-4 was being saved: the rerun sets it aside, resumes from 2, ends at the same weights."""
    cfg = small("fallback", max_steps=4, save_steps=2)
    rng = np.random.default_rng(0)
    data = random_chat_dataset([int(rng.integers(8, 60)) for _ in range(16)], rng)
    rec = run_training(cfg, dataset=data)
    run_dir = outputs / "runs" / "fallback"
    full = AutoModelForCausalLM.from_pretrained(run_dir / "checkpoint-4", dtype=torch.float64).state_dict()
    (outputs / "runs" / "fallback.json").unlink()  # the kill came before the record
    _truncate(run_dir / "checkpoint-4" / "optimizer.pt")
    capsys.readouterr()
    again = run_training(cfg, dataset=data)
    out = capsys.readouterr().out
    assert "checkpoint-4 is incomplete (optimizer.pt is truncated or unreadable)" in out
    assert "resuming from checkpoint-2" in out
    aside = list(run_dir.glob("broken-checkpoint-4-*"))
    assert len(aside) == 1 and (aside[0] / "model.safetensors").is_file(), "the broken folder is kept, not deleted"
    resumed = AutoModelForCausalLM.from_pretrained(run_dir / "checkpoint-4", dtype=torch.float64).state_dict()
    assert again["steps"] == 4 and [r["step"] for r in again["log"]] == [1, 2, 3, 4]
    assert all(torch.allclose(full[k], resumed[k], rtol=0, atol=1e-10) for k in full)
    assert again["log"][-1]["loss_sequence"] == pytest.approx(rec["log"][-1]["loss_sequence"], abs=1e-10)
    assert [c["step"] for c in again["checkpoints"]] == [2, 4]
