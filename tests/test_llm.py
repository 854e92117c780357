"""LLMClient against the real SDKs and a fault-injecting local server: retries, cache, accounting, keys, budget."""

from __future__ import annotations

import pytest

from fakeapi import PLANTED_KEYS, fake_api, planted_keys  # noqa: F401 — pytest fixtures
from longalign.llm import BudgetExceeded, LLMClient, LLMError, price_for, scrub

FAST = dict(timeout_s=1.0, backoff_s=0.005, max_backoff_s=0.02, max_retries=6)  # timeout well above loaded latency
MODELS = {"anthropic": "claude-2.1", "openai": "gpt-4o-mini"}


def _client(kind, api, tmp_path, **kw):
    url = api.anthropic_base_url if kind == "anthropic" else api.openai_base_url
    return LLMClient(kind, MODELS[kind], base_url=url, cache_dir=tmp_path / "cache", **{**FAST, **kw})


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
def test_sdk_retries_every_fault_then_cache_prevents_repeats(kind, fake_api, planted_keys, tmp_path):
    api = fake_api(lambda msgs: "answer to " + msgs[-1]["content"], fault_rate=0.5, seed=7, timeout_sleep_s=1.3)
    client = _client(kind, api, tmp_path, concurrency=4)
    prompts = [f"question number {i:02d}" for i in range(16)]
    results = dict(client.complete_many(prompts, desc="t"))
    assert sorted(results) == list(range(16))
    assert all(results[i].text == "answer to " + p for i, p in enumerate(prompts)), results
    faults = api.fault_counts()
    injected = sum(v for k, v in faults.items() if k is not None)
    assert injected >= 8 and len([k for k in faults if k]) >= 4, faults  # many kinds really exercised
    assert client.stats["retries"] == injected  # every fault cost exactly one retry, nothing else did
    assert client.stats["failures"] == 0
    price = price_for(MODELS[kind])
    expected = (client.stats["input_tokens"] * price[0] + client.stats["output_tokens"] * price[1]) / 1e6
    assert client.stats["cost_usd"] == pytest.approx(expected) and expected > 0
    n_requests = len(api.requests)
    again = dict(client.complete_many(prompts, desc="t"))
    assert len(api.requests) == n_requests  # served from the on-disk cache: no new HTTP request
    assert all(c.cached and c.cost_usd == 0 and c.text == results[i].text for i, c in again.items())
    fresh = _client(kind, api, tmp_path)  # a new process would see the same cache
    assert fresh.complete(prompts[3]).cached and len(api.requests) == n_requests


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
def test_key_comes_from_env_and_never_leaks(kind, fake_api, planted_keys, tmp_path):
    api = fake_api()
    client = _client(kind, api, tmp_path)
    client.complete("hello")
    headers = api.auth_headers(kind)[0]
    assert planted_keys[kind] in (headers["x-api-key"] or "") + (headers["authorization"] or "")
    assert planted_keys[kind] not in repr(client) and planted_keys[kind] not in str(vars(client).get("stats"))
    for path in (tmp_path / "cache").rglob("*"):
        assert not path.is_file() or planted_keys[kind] not in path.read_text()
    with pytest.raises(TypeError):
        LLMClient(kind, MODELS[kind], api_key="sk-nope")  # keys are never parameters


def test_missing_key_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    client = LLMClient("anthropic", "claude-2.1", cache_dir=tmp_path, max_retries=0)
    with pytest.raises(LLMError, match="ANTHROPIC_API_KEY"):
        client.complete("hi")


def test_errors_are_scrubbed_of_keys(planted_keys, tmp_path):
    def leaky(messages):
        raise ValueError(f"upstream said: bad key {PLANTED_KEYS['openai']}")

    client = LLMClient("offline", "leaky", offline_fn=leaky, cache_dir=tmp_path, **FAST)
    with pytest.raises(LLMError) as err:
        client.complete("x")
    assert PLANTED_KEYS["openai"] not in str(err.value) and "***" in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__  # the original (keyed) error is not chained
    assert client.stats["api_calls"] == 1  # a ValueError is not transient: no retry
    assert scrub(f"a {PLANTED_KEYS['anthropic']} b") == "a *** b"


