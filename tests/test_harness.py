"""lm-evaluation-harness wiring: command construction and results-JSON parsing (lm_eval itself is not run)."""

from __future__ import annotations

import json

import pytest

from longalign import paths
from longalign.eval import harness
from longalign.records import DataError, load_records


def test_commands_use_open_llm_leaderboard_shots():
    cmds = harness.lm_eval_commands("/models/LongAlign-6B-64k", "la6b", device="cuda:0")
    by_task = {c[c.index("--tasks") + 1]: c for c in cmds}
    assert set(by_task) == {"arc_challenge", "hellaswag", "truthfulqa_mc2", "mmlu"}
    shots = {t: int(c[c.index("--num_fewshot") + 1]) for t, c in by_task.items()}
    assert shots == {"arc_challenge": 25, "hellaswag": 10, "truthfulqa_mc2": 0, "mmlu": 5}
    cmd = by_task["mmlu"]
    assert cmd[:3] == ["lm_eval", "--model", "hf"]
    assert cmd[cmd.index("--model_args") + 1] == "pretrained=/models/LongAlign-6B-64k,dtype=bfloat16,trust_remote_code=True"
    assert cmd[cmd.index("--output_path") + 1].endswith("harness-raw/la6b/mmlu")
    assert harness.shell_line(["lm_eval", "--model_args", "a b"]) == "lm_eval --model_args 'a b'"
    with pytest.raises(ValueError):
        harness.lm_eval_command("a,b", "mmlu", "out")


def _results(path, results, groups=None):
    data = {"results": results, "n-shot": {"arc_challenge": 25, "mmlu": 5}, "config": {"model_args": "pretrained=x"}}
    if groups:
        data["groups"] = groups
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def test_parse_results_into_records(tmp_path):
    raw = paths.results_dir("harness-raw") / "m"
    _results(raw / "arc" / "results_2024-01-01.json",
             {"arc_challenge": {"alias": "arc_challenge", "acc,none": 0.48, "acc_stderr,none": 0.01,
                                "acc_norm,none": 0.503, "acc_norm_stderr,none": 0.0146}})
    _results(raw / "mmlu" / "results_2024-01-02.json",
             {"mmlu_abstract_algebra": {"acc,none": 0.3}}, groups={"mmlu": {"acc,none": 0.455, "acc_stderr,none": 0.004}})
    _results(raw / "tqa" / "results_2024-01-03.json", {"truthfulqa_mc2": {"acc": 0.516, "acc_stderr": 0.015}})
    recs = {r["task"]: r for r in harness.collect("m")}
    assert recs["arc_challenge"]["score"] == pytest.approx(50.3) and recs["arc_challenge"]["metric"] == "acc_norm"
    assert recs["arc_challenge"]["stderr"] == pytest.approx(1.46) and recs["arc_challenge"]["num_fewshot"] == 25
    assert recs["mmlu"]["score"] == pytest.approx(45.5) and recs["truthfulqa_mc2"]["score"] == pytest.approx(51.6)
    df = load_records(paths.results_dir("harness"))
    assert set(df["benchmark"]) == {"ARC", "MMLU", "TruthfulQA"}


def test_parse_results_errors(tmp_path):
    bad = _results(tmp_path / "r.json", {"hellaswag": {"acc,none": 0.7}})
    with pytest.raises(DataError, match="acc_norm"):
        harness.parse_results(bad, "m")
    none = _results(tmp_path / "n.json", {"winogrande": {"acc,none": 0.7}})
    with pytest.raises(DataError, match="no Open LLM"):
        harness.parse_results(none, "m")
