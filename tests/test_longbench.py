"""LongBench judged tasks: shipped prompts vs the official files, loading, judge prompts, 0-100 normalisation."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from longalign import paths
from longalign.eval import longbench as lb
from longalign.records import DataError


def test_shipped_prompts_match_official_files():
    folder = paths.shared_data("longbench")
    if folder is None:
        pytest.skip("no ../shared reference copy")
    prompts = json.loads((folder / "dataset2prompt.json").read_text(encoding="utf-8"))
    maxlen = json.loads((folder / "dataset2maxlen.json").read_text(encoding="utf-8"))
    for name in lb.DATASET_TASK:
        assert lb.DATASET2PROMPT[name] == prompts[name], name
        assert lb.DATASET2MAXLEN[name] == maxlen[name], name
    assert len(lb.DATASET_TASK) == 12


def test_normalise_scale():
    assert lb.normalise(1, "Single-Doc QA") == 0 and lb.normalise(2, "Multi-Doc QA") == 50
    assert lb.normalise(3, "Single-Doc QA") == 100 and lb.normalise(4, "Summarization") == 75
    with pytest.raises(ValueError):
        lb.normalise(4, "Single-Doc QA")


def _write(tmp_path, name, rows):
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_load_and_judge_requests(tmp_path):
    _write(tmp_path, "hotpotqa", [{"input": "Who?", "context": "CTX", "answers": ["Ann", "Anne"]}])
    _write(tmp_path, "gov_report", [{"input": "", "context": "REPORT", "answers": ["SUMMARY"]}])
    qa, summ = lb.load_dataset(tmp_path, "hotpotqa"), lb.load_dataset(tmp_path, "gov_report")
    assert qa[0]["prompt"].endswith("Question: Who?\nAnswer:") and "CTX" in qa[0]["prompt"]
    assert qa[0]["max_new_tokens"] == 32 and summ[0]["max_new_tokens"] == 512
    reqs = lb.judge_requests(qa + summ, {"hotpotqa-0": "Ann!", "gov_report-0": "my summary"})
    assert [r.item_id for r in reqs] == ["hotpotqa-0-gt0", "hotpotqa-0-gt1", "gov_report-0-gt0"]
    assert reqs[0].high == 3 and reqs[2].high == 5
    assert "Question:\nWho?\nReference answer:\nAnn\nAssistant's answer:\nAnn!\nRating:" in reqs[0].prompt
    assert "Reference summary:\nSUMMARY\nAssistant's summary:\nmy summary\nRating:" in reqs[2].prompt
    _write(tmp_path, "qasper", [{"input": "q", "context": "c", "answers": []}])
    with pytest.raises(DataError, match="qasper.jsonl:1"):
        lb.load_dataset(tmp_path, "qasper")


def test_summary_best_ground_truth_then_dataset_then_task_means():
    rows = []
    # hotpotqa item 0: ratings 1 and 3 over two ground truths -> best 3 -> 100; item 1: 2 -> 50
    for item, gt, score in [("h-0", 0, 1), ("h-0", 1, 3), ("h-1", 0, 2)]:
        rows.append({"judge": "j", "model_tag": "m", "task": "Multi-Doc QA", "dataset": "hotpotqa", "item": item,
                     "gt": gt, "run": 0, "score": score})
    # musique: one item rated 1 -> 0; one off-scale rating 7 -> NaN, counted
    rows += [{"judge": "j", "model_tag": "m", "task": "Multi-Doc QA", "dataset": "musique", "item": "u-0",
              "gt": 0, "run": 0, "score": 1},
             {"judge": "j", "model_tag": "m", "task": "Multi-Doc QA", "dataset": "musique", "item": "u-1",
              "gt": 0, "run": 0, "score": 7}]
    # gov_report: ratings 5 and 3 in two runs -> 100, 50 -> 75
    rows += [{"judge": "j", "model_tag": "m", "task": "Summarization", "dataset": "gov_report", "item": "g-0",
              "gt": 0, "run": r, "score": s} for r, s in [(0, 5), (1, 3)]]
    out = lb.summarise(pd.DataFrame(rows)).set_index("benchmark")
    assert out.loc["Multi-Doc QA", "score"] == pytest.approx((75 + 0) / 2)
    assert out.loc["Multi-Doc QA", "n_nan"] == 1 and out.loc["Multi-Doc QA", "n_datasets"] == 2
    assert out.loc["Summarization", "score"] == pytest.approx(75)
    assert not math.isnan(out.loc["Summarization", "score"])