def test_empty_completions_are_retried_then_fail(tmp_path):
    calls = []

    def flaky(messages):
        calls.append(1)
        return "" if len(calls) < 3 else "finally"

    client = LLMClient("offline", "flaky", offline_fn=flaky, cache_dir=tmp_path, **FAST)
    assert client.complete("x").text == "finally" and client.stats["retries"] == 2
    never = LLMClient("offline", "never", offline_fn=lambda m: "  ", cache_dir=tmp_path, **{**FAST, "max_retries": 3})
    with pytest.raises(LLMError, match="EmptyCompletion"):
        never.complete("x")
    assert never.stats["api_calls"] == 4


def test_complete_many_reports_failures_without_stopping(tmp_path):
    def fn(messages):
        if "bad" in messages[-1]["content"]:
            raise KeyError("no")
        return messages[-1]["content"].upper()

    client = LLMClient("offline", "m", offline_fn=fn, cache_dir=tmp_path, concurrency=3, **FAST)
    out = dict(client.complete_many(["a", "bad", {"messages": "c", "system": "s", "max_tokens": 5}], desc="t"))
    assert out[0].text == "A" and isinstance(out[1], LLMError) and out[2].text == "C"


def test_cache_key_covers_params_and_system(tmp_path):
    seen = []
    client = LLMClient("offline", "m", offline_fn=lambda m: seen.append(m) or "ok", cache_dir=tmp_path)
    client.complete("q")
    client.complete("q", temperature=0.7)
    client.complete("q", system="be brief")
    client.complete("q", max_tokens=7)
    client.complete("q")
    assert len(seen) == 4 and seen[2][0] == {"role": "system", "content": "be brief"}


def test_budget_guard_before_and_during_spending(fake_api, planted_keys, tmp_path):
    api = fake_api(lambda msgs: "x" * 400)
    prompts = [f"p{i} " + "word " * 200 for i in range(10)]
    client = _client("anthropic", api, tmp_path, max_cost_usd=0.001, concurrency=1)
    est = client.estimate_cost(prompts, expected_output_tokens=100)
    assert est == pytest.approx(10 * ((len(prompts[0]) // 4 + 5) * 8 + 100 * 24) / 1e6, rel=0.05)
    with pytest.raises(BudgetExceeded):
        client.check_budget(prompts, expected_output_tokens=100)
    assert api.requests == []  # refused before any request
    spender = _client("anthropic", api, tmp_path, max_cost_usd=0.004, concurrency=1)
    out = dict(spender.complete_many(prompts, desc="t"))
    stopped = [i for i, r in out.items() if isinstance(r, BudgetExceeded)]
    assert stopped and len(api.requests) == 10 - len(stopped)
    assert spender.stats["cost_usd"] >= 0.004 and spender.stats["cost_usd"] < 0.004 + 0.0013


def test_unknown_price_needs_an_override(tmp_path):
    client = LLMClient("openai", "my-finetune", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="prices="):
        client.estimate_cost(["hi"])
    priced = LLMClient("openai", "my-finetune", cache_dir=tmp_path, prices={"my-finetune": (1.0, 2.0)})
    assert priced.estimate_cost(["abcd" * 100], expected_output_tokens=10) == pytest.approx((104 * 1 + 10 * 2) / 1e6)


def test_local_backend_matches_direct_greedy_generation(tmp_path):
    import torch

    from longalign.models import cpu_tokenizer, tiny_llama, tiny_llama_config

    tok = cpu_tokenizer()
    model = tiny_llama(tiny_llama_config(len(tok), hidden=64, layers=2, heads=2), seed=3).eval()
    msgs = [{"role": "user", "content": "Say something."}]
    enc = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
    with torch.no_grad():
        ref = model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    expected = tok.decode(ref[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    client = LLMClient("local", "tiny", local_model=(model, tok), cache_dir=tmp_path, max_retries=0)
    if expected:
        comp = client.complete(msgs, max_tokens=6)
        assert comp.text == expected and comp.output_tokens == ref.shape[1] - enc["input_ids"].shape[1]
    else:
        with pytest.raises(LLMError, match="EmptyCompletion"):
            client.complete(msgs, max_tokens=6)
