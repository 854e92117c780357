"""Self-Instruct pipeline: appendix-A prompts, question parsing, grounded offline answers, kill + resume over both SDKs."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import stat
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from fakeapi import PLANTED_KEYS, fake_api, planted_keys  # noqa: F401 — pytest fixtures
from longalign import paths
from longalign.data import grounded
from longalign.data.selfinstruct import (PROMPTS, TASK_TYPES, choose_task_type, finished_ids, parse_questions,
                                         repair_jsonl, run_generation)
from longalign.llm import BudgetExceeded, FatalAPIError, LLMClient, LLMError, price_for
from longalign.records import DataError

MODELS = {"anthropic": "claude-2.1", "openai": "gpt-4o-mini"}
FAST = dict(timeout_s=1.0, backoff_s=0.005, max_backoff_s=0.02)  # timeout well above a loaded machine's latency
WORDS = ("river mountain garden lantern harbor violet meadow copper falcon timber silver orchard canyon "
         "marble thunder willow crystal ember prairie glacier summit hollow breeze cobalt saddle").split()


def synthetic_doc(i: int, n_lines: int = 30) -> dict:
    """A document with a unique marker line, sentences, repeated words and a markdown heading structure."""
    rng = random.Random(i)
    lines = [f"# Report DOC-{i:03d}|", ""]
    for k in range(n_lines):
        if k % 10 == 0:
            lines += [f"## Part {k // 10 + 1} of report {i}", ""]
        words = [rng.choice(WORDS) for _ in range(rng.randint(6, 11))]
        lines.append(" ".join(words).capitalize() + f" number {i}-{k}.")
    return {"id": f"d{i:03d}", "source": "synthetic", "lang": "en", "title": f"doc {i}", "text": "\n".join(lines)}


def zh_doc(i: int) -> dict:
    rng = random.Random(100 + i)
    chars = "山水风花雪月江河湖海天地人心书画诗酒茶"
    lines = [f"文档编号DOC-{i:03d}|"]
    lines += ["".join(rng.choice(chars) for _ in range(rng.randint(10, 20))) + f"第{k}句。" for k in range(25)]
    return {"id": f"z{i:03d}", "source": "synthetic_zh", "lang": "zh", "title": f"文档{i}", "text": "\n".join(lines)}


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---- prompts and parsing --------------------------------------------------------------------------------
def test_prompts_are_appendix_a_verbatim():
    paper = paths.SHARED / "paper" / "longalign_paper.txt"
    if not paper.is_file():
        pytest.skip("paper text not in this checkout")
    text = re.sub(r"(\w)-\n(\w)", r"\1\2", paper.read_text(encoding="utf-8"))  # undo end-of-line hyphenation
    flat = re.sub(r"\s+", "", text)
    for task, prompt in PROMPTS["en"].items():
        assert re.sub(r"\s+", "", prompt) in flat, task
    assert set(PROMPTS["zh"]) == set(TASK_TYPES) and all("5个" in p and "1: " in p for p in PROMPTS["zh"].values())


MESSY = [
    ("1: What is A?\n2: What is B?\n3: What is C?", ["What is A?", "What is B?", "What is C?"]),
    ("Here are five questions:\n\n1. Why A?\n2) Why B?\n3 - Why C?\nQ4: Why D?\n**5.** Why E?\n\nHope this helps!",
     ["Why A?", "Why B?", "Why C?", "Why D?", "Why E?"]),
    ("1：甲是什么？\n2：乙是什么？\n3、丙是什么？", ["甲是什么？", "乙是什么？", "丙是什么？"]),
    ("1: First? 2: Second? 3: Third?", ["First?", "Second?", "Third?"]),
    ("1: How does the author\nconnect X and Y?\n3: Gap in numbering?\n\nThese cover all parts.",
     ["How does the author connect X and Y?", "Gap in numbering?"]),
    ('- "What is quoted?"\n- Another one?\nnot a question', ["What is quoted?", "Another one?"]),
    ("Question 1: Alpha?\nQuestion 2: Beta?", ["Alpha?", "Beta?"]),
    ("1: Dup?\n2: Dup?", ["Dup?"]),
    ("1.\nWhat is on the next line?\n2.\n\nAnd after a blank?", ["What is on the next line?", "And after a blank?"]),
    ("I cannot propose questions for this text.", []),
]


@pytest.mark.parametrize("text,expected", MESSY)
def test_parse_questions_on_messy_outputs(text, expected):
    assert parse_questions(text) == expected


def test_task_type_is_seeded_per_document_and_balanced():
    ids = [f"doc-{i}" for i in range(800)]
    first = [choose_task_type(i, 0) for i in ids]
    assert [choose_task_type(i, 0) for i in reversed(ids)] == first[::-1]  # order does not matter
    counts = Counter(first)
    assert set(counts) == set(TASK_TYPES) and min(counts.values()) > 150, counts
    assert [choose_task_type(i, 1) for i in ids] != first


# ---- grounded offline generator -----------------------------------------------------------------------
def _independent_check(doc: str, question: str, answer: str) -> bool:
    """Re-derive each templated answer with different code than the generator uses."""
    quoted = re.findall(r'"([^"]*)"|“([^”]*)”', question)
    spans = [a or b for a, b in quoted]
    line_of = lambda s: doc[: doc.find(s)].count("\n") + 1  # noqa: E731
    if question.startswith("How many times does the word"):
        return f"occurs {sum(1 for t in re.findall(r'[A-Za-z0-9_]+', doc) if t == spans[0])} times" in answer
    if question.startswith("Quote the line"):
        line = next(ln for ln in doc.splitlines() if spans[0] in ln).strip()
        return answer == f'The line is: "{line}"'
    if question.startswith("Which appears first"):
        first = min(spans[:2], key=doc.find)
        return answer.startswith(f'"{first}" appears first')
    if question.startswith("What is the difference between the line numbers"):
        return answer.endswith(f"differ by {abs(line_of(spans[0]) - line_of(spans[1]))}.")
    if question.startswith("On which line"):
        return answer.endswith(f"line {line_of(spans[0])}.")
    if question.startswith("List the first"):
        k = int(re.search(r"first (\d+)", question).group(1))
        heads = [ln.lstrip("#").strip() for ln in doc.splitlines() if ln.startswith("#")][:k]
        return answer == "\n".join(f"{i}. {h}" for i, h in enumerate(heads, 1))
    if question.startswith("Which sentence immediately follows"):
        pos = doc.find(spans[0]) + len(spans[0])
        return answer.startswith("The next sentence is") and doc[pos:].strip().startswith(answer.split('"')[1][:20])
    if question.startswith("Which word occurs more often"):
        counts = {s: len(re.findall(rf"\b{s}\b", doc)) for s in spans[:2]}
        return answer.endswith(f'so "{max(counts, key=counts.get)}" occurs more often.')
    if question.startswith("List, in order, every line"):
        return answer.count("\n") + 1 == sum(1 for ln in doc.splitlines() if re.search(rf"\b{spans[0]}\b", ln))
    if question.startswith("Summarize how the text opens"):
        return answer.startswith('The text opens with "# Report')
    if "出现了多少次" in question:
        return f"出现了{doc.count(spans[0])}次" in answer
    if question.startswith("请引用文中包含短语"):
        return spans[0] in answer and answer.removeprefix("该行是：“").removesuffix("”") in doc.splitlines()
    return True  # other Chinese templates: covered by the solver regexes; counted below


def test_grounded_offline_answers_are_verifiably_correct(tmp_path):
    docs = [synthetic_doc(i, 40) for i in range(24)] + [zh_doc(i) for i in range(6)]
    client = LLMClient("offline", "grounded", offline_fn=grounded.grounded_responder, cache_dir=tmp_path / "c")
    summary = run_generation(docs, client, tmp_path / "long.jsonl", seed=3)
    assert summary["written"] == 30 and summary["skipped"] == 0
    texts = {d["id"]: d["text"] for d in docs}
    checked = Counter()
    for rec in _read(tmp_path / "long.jsonl"):
        meta, answer = rec["meta"], rec["messages"][1]["content"]
        assert rec["messages"][0]["content"] == texts[meta["doc_id"]] + "\n\n" + meta["question"]
        assert len(meta["questions"]) == 5 and meta["question"] == meta["questions"][meta["question_index"]]
        for q in meta["questions"]:  # every proposed question, not only the chosen one
            a = grounded.answer_question(texts[meta["doc_id"]], q)
            assert a and _independent_check(texts[meta["doc_id"]], q, a), (q, a)
            checked[q.split(" ")[0][:6]] += 1
        assert answer == grounded.answer_question(texts[meta["doc_id"]], meta["question"])
        assert meta["lang"] == ("zh" if meta["doc_id"].startswith("z") else "en")
    assert len(checked) >= 6, checked


def test_chinese_documents_get_chinese_prompts(tmp_path):
    seen = []

    def spy(messages):
        seen.append(messages[-1]["content"])
        return grounded.grounded_responder(messages)

    client = LLMClient("offline", "spy", offline_fn=spy, cache_dir=tmp_path / "c")
    run_generation([zh_doc(1)], client, tmp_path / "zh.jsonl")
    task = choose_task_type("z001", 0)
    assert seen[0].endswith("\n\n" + PROMPTS["zh"][task])
    rec = _read(tmp_path / "zh.jsonl")[0]
    assert re.search(r"[\u4e00-\u9fff]", rec["meta"]["question"]) and rec["meta"]["task_type"] == task


def test_unparseable_questions_are_retried_then_counted(tmp_path):
    temps = []
    client = LLMClient("offline", "prose", offline_fn=lambda m: "Sorry, I would rather not.", cache_dir=tmp_path / "c")
    orig = client.complete
    client.complete = lambda *a, **k: temps.append(k.get("temperature")) or orig(*a, **k)
    summary = run_generation([synthetic_doc(1)], client, tmp_path / "o.jsonl", parse_retries=2)
    assert summary["skips"] == {"unparseable_questions": 1} and summary["written"] == 0
    assert len(set(temps)) == 3  # each retry is a new request (new cache key), not a cached repeat


def test_api_errors_are_counted_and_retried_on_resume(tmp_path):
    broken = {"on": True}

    def fn(messages):
        if broken["on"] and "DOC-002|" in messages[-1]["content"]:
            raise ConnectionError("down")
        return grounded.grounded_responder(messages)

    client = LLMClient("offline", "g", offline_fn=fn, cache_dir=tmp_path / "c", max_retries=1, backoff_s=0.001)
    docs = [synthetic_doc(i) for i in range(4)]
    first = run_generation(docs, client, tmp_path / "o.jsonl")
    assert first["skips"] == {"api_error": 1} and first["written"] == 3
    broken["on"] = False
    second = run_generation(docs, client, tmp_path / "o.jsonl")
    assert second["written"] == 1 and second["already_done"] == 3
    assert sorted(finished_ids(tmp_path / "o.jsonl")) == [d["id"] for d in docs]


def test_every_document_failing_at_the_api_stops_with_the_cause(tmp_path):
    def down(messages):
        raise ConnectionError("upstream down")

    client = LLMClient("offline", "g", offline_fn=down, cache_dir=tmp_path / "c", max_retries=1, backoff_s=0.001)
    with pytest.raises(LLMError, match=r"no record written, 3 document\(s\) failed at the API.*connection"):
        run_generation([synthetic_doc(i) for i in range(3)], client, tmp_path / "o.jsonl")


def test_bad_key_stops_generation_at_once_and_keeps_a_summary(fake_api, planted_keys, tmp_path, capsys):
    api = fake_api(grounded.grounded_responder, fail_status=401)
    client = LLMClient("anthropic", MODELS["anthropic"], base_url=api.anthropic_base_url, cache_dir=tmp_path / "c",
                       concurrency=2, **FAST)
    with pytest.raises(FatalAPIError, match="ANTHROPIC_API_KEY") as err:
        run_generation([synthetic_doc(i) for i in range(8)], client, tmp_path / "o.jsonl")
    assert len(api.requests) <= 2 and not (tmp_path / "o.jsonl").exists()
    summary = json.loads((tmp_path / "o.summary.json").read_text())
    assert summary["written"] == 0 and summary["errors"]["auth"]["count"] == len(api.requests)
    assert "ANTHROPIC_API_KEY" in summary["stopped"] and api.anthropic_base_url in summary["stopped"]
    shown = str(err.value) + json.dumps(summary) + capsys.readouterr().out
    assert PLANTED_KEYS["anthropic"] not in shown and "auth:" in shown


def test_budget_stop_keeps_finished_records_owner_only(fake_api, planted_keys, tmp_path):
    # the estimate before the run fits the cap; the provider then bills 2x the input and every max_tokens
    api = fake_api(grounded.grounded_responder, bill_input_factor=2.0, bill_output="max_tokens")
    client = LLMClient("openai", "gpt-4o", base_url=api.openai_base_url, cache_dir=tmp_path / "c", concurrency=4,
                       max_cost_usd=0.08, **FAST)
    out = paths.data_dir() / "long.jsonl"
    old = os.umask(0o002)
    try:
        with pytest.raises(BudgetExceeded, match="max_cost_usd"):
            run_generation([synthetic_doc(i) for i in range(20)], client, out, max_tokens_questions=256,
                           max_tokens_answer=256, expected_output_tokens=20)
    finally:
        os.umask(old)
    assert api.billed_usd(price_for("gpt-4o")) <= 0.08
    summary = json.loads(out.with_name("long.summary.json").read_text())
    assert 0 < summary["written"] < 20 and "max_cost_usd" in summary["stopped"]
    assert len(finished_ids(out)) == summary["written"]  # whole records only
    assert stat.S_IMODE(paths.data_dir().stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in (out, out.with_name("long.summary.json")))


class CharChatTokenizer:
    """One token per character of the concatenated contents: an exact, independent length reference."""

    def apply_chat_template(self, messages, tokenize=False):
        return "".join(m["content"] for m in messages)

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": list(text)}


def test_records_over_max_len_are_counted_not_written(tmp_path):
    docs = [synthetic_doc(1, 10), synthetic_doc(2, 60)]
    client = LLMClient("offline", "g", offline_fn=grounded.grounded_responder, cache_dir=tmp_path / "c")
    limit = len(docs[0]["text"]) + 400
    summary = run_generation(docs, client, tmp_path / "o.jsonl", tokenizer=CharChatTokenizer(), max_len=limit)
    assert summary["skips"] == {"record_too_long": 1} and finished_ids(tmp_path / "o.jsonl") == {"d001"}
    rec = _read(tmp_path / "o.jsonl")[0]
    assert rec["meta"]["n_tokens"] == sum(len(m["content"]) for m in rec["messages"]) <= limit


def test_torn_line_repair_and_duplicate_detection(tmp_path):
    path = tmp_path / "o.jsonl"
    path.write_text('{"meta": {"doc_id": "a"}}\n{"meta": {"doc_', encoding="utf-8")
    assert repair_jsonl(path) == len('{"meta": {"doc_') and finished_ids(path) == {"a"}
    path.write_text('{"meta": {"doc_id": "a"}}\n{"meta": {"doc_id": "a"}}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"o\.jsonl:2: duplicate"):
        finished_ids(path)


# ---- kill midway and resume, through the real SDKs and a faulty server -----------------------------------------
SCRIPT = """
import json, sys
from longalign.llm import LLMClient
from longalign.data.selfinstruct import run_generation
kind, model, url, docs, out, cache = sys.argv[1:]
client = LLMClient(kind, model, base_url=url, cache_dir=cache, concurrency=2, timeout_s=1.0, backoff_s=0.005,
                   max_backoff_s=0.02)
