"""General benchmarks (paper Tables 2-3): ARC, HellaSwag, TruthfulQA and MMLU through lm-evaluation-harness.

The paper follows the (v1) Open LLM Leaderboard settings: ARC-Challenge 25-shot acc_norm, HellaSwag
10-shot acc_norm, TruthfulQA 0-shot mc2, MMLU 5-shot acc. ``lm_eval`` takes one ``--num_fewshot``
per call, so :func:`lm_eval_commands` builds one command per task; their data come from the HF hub,
so they run on a user's machine (``pip install lm-eval``), not in the offline cpu profile.
:func:`parse_results` turns the results JSON each call writes into one record per (model, task),
on the 0-100 scale of Tables 2-3.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from longalign import paths
from longalign.records import DataError, write_record

# task -> (few-shot count, leaderboard metric, column name in Tables 2-3)
OPEN_LLM_TASKS: dict[str, tuple[int, str, str]] = {
    "arc_challenge": (25, "acc_norm", "ARC"),
    "hellaswag": (10, "acc_norm", "HellaSwag"),
    "truthfulqa_mc2": (0, "acc", "TruthfulQA"),
    "mmlu": (5, "acc", "MMLU"),
}


def lm_eval_command(pretrained: str, task: str, output_path: str | Path, *, batch_size: str = "auto",
                    device: str = "cuda:0", dtype: str = "bfloat16", trust_remote_code: bool = True,
                    num_fewshot: int | None = None) -> list[str]:
    """The ``lm_eval`` argv for one task with its leaderboard few-shot count."""
    if task not in OPEN_LLM_TASKS and num_fewshot is None:
        raise ValueError(f"unknown task {task!r}: pass num_fewshot (known: {sorted(OPEN_LLM_TASKS)})")
    if "," in pretrained:
        raise ValueError(f"model path {pretrained!r} contains a comma, which lm_eval's --model_args cannot carry")
    shots = OPEN_LLM_TASKS[task][0] if num_fewshot is None else num_fewshot
    model_args = f"pretrained={pretrained},dtype={dtype}" + (",trust_remote_code=True" if trust_remote_code else "")
    return ["lm_eval", "--model", "hf", "--model_args", model_args, "--tasks", task,
            "--num_fewshot", str(shots), "--batch_size", str(batch_size), "--device", device,
            "--output_path", str(output_path)]


def lm_eval_commands(pretrained: str, model_tag: str, **kwargs: Any) -> list[list[str]]:
    """One ``lm_eval`` argv per Open LLM Leaderboard task, writing under ``outputs/results/harness-raw``."""
    out = paths.results_dir("harness-raw") / model_tag
    return [lm_eval_command(pretrained, task, out / task, **kwargs) for task in OPEN_LLM_TASKS]


def shell_line(argv: list[str]) -> str:
    """A copy-pasteable shell line for ``argv``."""
    return " ".join(shlex.quote(a) for a in argv)


def _metric(entry: dict[str, Any], metric: str) -> tuple[float, float | None] | None:
    """(value, stderr) of ``metric`` in one results entry (lm_eval ≥0.4 ``metric,filter`` keys or plain)."""
    for key in (f"{metric},none", metric):
        if key in entry and isinstance(entry[key], int | float):
            err = entry.get(f"{metric}_stderr,none", entry.get(f"{metric}_stderr"))
            return float(entry[key]), (float(err) if isinstance(err, int | float) else None)
    return None


def parse_results(path: str | Path, model_tag: str) -> list[dict[str, Any]]:
    """Leaderboard-metric records (0-100) for every known task found in an lm_eval results JSON."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: invalid lm_eval results JSON ({err.msg})") from err
    sections = {**data.get("groups", {}), **data.get("results", {})}
    shots = data.get("n-shot", {})
    records = []
    for task, (default_shots, metric, column) in OPEN_LLM_TASKS.items():
        if task not in sections:
            continue
        found = _metric(sections[task], metric)
        if found is None:
            raise DataError(f"{path}: task {task} has no {metric!r} metric (keys: {sorted(sections[task])})")
        value, stderr = found
        records.append({"benchmark": column, "task": task, "metric": metric, "model_tag": model_tag,
                        "score": 100.0 * value, "stderr": None if stderr is None else 100.0 * stderr,
                        "num_fewshot": shots.get(task, default_shots), "source": str(path)})
    if not records:
        raise DataError(f"{path}: no Open LLM Leaderboard task ({', '.join(OPEN_LLM_TASKS)}) in these results")
    return records


def collect(model_tag: str, raw_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Parse every results JSON lm_eval wrote for ``model_tag`` and write one record per task."""
    raw = Path(raw_dir) if raw_dir is not None else paths.results_dir("harness-raw") / model_tag
    newest: dict[str, dict[str, Any]] = {}
    for path in sorted(raw.rglob("results*.json"), key=lambda p: p.stat().st_mtime):
        for rec in parse_results(path, model_tag):
            newest[rec["task"]] = rec  # a rerun's newer file wins
    for task, rec in newest.items():
        write_record(paths.results_dir("harness") / model_tag / f"{task}.json", rec)
    return list(newest.values())
