"""eval.curves: EMA and relative-to-final math, checkpoint discovery, per-checkpoint records with resume, the figure."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch

from fakeapi import fake_api, planted_keys  # noqa: F401  (pytest fixtures)

from longalign import models, paths
from longalign.eval import checkpoints, curves
from longalign.plots.curves import plot_learning_curves
from longalign.records import DataError, load_records, write_jsonl, write_record


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("weight", [0.0, 0.3, 0.6, 0.9])
def test_ema_matches_pandas(weight):
    values = [1.0, 4.0, 2.0, 8.0, 5.0, 5.0, 0.5]
    ref = pd.Series(values).ewm(alpha=1 - weight, adjust=False).mean().tolist()
    assert curves.ema(values, weight) == pytest.approx(ref)


def test_ema_edges():
    assert curves.ema([]) == [] and curves.ema([3.0], 0.9) == [3.0]
    with pytest.raises(ValueError):
        curves.ema([1.0], 1.0)


def test_relative_to_final():
    assert curves.relative_to_final([2.0, 5.0, 4.0]) == [0.5, 1.25, 1.0]
    assert curves.relative_to_final([4.0, 2.0, 3.0], lower_is_better=True) == [0.75, 1.5, 1.0]
    with pytest.raises(ValueError, match="non-zero"):
        curves.relative_to_final([1.0, 0.0])


def _synthetic() -> pd.DataFrame:
    rows = [{"run": "r", "task": t, "step": s, "score": v} for t, vals in
            (("long", [2.0, 4.0, 8.0]), ("short", [6.0, 3.0, 3.0])) for s, v in zip((30, 10, 20), vals)]
    return pd.DataFrame(rows)


def test_curve_frame_sorts_steps_and_normalises():
    frame = curves.curve_frame(_synthetic(), weight=0.5)
    long = frame[frame["task"] == "long"]
    assert long["step"].tolist() == [10, 20, 30] and long["relative"].tolist() == [2.0, 4.0, 1.0]
    assert long["relative_ema"].tolist() == pytest.approx([2.0, 3.0, 2.0])
    fig = plot_learning_curves(frame)
    ax = fig.axes[0]
    styles = [line.get_linestyle() for line in ax.lines]
    assert styles.count(":") == 2 and styles.count("-") == 3  # raw + EMA per task, plus the y=1 line
    plt.close(fig)


def test_missing_run_names_notebook_03():
    with pytest.raises(FileNotFoundError, match="03_training_methods"):
        checkpoints.run_checkpoints("nope-seed0")


def _fake_run(name: str, steps: list[int]) -> None:
    tok = models.cpu_tokenizer()
    cfg = models.tiny_llama_config(len(tok), hidden=32, layers=1, heads=2, max_position=512)
    ckpts = []
    for step in steps:
        folder = paths.runs_dir() / name / f"checkpoint-{step}"
        models.tiny_llama(cfg, seed=step).save_pretrained(folder)
        tok.save_pretrained(folder)
        ckpts.append({"step": step, "path": str(folder.relative_to(paths.outputs()))})
    write_record(paths.runs_dir() / f"{name}.json", {"name": name, "checkpoints": ckpts})


def test_evaluate_run_writes_one_record_per_checkpoint_and_task(monkeypatch):
    _fake_run("fake-seed0", [2, 1])
    assert [c["step"] for c in checkpoints.run_checkpoints("fake-seed0")] == [1, 2]
    heldout = paths.data_dir() / "heldout-longqa.jsonl"
    write_jsonl(heldout, [{"id": f"q{i}", "question": "Who?", "context": "Alice met Bob. " * 50, "answer": "Alice"}
                          for i in range(2)])
    tasks = {"long": curves.long_items(heldout), "short": [{"id": "s", "prompt": "Say hi", "answer": "hi"}]}
    recs = curves.evaluate_run("fake-seed0", tasks, max_new_tokens={"long": 3, "short": 3}, progress=False)
    assert [(r["step"], r["task"]) for r in recs] == [(1, "long"), (1, "short"), (2, "long"), (2, "short")]
    assert all(1.0 <= r["score"] <= 10.0 and r["n_items"] == len(tasks[r["task"]]) for r in recs)
    assert recs[0]["score"] == pytest.approx(sum(i["score"] for i in recs[0]["items"]) / 2)
    monkeypatch.setattr(curves, "score_items", lambda *a, **k: pytest.fail("finished records must not rerun"))
    assert curves.evaluate_run("fake-seed0", tasks, max_new_tokens={"long": 3, "short": 3}, progress=False) == recs
    # other short items (another short_file or limit): only the short records are recomputed, and overwritten
    calls = []
    monkeypatch.setattr(curves, "score_items", lambda m, t, items, **k: calls.append(items) or (2.0, [
        {"id": it["id"], "answer": "", "score": 2.0, "nll": 1.0} for it in items]))
    other = {**tasks, "short": [{"id": "0", "prompt": "Say bye", "answer": "bye"}]}
    again = curves.evaluate_run("fake-seed0", other, max_new_tokens={"long": 3, "short": 3}, progress=False)
    assert calls == [other["short"]] * 2 and [r["score"] for r in again if r["task"] == "short"] == [2.0, 2.0]
    assert [r for r in again if r["task"] == "long"] == [r for r in recs if r["task"] == "long"]
    df = load_records(paths.results_dir("curves"))
    assert len(df) == 4 and not math.isnan(curves.curve_frame(df)["relative"].iloc[0])
    assert (curves.curve_frame(df, metric="nll")["nll"] > 0).all()


def test_answer_nll_matches_manual_cross_entropy():
    tok = models.cpu_tokenizer()
    model = models.tiny_llama(models.tiny_llama_config(len(tok), hidden=32, layers=1, heads=2, max_position=512)).eval()
    prompt_ids = tok.apply_chat_template([{"role": "user", "content": "Who?"}], tokenize=False, add_generation_prompt=True)
    p = tok(prompt_ids, add_special_tokens=False)["input_ids"]
    a = tok("Alice", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([p + a])).logits[0], -1)
    ref = -sum(float(logp[len(p) - 1 + k, t]) for k, t in enumerate(a)) / len(a)
    assert curves.answer_nll(model, tok, "Who?", "Alice") == pytest.approx(ref, rel=1e-5)


def test_answer_nll_fits_a_long_reference_into_a_short_window():
    tok = models.cpu_tokenizer()
    model = models.tiny_llama(models.tiny_llama_config(len(tok), hidden=32, layers=1, heads=2, max_position=64)).eval()
    answer = "the quick brown fox jumps over the lazy dog " * 40  # far more tokens than the window
    assert len(tok(answer)["input_ids"]) > 64 and math.isfinite(curves.answer_nll(model, tok, "Who? " * 30, answer))


def test_long_items_missing_file_names_notebook_01(tmp_path):
    with pytest.raises(FileNotFoundError, match="01_data_construction"):
        curves.long_items(tmp_path / "missing.jsonl")


def _judge_responder(messages):
    """Rates LongBench-Chat prompts 7 and MT-Bench prompts 4; one long item never gives a parseable rating."""
    prompt = messages[-1]["content"]
    if "[Reference answer]" in prompt:  # the LongBench-Chat zero-shot judge prompt
        return "No verdict, sorry." if "Who is NOBODY?" in prompt else "Mostly right. [[7]]"
    assert "[The Start of Reference Answer]" in prompt and messages[0]["role"] == "system"
    return "Explanation. Rating: [[4]]"


def test_evaluate_run_with_openai_judge_through_fake_api(fake_api, planted_keys, tmp_path):  # noqa: F811
    _fake_run("judged-seed0", [1, 2])
    heldout = paths.data_dir() / "heldout-longqa.jsonl"
    write_jsonl(heldout, [{"id": f"q{i}", "question": q, "context": "Alice met Bob. " * 20, "answer": "Alice"}
                          for i, q in enumerate(["Who met Bob?", "Who is NOBODY?"])])
    short = [{"id": "111", "prompt": "What is 2+2?", "answer": "4", "category": "math"}]
    tasks = {"long": curves.long_items(heldout), "short": short}
    api = fake_api(_judge_responder, fault_rate=0.3, faults=("429", "500", "malformed"), seed=1)
    judge = curves.make_judge("openai", "gpt-4-1106-preview", api.openai_base_url, 1.0,
                              cache_dir=tmp_path / "cache", backoff_s=0.01)
    kw = dict(max_new_tokens={"long": 3, "short": 3}, progress=False, judge=judge)
    recs = curves.evaluate_run("judged-seed0", tasks, **kw)
    assert [(r["step"], r["task"]) for r in recs] == [(1, "long"), (1, "short"), (2, "long"), (2, "short")]
    long, short_rec = recs[0], recs[1]
    assert [i["score"] for i in long["items"]] == [7.0, None]  # the unparseable rating is kept out, and counted
    assert long["score"] == 7.0 and long["n_nan"] == 1 and long["scorer"] == "openai-gpt-4-1106-preview"
    assert short_rec["score"] == 4.0 and short_rec["n_nan"] == 0 and short_rec["nll"] > 0
    judged = load_records(paths.results_dir("curves-long"))
    assert len(judged) == 4 and judged["parse_failed"].sum() == 2
    assert all(planted_keys["openai"] in h["authorization"] for h in api.auth_headers("openai"))
    # rerun: every record is there, so no answer is regenerated and no request is made
    n_before = len(api.requests)
    assert curves.evaluate_run("judged-seed0", tasks, **kw) == recs and len(api.requests) == n_before
    # a lost curve record is rebuilt from the judge records, still without a request
    assert not list(paths.results_dir("curves").glob("judged-seed0/step*"))  # apart from the overlap records
    curves.curve_path("judged-seed0", 2, "short", curves.scorer_name(judge)).unlink()
    assert curves.evaluate_run("judged-seed0", tasks, **kw)[3]["score"] == 4.0 and len(api.requests) == n_before
    assert not any(planted_keys["openai"] in p.read_text() for p in paths.outputs().rglob("*.json"))


def test_make_judge_overlap_is_offline():
    assert curves.make_judge("overlap") is None
    with pytest.raises(ValueError, match="model name"):
        curves.make_judge("openai")


def test_short_items_from_a_heldout_file(tmp_path):
    path = tmp_path / "heldout-short.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": f"A{i}"}]} for i in range(3)]
    write_jsonl(path, rows)
    items = curves.short_items(2, path)
    assert items == [{"id": "0", "prompt": "Q0", "answer": "A0", "category": "heldout-short"},
                     {"id": "1", "prompt": "Q1", "answer": "A1", "category": "heldout-short"}]
    assert len(curves.short_items(None, path)) == 3
    reqs = curves.judge_requests("short", items, {"0": "a", "1": "b"})  # graded as MT-Bench general questions
    assert [r.item_id for r in reqs] == ["0-t1", "1-t1"]
    with pytest.raises(FileNotFoundError, match="01_data_construction"):
        curves.short_items(2, tmp_path / "missing.jsonl")
    write_jsonl(path, [])
    with pytest.raises(ValueError, match="heldout_short > 0"):
        curves.short_items(2, path)
    path.write_text('{"messages": [{"role": "user", "content": "Q"}]}\n{oops\n')
    with pytest.raises(DataError, match=r"heldout-short\.jsonl:2"):
        curves.short_items(2, path)
