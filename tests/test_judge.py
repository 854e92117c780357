"""Judges: [[n]] parsing, the overlap proxy, LLM judges through the real SDKs against a faulty server, resume."""

from __future__ import annotations

import json
import math
import re
import threading
from collections import Counter

import pandas as pd
import pytest
from fakeapi import PLANTED_KEYS, fake_api, planted_keys  # noqa: F401  (pytest fixtures)

from longalign import paths
from longalign.eval.judge import (Judge, JudgeRequest, judge_sweep, overlap_score, overlap_tokens, parse_rating,
                                  record_path, results_table, summarise, token_f1)
from longalign.llm import BudgetExceeded, FatalAPIError, normalize_messages, price_for
from longalign.records import load_records


def official_parse(response: str) -> float:
    """LongBench_Chat/eval.py's scoring lines, verbatim logic (the reference behaviour)."""
    try:
        score = re.findall(r"\[\[([^\]]+)\]\]", response)[-1]
        return float(re.findall(r"\d+\.\d+|\d+", score)[0])
    except IndexError:
        return math.nan


MESSY = [
    "[[7]]", "[[ 7.5 ]]", "Rating: [[3]] ... on reflection [[8]]", "Rating: 7", "我认为这个回答很好。评分：[[9]]。谢谢",
    "[[rating]]", "[[5]] but then [[rating]]", "", "[[10]]", "score [[ 6 / 10 ]]", "[[2.25]] and [7]",
    "[[-3]]", "[[ 4 ]]\n\n", "[[]]", "[[1e2]]", "no brackets at all 5",
]


@pytest.mark.parametrize("text", MESSY)
def test_parse_rating_matches_official_script(text):
    got, want = parse_rating(text), official_parse(text)
    assert (math.isnan(got) and math.isnan(want)) or got == want


def test_parse_rating_expected_values():
    assert parse_rating("[[7]]") == 7.0
    assert parse_rating("[[ 7.5 ]]") == 7.5
    assert parse_rating("first [[2]] then [[9]]") == 9.0  # last one wins
    assert math.isnan(parse_rating("Rating: 7"))
    assert parse_rating("这个回答基本正确，但遗漏了一点。\n评分：[[6]]\n以上。") == 6.0
    assert math.isnan(parse_rating(None))


def test_overlap_tokens_and_f1():
    assert overlap_tokens("The Cat, sat!") == ["cat", "sat"]
    assert overlap_tokens("北京abc大学") == ["北", "京", "abc", "大", "学"]
    # pred {cat, sat, on, mat} vs gold {cat, sat}: P = 2/4, R = 1, F1 = 2/3
    assert token_f1("the cat sat on a mat", "cat sat") == pytest.approx(2 / 3)
    assert token_f1("", "x") == 0.0
    assert overlap_score("cat sat", "the cat sat") == 10.0
    assert overlap_score("dog", "cat") == 1.0
    assert overlap_score("北京", "北京大学") == pytest.approx(1 + 9 * (2 * 1 * 0.5 / 1.5))
    assert overlap_score("x b", "b c", low=1, high=3) == pytest.approx(1 + 2 * 0.5)


def _requests(n=6):
    return [JudgeRequest(f"q{i}", f"Rate answer number {i}. ANSWER-{i}", f"ans {i}", f"ref {i}") for i in range(n)]


def _rating_responder(messages):
    """Rates from the item number in the prompt; item 3 never gives a parseable rating."""
    prompt = messages[-1]["content"]
    i = int(re.search(r"ANSWER-(\d+)", prompt).group(1))
    assert messages[0]["role"] == "system"
    return "I cannot decide. Rating: 5" if i == 3 else f"Explanation in 中文. Rating: [[{i + 1}]]"


