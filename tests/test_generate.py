"""eval.generate: LongBench middle truncation, chat-prompt truncation, and greedy/sampled generation vs a manual loop."""

from __future__ import annotations

import pytest
import torch

from longalign import models
from longalign.eval.generate import encode_prompt, generate, truncate_middle


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def longbench_truncate(ids: list[int], max_length: int) -> list[int]:
    """LongBench pred.py, verbatim logic: keep int(max_length/2) tokens from each end."""
    if len(ids) > max_length:
        half = int(max_length / 2)
        return ids[:half] + ids[-half:]
    return ids


@pytest.mark.parametrize("n,max_tokens", [(10, 4), (101, 50), (7, 7), (3, 10), (1000, 998)])
def test_truncate_middle_matches_longbench_for_even_budgets(n, max_tokens):
    ids = list(range(n))
    assert truncate_middle(ids, max_tokens) == longbench_truncate(ids, max_tokens)


@pytest.mark.parametrize("n,max_tokens", [(10, 5), (100, 1), (9, 0), (50, 49)])
def test_truncate_middle_odd_budgets_keep_exactly_max(n, max_tokens):
    ids = list(range(n))
    out = truncate_middle(ids, max_tokens)
    assert len(out) == max_tokens
    head = max_tokens // 2
    assert out[:head] == ids[:head] and out[head:] == ids[n - (max_tokens - head):]


def test_truncate_middle_rejects_negative():
    with pytest.raises(ValueError):
        truncate_middle([1, 2], -1)


@pytest.fixture(scope="module")
def tok():
    return models.cpu_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    config = models.tiny_llama_config(len(tok), hidden=64, layers=2, heads=2, max_position=256)
    config.initializer_range = 0.5  # peaked logits: greedy choices are far from ties
    return models.tiny_llama(config, seed=0, attn_implementation="eager").eval()


def manual_greedy(model, ids: list[int], n: int) -> list[int]:
    """Reference decoder: full forward (no cache, no padding) and argmax, ``n`` times."""
    ids = list(ids)
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([ids]), use_cache=False).logits[0, -1]
            ids.append(int(logits.argmax()))
    return ids


PROMPTS = ["Why do startups fail?", "a b c", [{"role": "user", "content": "How are you?"}],
           [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Here is the answer:"}]]


def test_greedy_matches_manual_loop_and_batching(model, tok):
    outs1 = generate(model, tok, PROMPTS, max_new_tokens=6, batch_size=1, progress=False)
    outs3 = generate(model, tok, PROMPTS, max_new_tokens=6, batch_size=3, progress=False)
    assert len(outs1) == len(PROMPTS) and outs1 == outs3  # left padding changes nothing
    for prompt, out in zip(PROMPTS, outs1):
        ids = encode_prompt(tok, prompt, None)
        ref = manual_greedy(model, ids, 6)[len(ids):]
        eos = tok.eos_token_id
        ref = ref[: ref.index(eos)] if eos in ref else ref  # generate() stops at EOS
        assert out == tok.decode(ref, skip_special_tokens=True)


def test_assistant_prefix_is_continued(tok):
    ids = encode_prompt(tok, PROMPTS[3], None)
    text = tok.decode(ids)
    assert text.endswith("Here is the answer:") and "<|im_start|>assistant\nHere is" in text


def test_sampling_is_seeded(model, tok):
    kw = dict(max_new_tokens=8, do_sample=True, temperature=1.0, progress=False)
    assert generate(model, tok, PROMPTS, seed=3, **kw) == generate(model, tok, PROMPTS, seed=3, **kw)


def test_long_prompt_loses_its_middle_not_the_question(model, tok):
    doc = " ".join(f"w{i}" for i in range(2000))
    prompt = f"BEGIN {doc} END. QUESTION: what is first?"
    ids = encode_prompt(tok, prompt, 200)
    assert len(ids) <= 200
    text = tok.decode(ids)
    assert text.startswith("<|im_start|>user\nBEGIN") and text.endswith("QUESTION: what is first?<|im_end|>\n<|im_start|>assistant\n")
    assert "w1000 " not in text
    # generate() applies the window budget: 256 positions - 16 new tokens.
    out = generate(model, tok, [prompt], max_new_tokens=16, progress=False)
    assert len(out) == 1 and isinstance(out[0], str)
    with pytest.raises(ValueError, match="no room"):
        generate(model, tok, [prompt], max_new_tokens=300, progress=False)


def test_plain_prompts_truncate_ids(tok):
    ids = encode_prompt(tok, "x " * 500, 50, chat=False)
    full = tok("x " * 500)["input_ids"]
    assert ids == truncate_middle(full, 50)
