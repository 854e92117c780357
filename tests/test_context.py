"""RoPE base scaling on every config layout, on the forward pass, and continual pretraining through the entry point."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from longalign import context, models
from longalign.train import TrainConfig, run_training


def test_paper_factor_maps_10k_to_2m():
    conf = models.tiny_llama_config(100, rope_theta=10_000.0, max_position=8192)
    out = context.scale_rope_base(conf, context.PAPER_ROPE_FACTOR, 65_536)
    assert context.rope_base(out) == pytest.approx(2_000_000.0)
    assert out.max_position_embeddings == 65_536
    assert context.rope_base(conf) == 10_000.0 and conf.max_position_embeddings == 8192  # input untouched


def test_rope_parameters_survive_save_and_load(tmp_path):
    conf = context.scale_rope_base(models.tiny_llama_config(100), 8.0, 4096)
    conf.save_pretrained(tmp_path)
    loaded = LlamaConfig.from_pretrained(tmp_path)
    assert context.rope_base(loaded) == pytest.approx(80_000.0) and loaded.max_position_embeddings == 4096


def test_other_layouts():
    nested = SimpleNamespace(rope_parameters={"full_attention": {"rope_theta": 1e4}, "sliding_attention": {"rope_theta": 1e4}},
                             max_position_embeddings=10)
    out = context.scale_rope_base(nested, 4.0, 40)
    assert out.rope_parameters["sliding_attention"]["rope_theta"] == 4e4 and out.max_position_embeddings == 40
    legacy = context.scale_rope_base(SimpleNamespace(rope_theta=500.0, max_position_embeddings=4), 2.0)
    assert legacy.rope_theta == 1000.0
    glm = context.scale_rope_base(SimpleNamespace(rope_ratio=1.0, seq_length=8192), 200.0, 65_536)
    assert context.rope_base(glm) == 2_000_000.0 and glm.seq_length == 65_536
    with pytest.raises(ValueError, match="no RoPE base"):
        context.rope_base(SimpleNamespace())


def test_forward_pass_uses_scaled_base(tmp_path):
    """The rotary frequencies follow the base: position 0 is unchanged, later positions change."""
    conf = models.tiny_llama_config(200, hidden=32, layers=1, heads=2)
    model = models.tiny_llama(conf, seed=0, attn_implementation="eager")
    model.save_pretrained(tmp_path / "base")
    ext = AutoModelForCausalLM.from_pretrained(tmp_path / "base", config=context.scale_rope_base(conf, 200.0, 16384))
    inv = ext.model.rotary_emb.inv_freq
    head_dim = 16
    assert torch.allclose(inv[1], torch.tensor(2_000_000.0 ** (-2 / head_dim)), rtol=1e-5)
    ids = torch.randint(0, 200, (1, 12))
    a, b = model(input_ids=ids).logits, ext(input_ids=ids).logits
    assert torch.allclose(a[:, 0], b[:, 0], atol=1e-5)  # position 0: rotation by angle 0 either way
    assert not torch.allclose(a[:, -1], b[:, -1], atol=1e-4)


def test_pretrain_dataset_rows():
    tok = models.cpu_tokenizer()
    ds = context.pretrain_dataset(["hello world " * 200, "short"], tok, max_len=64, min_len=4)
    assert max(ds["length"]) <= 64 and all(r["labels"] == r["input_ids"] for r in ds)
    assert ds[0]["length"] == 64


def test_continual_pretraining_through_entry_point(tmp_path, monkeypatch):
    """Method ``pretrain``: packed long text, plain token-mean loss, loss decreases on repeated text."""
    monkeypatch.setenv("LONGALIGN_OUTPUTS", str(tmp_path / "out"))
    tok = models.cpu_tokenizer()
    text = " ".join(f"item {i % 17} is {i % 5}." for i in range(400))
    ds = context.pretrain_dataset([text] * 3, tok, max_len=128)
    cfg = TrainConfig(method="pretrain", max_len=256, max_steps=6, learning_rate=3e-3, warmup_ratio=0.0,
                      model_overrides={"hidden": 32, "layers": 1, "heads": 2, "rope_theta": 80_000.0})
    rec = run_training(cfg, dataset=ds)
    losses = [r["loss_token"] for r in rec["log"]]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    assert rec["padding_fraction"] == 0.0 and rec["log"][0]["sequences"] >= 2  # packs hold several pieces
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / rec["checkpoints"][-1]["path"])
    assert context.rope_base(saved.config) == pytest.approx(80_000.0)