@pytest.mark.parametrize("backend", ["openai", "anthropic"])
def test_llm_judge_sweep_with_faults_resume_and_nan(backend, fake_api, planted_keys, tmp_path):  # noqa: F811
    api = fake_api(_rating_responder, fault_rate=0.5, seed=3, timeout_sleep_s=0.6)
    base = api.openai_base_url if backend == "openai" else api.anthropic_base_url
    judge = Judge(backend, "gpt-4-1106-preview" if backend == "openai" else "claude-3-5-sonnet-x", base_url=base,
                  cache_dir=tmp_path / "cache", timeout_s=0.3, backoff_s=0.01, max_attempts=2, concurrency=3)
    counts = judge_sweep(judge, _requests(), benchmark="bench", model_tag="m", runs=2)
    assert counts == {"judged": 12, "skipped": 0, "nan": 2, "failed": 0}
    assert set(api.fault_counts()) - {None}, "the server injected no faults"
    df = load_records(paths.results_dir("bench"))
    assert len(df) == 12 and set(df["run"]) == {0, 1}
    scores = df.set_index(["item_id", "run"])["score"]
    assert scores[("q0", 0)] == 1 and scores[("q5", 1)] == 6
    bad = df[df.item_id == "q3"]
    assert bad["score"].isna().all() and bad["parse_failed"].all() and (bad["attempts"] == 2).all()
    # the unparseable item was re-asked at a higher temperature: 2 clean answers per run
    assert api.successes_for("ANSWER-3") == 4
    # each run has its own cache, so run 1 really asked again (independent repeat)
    assert api.successes_for("ANSWER-0") == 2
    # resume: nothing left to do, no new HTTP request
    n_before = len(api.requests)
    again = judge_sweep(judge, _requests(), benchmark="bench", model_tag="m", runs=2)
    assert again["skipped"] == 12 and again["judged"] == 0 and len(api.requests) == n_before
    # a killed sweep resumes: delete two records, only those are redone (from the response cache)
    record_path("bench", judge.name, "m", "q1", 0).unlink()
    record_path("bench", judge.name, "m", "q2", 1).unlink()
    assert judge_sweep(judge, _requests(), benchmark="bench", model_tag="m", runs=2)["judged"] == 2
    assert len(api.requests) == n_before
    # keys come from the environment only (the SDK picks the header)
    assert all(planted_keys[backend] in f"{h['authorization']} {h['x-api-key']}" for h in api.auth_headers(backend))
    assert not any(planted_keys[backend] in p.read_text() for p in paths.outputs().rglob("*.json"))


def test_retry_turns_unparseable_into_a_score(fake_api, planted_keys, tmp_path):  # noqa: F811
    calls = Counter()
    lock = threading.Lock()

    def flaky(messages):
        with lock:
            calls[messages[-1]["content"]] += 1
            return "hmm" if calls[messages[-1]["content"]] == 1 else "[[4]]"

    api = fake_api(flaky)
    judge = Judge("openai", "gpt-4o", base_url=api.openai_base_url, cache_dir=tmp_path, max_attempts=3, backoff_s=0.01)
    verdicts = dict(judge.judge_many(_requests(3)))
    assert [verdicts[i].score for i in range(3)] == [4.0, 4.0, 4.0]
    assert all(v.attempts == 2 and not v.parse_failed for v in verdicts.values())
    assert judge.stats["input_tokens"] > 0


def test_transport_failure_is_counted_not_recorded(fake_api, planted_keys, tmp_path):  # noqa: F811
    api = fake_api(fault_rate=1.0, faults=("500",), max_faults_per_prompt=100)
    judge = Judge("anthropic", "claude-3-haiku-x", base_url=api.anthropic_base_url, cache_dir=tmp_path,
                  max_retries=1, backoff_s=0.01)
    counts = judge_sweep(judge, _requests(2), benchmark="b", model_tag="m", runs=1)
    assert counts == {"judged": 0, "skipped": 0, "nan": 0, "failed": 2}
    assert not list(paths.results_dir("b").rglob("*.json"))


def test_budget_guard_stops_before_spending(fake_api, planted_keys, tmp_path):  # noqa: F811
    api = fake_api()
    judge = Judge("openai", "gpt-4", base_url=api.openai_base_url, cache_dir=tmp_path, max_cost_usd=1e-6)
    with pytest.raises(BudgetExceeded):
        judge_sweep(judge, _requests(2), benchmark="b", model_tag="m", runs=1)
    assert api.requests == []


