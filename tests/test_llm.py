"""LLMClient against the real SDKs and a fault-injecting local server: retries, cache, accounting, keys, budget."""

from __future__ import annotations

import os
import random
import socket
import stat
import time

import pytest

from fakeapi import PLANTED_KEYS, fake_api, planted_keys  # noqa: F401 — pytest fixtures
from longalign import paths
from longalign.llm import KEY_ENV, BudgetExceeded, FatalAPIError, LLMClient, LLMError, price_for, scrub

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


def test_budget_guard_refuses_before_spending(fake_api, planted_keys, tmp_path):
    api = fake_api(lambda msgs: "x" * 400)
    prompts = [f"p{i} " + "word " * 200 for i in range(10)]
    client = _client("anthropic", api, tmp_path, max_cost_usd=0.001, concurrency=1)
    est = client.estimate_cost(prompts, expected_output_tokens=100)
    assert est == pytest.approx(10 * ((len(prompts[0]) // 4 + 5) * 8 + 100 * 24) / 1e6, rel=0.05)
    with pytest.raises(BudgetExceeded, match="max_cost_usd"):
        client.check_budget(prompts, expected_output_tokens=100)
    assert api.requests == []  # refused before any request


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
def test_hard_cap_holds_with_concurrency_when_the_provider_bills_more(kind, fake_api, planted_keys, tmp_path, capsys):
    def slow(msgs):
        time.sleep(0.02)  # keep 4 requests in flight at once
        return "ok " + msgs[-1]["content"][:20]

    # The server bills 3x the client's own estimate of input tokens and the whole max_tokens as output;
    # 30% of answers are empty (billed, retried) or unreadable (billed, usage unknown to the client).
    api = fake_api(slow, fault_rate=0.3, faults=("empty", "malformed", "429"), seed=11, bill_input_factor=3.0,
                   bill_output="max_tokens")
    rng = random.Random(0)
    prompts = [f"item {i} " + "lorem ipsum " * rng.randint(10, 60) for i in range(60)]
    client = _client(kind, api, tmp_path, concurrency=4)
    worst = [client.worst_case_cost([{"role": "user", "content": p}], 60) for p in prompts]
    client.max_cost_usd = cap = round(20 * sum(worst) / len(worst), 4)  # room for about a third of the prompts
    done = {}
    with pytest.raises(BudgetExceeded) as err:
        for i, res in client.complete_many([{"messages": p, "max_tokens": 60} for p in prompts], desc="t"):
            done[i] = res
    price = price_for(MODELS[kind])
    billed = api.billed_usd(price)
    assert billed <= cap  # the provider-billed total never passes the cap
    assert billed >= cap - 8 * max(worst), (billed, cap)  # ... and the job used most of it before stopping
    assert f"max_cost_usd=${cap:.4f}" in str(err.value) and "billed $" in str(err.value)
    assert len(done) < len(prompts) and len({r["prompt"] for r in api.requests}) < len(prompts)  # the rest never sent
    faults = api.fault_counts()
    assert faults["empty"] and faults["malformed"], faults
    readable = [r["billed"] for r in api.requests if r["billed"] and r["fault"] != "malformed"]
    assert client.stats["cost_usd"] == pytest.approx(sum(b[0] * price[0] + b[1] * price[1] for b in readable) / 1e6)
    assert client.stats["cost_usd"] + client.stats["cost_unknown_usd"] >= billed  # unknown bills kept at worst case
    out = capsys.readouterr().out
    assert "API errors by class" in out and "empty:" in out and "malformed:" in out and "e.g." in out


def test_a_bill_past_its_reservation_grows_later_reservations(fake_api, planted_keys, tmp_path):
    # 8x the estimate is 2 tokens per byte: more than the byte bound a reservation assumes
    api = fake_api(lambda msgs: "ok", bill_input_factor=8.0)
    client = _client("anthropic", api, tmp_path, concurrency=1)
    prompts = [f"q{i} " + "lorem ipsum " * 40 for i in range(30)]
    first = client.worst_case_cost([{"role": "user", "content": prompts[0]}], 8)
    client.complete(prompts[0], max_tokens=8)
    overrun = api.billed_usd(price_for("claude-2.1")) - first
    assert overrun > 0 and client.worst_case_cost([{"role": "user", "content": prompts[0]}], 8) > first + overrun
    client.max_cost_usd = cap = 10 * first
    with pytest.raises(BudgetExceeded):
        list(client.complete_many([{"messages": p, "max_tokens": 8} for p in prompts[1:]], desc="t"))
    assert api.billed_usd(price_for("claude-2.1")) <= cap  # later bills stay within their grown reservations


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize("kind,failure,expect", [
    ("anthropic", 401, "ANTHROPIC_API_KEY"), ("openai", 403, "may not use model"),
    ("openai", "no /v1", "/v1 suffix"), ("anthropic", "refused", "nothing answered"),
    ("openai", "refused", "nothing answered")])
def test_non_retryable_failures_stop_the_job_at_once(kind, failure, expect, fake_api, planted_keys, tmp_path, capsys):
    api = fake_api(fail_status=failure if isinstance(failure, int) else None)
    url = {"no /v1": api.anthropic_base_url, "refused": _closed_port_url()}.get(
        failure, api.anthropic_base_url if kind == "anthropic" else api.openai_base_url)
    client = LLMClient(kind, MODELS[kind], base_url=url, cache_dir=tmp_path, concurrency=4, **FAST)
    with pytest.raises(FatalAPIError) as err:
        list(client.complete_many([f"q{i}" for i in range(20)], desc="t"))
    msg = str(err.value)
    assert expect in msg and url in msg and kind in msg and KEY_ENV[kind] in msg and "What to do" in msg
    assert client.stats["api_calls"] <= 4 and client.stats["retries"] == 0  # first failures only, no retries
    out = capsys.readouterr().out
    assert "API errors by class" in out and err.value.kind in out
    assert err.value.__cause__ is None and err.value.__suppress_context__  # the keyed SDK error is not chained
    for text in (msg, out, repr(client)):
        assert PLANTED_KEYS["anthropic"] not in text and PLANTED_KEYS["openai"] not in text
    with pytest.raises(FatalAPIError):  # the client stays stopped: nothing more is sent
        client.complete("another")
    assert client.stats["api_calls"] <= 4


def test_invalid_base_url_and_unknown_price_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="base_url 'localhost:8000/v1' is not a URL"):
        LLMClient("openai", "gpt-4", base_url="localhost:8000/v1", cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"`prices` parameter.*'my-finetune'"):
        LLMClient("openai", "my-finetune", cache_dir=tmp_path)
    for unset in (None, ""):  # e.g. notebook 04 with an LLM judge and judge_model left None
        with pytest.raises(ValueError, match=r"backend 'openai' needs a model name.*judge_model"):
            LLMClient("openai", unset, cache_dir=tmp_path)
    priced = LLMClient("openai", "my-finetune", cache_dir=tmp_path, prices={"my-finetune": [1.0, 2.0]})
    assert priced.estimate_cost(["abcd" * 100], expected_output_tokens=10) == pytest.approx((104 * 1 + 10 * 2) / 1e6)
    assert LLMClient("offline", "x", offline_fn=lambda m: "a", cache_dir=tmp_path).price == (0.0, 0.0)


def test_scrub_hides_keys_and_key_like_echoes(planted_keys):
    assert scrub(f"a {PLANTED_KEYS['anthropic']} b") == "a *** b"
    echo = "Incorrect API key provided: sk-proj-********************abcd."
    assert scrub(echo) == "Incorrect API key provided: sk-***."
    assert scrub("a task-specific answer") == "a task-specific answer"


def test_cache_key_separates_servers(fake_api, planted_keys, tmp_path):
    one, two = fake_api(lambda m: "from one"), fake_api(lambda m: "from two")
    a = LLMClient("openai", "gpt-4o", base_url=one.openai_base_url, cache_dir=tmp_path, **FAST)
    b = LLMClient("openai", "gpt-4o", base_url=two.openai_base_url, cache_dir=tmp_path, **FAST)
    assert a.complete("same question").text == "from one"
    assert b.complete("same question").text == "from two"  # same cache folder, other server: not shared
    assert a.complete("same question").cached and len(one.requests) == 1


def test_response_cache_is_owner_only_whatever_the_umask(tmp_path):
    old = os.umask(0)  # the most permissive umask: every mode below is set explicitly
    try:
        client = LLMClient("offline", "m", offline_fn=lambda m: "private answer", cache_dir=tmp_path / "c" / "llm")
        client.complete("my private document")
        data = paths.data_dir()  # outputs/data holds documents too
    finally:
        os.umask(old)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    files = [p for p in (tmp_path / "c" / "llm").rglob("*") if p.is_file()]
    dirs = [tmp_path / "c" / "llm", *[p for p in (tmp_path / "c" / "llm").rglob("*") if p.is_dir()]]
    assert len(files) == 1 and len(dirs) == 2
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o700 for p in dirs)


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