print(client, flush=True)
run_generation(json.load(open(docs)), client, out, seed=0)
"""


def _slow_grounded(messages):
    time.sleep(0.15)  # slow enough that the kill lands mid-run
    return grounded.grounded_responder(messages)


def _kill_subprocess(kind, url, docs, out, cache, log):
    """Run the generation in a child process and SIGKILL it once 3 records are on disk."""
    (out.parent / "docs.json").write_text(json.dumps(docs))
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-c", SCRIPT, kind, MODELS[kind], url, str(out.parent / "docs.json"),
                                 str(out), str(cache)], stdout=fh, stderr=subprocess.STDOUT, env=os.environ.copy())
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and len(_read(out) if out.exists() else []) < 3:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, log.read_text()[-2000:]
    with open(out, "ab") as fh:  # also a torn last write, as if killed inside append
        fh.write(b'{"messages": [{"role": "user", "content": "DOC-0')


class Crash(BaseException):
    """Stands for a kill: not an Exception, so nothing in the pipeline may swallow it."""


def _crash_in_process(kind, url, docs, out, cache, log, monkeypatch):
    """Run the generation in this process and crash inside the 4th append, leaving a torn line."""
    from longalign.data import selfinstruct

    real, writes = selfinstruct.append_jsonl, []

    def append_then_crash(path, row):
        if len(writes) == 3:
            with open(path, "ab") as fh:
                fh.write(json.dumps(row).encode()[:40])
            raise Crash()
        writes.append(row)
        real(path, row)

    monkeypatch.setattr(selfinstruct, "append_jsonl", append_then_crash)
    client = LLMClient(kind, MODELS[kind], base_url=url, cache_dir=cache, concurrency=2, **FAST)
    with pytest.raises(Crash):
        run_generation(docs, client, out, seed=0)
    monkeypatch.setattr(selfinstruct, "append_jsonl", real)
    log.write_text(repr(client))


@pytest.mark.parametrize("kind,crash", [("openai", "sigkill"), ("anthropic", "exception")])
def test_kill_midway_then_resume_exactly_one_record_per_document(kind, crash, fake_api, planted_keys, tmp_path,
                                                                 monkeypatch):
    api = fake_api(_slow_grounded, fault_rate=0.4, seed=5, timeout_sleep_s=1.3)
    url = api.anthropic_base_url if kind == "anthropic" else api.openai_base_url
    docs = [synthetic_doc(i) for i in range(12)]
    out, cache, log = tmp_path / "long.jsonl", tmp_path / "cache", tmp_path / "child.log"
    if crash == "sigkill":
        _kill_subprocess(kind, url, docs, out, cache, log)
    else:
        _crash_in_process(kind, url, docs, out, cache, log, monkeypatch)
    assert not out.read_bytes().endswith(b"\n")  # the torn line is there
    before_kill = {json.loads(line)["meta"]["doc_id"] for line in out.read_text().splitlines()[:-1]}
    assert 3 <= len(before_kill) < len(docs)
    n_before = len(api.requests)
    client = LLMClient(kind, MODELS[kind], base_url=url, cache_dir=cache, concurrency=2, **FAST)
    summary = run_generation(docs, client, out, seed=0)
    assert summary["repaired_bytes"] > 0 and summary["already_done"] == len(before_kill)
    ids = [r["meta"]["doc_id"] for r in _read(out)]
    assert sorted(ids) == sorted(d["id"] for d in docs) and len(ids) == len(set(ids))  # none lost or duplicated
    for req in api.requests[n_before:]:  # documents finished before the kill cost nothing on resume
        assert not any(f"DOC-{int(d[1:]):03d}|" in req["prompt"] for d in before_kill)
    # each document needs 2 good answers (questions + answer); only requests in flight at the kill may repeat
    repeats = sum(max(0, api.successes_for(f"DOC-{i:03d}|") - 2) for i in range(len(docs)))
    assert repeats <= 2, repeats
    faults = api.fault_counts()
    assert sum(v for k, v in faults.items() if k) >= 5 and len([k for k in faults if k]) >= 3, faults
    n_done = len(api.requests)
    again = run_generation(docs, client, out, seed=0)
    assert again["written"] == 0 and len(api.requests) == n_done
    texts = {d["id"]: d["text"] for d in docs}
    for rec in _read(out):
        assert rec["messages"][1]["content"] == grounded.answer_question(texts[rec["meta"]["doc_id"]], rec["meta"]["question"])
    for path in [log, out, *out.parent.glob("*.summary.json"), *cache.rglob("*.json")]:
        text = path.read_text(encoding="utf-8")
        assert PLANTED_KEYS["anthropic"] not in text and PLANTED_KEYS["openai"] not in text


# ---- notebook 01 end to end against the fake API: the planted key appears nowhere -----------------------------
@pytest.mark.slow
def test_notebook_01_over_fake_anthropic_never_leaks_the_key(fake_api, planted_keys, tmp_path):
    import papermill

    from longalign import config

    api = fake_api(grounded.grounded_responder, fault_rate=0.2, seed=3, faults=("429", "500", "529", "empty", "malformed"))
    params = {**config.notebook_params("test", "01_data_construction"), "backend": "anthropic", "model": "claude-2.1",
              "base_url": api.anthropic_base_url, "max_cost_usd": 1.0, "llm_cache_dir": str(tmp_path / "llm")}
    executed = tmp_path / "01.ipynb"
    papermill.execute_notebook(str(paths.NOTEBOOKS / "01_data_construction.ipynb"), str(executed), parameters=params,
                               kernel_name="python3", progress_bar=False, log_output=False)
    assert api.successes_for("") >= 2 * params["num_documents"] and any(api.fault_counts()), api.fault_counts()
    rows = _read(paths.data_dir() / "mix-long10.jsonl")
    assert sum(r["meta"]["kind"] == "long" for r in rows) == params["num_documents"]
    assert all(r["meta"]["backend"] == "anthropic" for r in rows if r["meta"]["kind"] == "long")
    # a rejected key stops the notebook at the generation cell with the provider's message, not an IndexError later
    bad = fake_api(fail_status=401)
    failed = tmp_path / "01-bad.ipynb"
    with pytest.raises(papermill.PapermillExecutionError) as err:
        papermill.execute_notebook(str(paths.NOTEBOOKS / "01_data_construction.ipynb"), str(failed),
                                   parameters={**params, "base_url": bad.anthropic_base_url,
                                               "output_path": "bad.jsonl"},
                                   kernel_name="python3", progress_bar=False, log_output=False)
    assert err.value.ename == "FatalAPIError" and "ANTHROPIC_API_KEY" in err.value.evalue, err.value.evalue
    assert bad.anthropic_base_url in err.value.evalue and len(bad.requests) <= params["concurrency"]
    assert "auth: " in failed.read_text()  # the error counts by class were printed
    files = [executed, failed, *paths.outputs().rglob("*"), *(tmp_path / "llm").rglob("*")]
    for path in (p for p in files if p.is_file()):
        data = path.read_bytes()
        assert PLANTED_KEYS["anthropic"].encode() not in data and PLANTED_KEYS["openai"].encode() not in data, path


# ---- two generation runs on one output file -----------------------------------------------------------------
def test_two_runs_on_one_file_write_each_document_once(tmp_path, stderr_recorder):
    """A second run on the same output waits for the first (saying so), then finds every document done."""
    import threading

    started, go = threading.Event(), threading.Event()

    def held(messages):  # the first run holds its lock until the test lets it go on
        started.set()
        assert go.wait(60), "the test never released the first run"
        return grounded.grounded_responder(messages)

    docs, out, summaries = [synthetic_doc(i) for i in range(4)], tmp_path / "data" / "long.jsonl", {}

    def run(name, fn):
        client = LLMClient("offline", "g", offline_fn=fn, cache_dir=tmp_path / f"cache-{name}", concurrency=2)
        summaries[name] = run_generation(docs, client, out)

    with stderr_recorder:  # both runs' threads write to it
        first = threading.Thread(target=run, args=("first", held))
        first.start()
        assert started.wait(60) and first.is_alive()
        second = threading.Thread(target=run, args=("second", grounded.grounded_responder))
        second.start()
        try:  # the second run reports that it waits
            err = stderr_recorder.wait_for("another process is writing", second.is_alive, "the second run")
            assert str(out) in err and "second" not in summaries
        finally:
            go.set()
        first.join(120), second.join(120)
    ids = [r["meta"]["doc_id"] for r in _read(out)]
    assert sorted(ids) == [d["id"] for d in docs]  # each document once, not once per run
    assert summaries["first"]["written"] == 4
    assert summaries["second"]["written"] == 0 and summaries["second"]["already_done"] == 4


def test_load_rows_puts_generated_records_in_document_order(tmp_path):
    from longalign.data.build import load_rows
    from longalign.records import write_jsonl

    docs = [{"id": f"d{k}"} for k in (3, 1, 2)]
    finished = [{"meta": {"doc_id": i}, "messages": []} for i in ("d1", "old", "d2", "d3")]  # completion order
    path = write_jsonl(tmp_path / "long.jsonl", finished)
    assert [r["meta"]["doc_id"] for r in load_rows(path)] == ["d1", "old", "d2", "d3"]  # the file's order
    # any completion order gives the documents' order; rows of other documents follow
    for order in (finished, finished[::-1]):
        write_jsonl(path, order)
        assert [r["meta"]["doc_id"] for r in load_rows(path, docs)] == ["d3", "d1", "d2", "old"]
    assert load_rows(tmp_path / "missing.jsonl", docs) == []