def _judge(api, tmp_path, **kw):
    return Judge("openai", "gpt-4", base_url=api.openai_base_url, cache_dir=tmp_path, backoff_s=0.01, max_tokens=16,
                 timeout_s=1.0, **kw)


def test_cap_covers_every_run_and_billed_empty_replies_count(fake_api, planted_keys, tmp_path):  # noqa: F811
    free = fake_api(_rating_responder, fault_rate=0.3, faults=("empty",), seed=4)
    uncapped = _judge(free, tmp_path / "a", concurrency=1)
    judge_sweep(uncapped, _requests(8), benchmark="free", model_tag="m", runs=2)
    price = price_for("gpt-4")
    billed = free.billed_usd(price)
    assert free.fault_counts()["empty"] > 0
    recorded = load_records(paths.results_dir("free"))["cost_usd"].sum()
    # what the provider billed, empty replies included, is in the judge's stats and in its records
    assert uncapped.stats["cost_usd"] == pytest.approx(billed) == pytest.approx(recorded)
    api = fake_api(_rating_responder)
    reqs = _requests(16)
    judge_sweep(_judge(api, tmp_path / "b"), reqs, benchmark="one", model_tag="m", runs=1)
    per_run = api.billed_usd(price)
    capped = _judge(api, tmp_path / "c", concurrency=1)
    calls = [dict(messages=r.prompt, system=r.system, max_tokens=16, temperature=0.0) for r in reqs]
    worst = max(capped.client(0).worst_case_cost(normalize_messages(r.prompt, r.system), 16) for r in reqs)
    # Room for run 0 (its estimate, and its bill plus one reservation), not for both runs: with a cap per
    # run, run 1 would also be sent and the total would pass the cap.
    cap = 1.05 * max(capped.client(0).estimate_cost(calls, 16), per_run + worst)
    assert cap < 2 * per_run
    capped = _judge(api, tmp_path / "c", concurrency=1, max_cost_usd=cap)
    with pytest.raises(BudgetExceeded, match="max_cost_usd"):
        judge_sweep(capped, reqs, benchmark="capped", model_tag="m", runs=2)
    assert api.billed_usd(price) - per_run <= cap
    assert len(load_records(paths.results_dir("capped"))) == 16  # run 0 finished before the stop


def test_bad_key_stops_the_sweep_at_once(fake_api, planted_keys, tmp_path):  # noqa: F811
    api = fake_api(fail_status=401)
    judge = _judge(api, tmp_path, concurrency=3)
    with pytest.raises(FatalAPIError, match="OPENAI_API_KEY") as err:
        judge_sweep(judge, _requests(9), benchmark="b", model_tag="m", runs=2)
    assert len(api.requests) <= 3 and PLANTED_KEYS["openai"] not in str(err.value)
    assert not list(paths.results_dir("b").rglob("*.json"))


def test_unknown_judge_price_names_the_prices_parameter(tmp_path):
    with pytest.raises(ValueError, match=r"`prices` parameter.*'my-judge'"):
        Judge("openai", "my-judge", cache_dir=tmp_path)
    assert Judge("openai", "my-judge", cache_dir=tmp_path, prices={"my-judge": [0, 0]}).client(0).price == (0.0, 0.0)


def test_overlap_judge_records_and_summary():
    reqs = [JudgeRequest("a", "", "cat sat", "the cat sat"), JudgeRequest("b", "", "dog", "cat"),
            JudgeRequest("c", "", "x", None)]
    judge = Judge("overlap")
    counts = judge_sweep(judge, reqs, benchmark="lbc", model_tag="tiny", runs=2)
    assert counts["judged"] == 6 and counts["nan"] == 2
    rec = json.loads(record_path("lbc", "overlap", "tiny", "a", 1).read_text())
    assert rec["score"] == 10.0 and rec["judge"] == "overlap" and rec["answer"] == "cat sat"
    summary = summarise(load_records(paths.results_dir("lbc")))
    row = summary.iloc[0]
    assert row["score"] == pytest.approx(5.5) and row["n_items"] == 3 and row["n_nan"] == 2
    table = results_table(summary.assign(benchmark="LongBench-Chat"),
                          pd.DataFrame([{"model_tag": "tiny", "benchmark": "MMLU", "score": 30.0}]))
    assert table.loc["tiny", "LongBench-Chat"] == pytest.approx(5.5) and table.loc["tiny", "MMLU"] == 30.0


def test_local_judge_without_rating_is_nan(tmp_path):
    from longalign.models import cpu_tokenizer, tiny_llama, tiny_llama_config

    tok = cpu_tokenizer()
    model = tiny_llama(tiny_llama_config(len(tok), hidden=32, layers=1, heads=2), seed=0)
    judge = Judge("local", "tiny", local_model=(model, tok), cache_dir=tmp_path, max_tokens=4)
    counts = judge_sweep(judge, _requests(2), benchmark="loc", model_tag="m", runs=1)
    df = load_records(paths.results_dir("loc"))
    # a random tiny model writes no [[n]] in 4 tokens: recorded as NaN, counted, one attempt (greedy)
    assert counts["judged"] == 2 and counts["nan"] == 2 and (df["attempts"] == 1).all()


def test_expected_rating_matches_each_rating_scored_alone():
    """The batched expected rating equals scoring every "k]]" continuation in its own forward."""
    import torch
    from longalign.eval.judge import RATING_PREFIX, expected_rating
    from longalign.models import cpu_tokenizer, tiny_llama, tiny_llama_config

    tok = cpu_tokenizer()
    model = tiny_llama(tiny_llama_config(len(tok), hidden=32, layers=1, heads=2), seed=1, dtype=torch.float64)
    msgs = [{"role": "system", "content": "Judge."}, {"role": "user", "content": "Rate the answer 'Paris'."}]
    score, probs = expected_rating(model, tok, msgs, 1, 10)
    prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) + RATING_PREFIX
    prefix = tok(prompt, add_special_tokens=False)["input_ids"]
    alone = []
    for k in range(1, 11):
        cont = tok(f"{k}]]", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([prefix + cont])).logits[0], -1)
        alone.append(sum(float(logp[len(prefix) + j - 1, t]) for j, t in enumerate(cont)))
    ref = torch.softmax(torch.tensor(alone), 0)
    assert [probs[str(k)] for k in range(1, 11)] == pytest.approx(ref.tolist(), abs=1e-6)
    assert score == pytest.approx(float((ref * torch.arange(1, 11)).sum()), rel=1e-6) and 1 <= score <= 10


def test_logprob_local_judge_always_rates(tmp_path):
    from longalign.models import cpu_tokenizer, tiny_llama, tiny_llama_config

    tok = cpu_tokenizer()
    model = tiny_llama(tiny_llama_config(len(tok), hidden=32, layers=1, heads=2), seed=0)
    judge = Judge("local", "tiny", local_model=(model, tok), cache_dir=tmp_path, rating="logprob")
    assert judge.name == "local-logprob-tiny"
    counts = judge_sweep(judge, _requests(2), benchmark="loc", model_tag="m", runs=2)
    df = load_records(paths.results_dir("loc"))
    assert counts["judged"] == 4 and counts["nan"] == 0 and df["score"].between(1, 10).all()
    assert all(abs(sum(json.loads(r)["p"].values()) - 1) < 1e-4 for r in df["raw"])
    with pytest.raises(ValueError, match="logprob"):
        Judge("openai", "gpt-4", rating="logprob")


def test_ids_that_differ_only_in_unsafe_characters_get_their_own_records():
    """``a/b`` and ``a_b`` (and ``a%2Fb``) used to share one record file, so one item was never judged."""
    ids = ["a/b", "a_b", "a%2Fb"]
    reqs = [JudgeRequest(i, "", f"answer {n}", f"answer {n}") for n, i in enumerate(ids)]
    counts = judge_sweep(Judge("overlap"), reqs, benchmark="ids", model_tag="m", runs=2)
    assert counts["judged"] == 6 and counts["nan"] == 0
    df = load_records(paths.results_dir("ids"))
    assert len(df) == 6 and sorted(df["item_id"].unique()) == sorted(ids)
    assert len({record_path("ids", "overlap", "m", i, 0) for i in ids}) == 3
    assert judge_sweep(Judge("overlap"), reqs, benchmark="ids", model_tag="m", runs=2)["skipped"] == 6
