"""Learning curves on a long and a short task over a run's checkpoints (paper Fig. 6), EMA-smoothed.

The long task is notebook 01's held-out long QA, the short task the first turns of the MT-Bench
questions that have a GPT-4 reference answer (the paper) or notebook 01's held-out short rows (the
cpu profile, whose short data does not teach MT-Bench answers). Each (run, checkpoint, task) is one record under
``outputs/results/curves/{run}/``: the mean judge score and every answer, plus the teacher-forced
cross-entropy of the reference answers (``nll``), a smooth proxy that moves even while a small
model's answers are still unusable. The cpu profile scores offline with
:func:`longalign.eval.judge.overlap_score`; an LLM judge (the paper's GPT-4) gets the LongBench-Chat
prompt for long answers and FastChat's MT-Bench single-answer grading for short ones. The figure
shows each value relative to the last checkpoint's, raw dotted and EMA-smoothed solid, as the paper.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from longalign import paths
from longalign.config import check_limit
from longalign.eval import checkpoints
from longalign.eval.judge import Judge, JudgeRequest, judge_sweep, record_path
from longalign.records import output_lock, read_record, record_exists, write_record


def ema(values: Sequence[float], weight: float = 0.6) -> list[float]:
    """Exponential moving average ``s_t = weight·s_{t-1} + (1-weight)·x_t`` with ``s_0 = x_0`` (TensorBoard-style)."""
    if not 0 <= weight < 1:
        raise ValueError(f"EMA weight must be in [0, 1), got {weight}")
    out: list[float] = []
    for x in values:
        out.append(float(x) if not out else weight * out[-1] + (1 - weight) * float(x))
    return out


def relative_to_final(values: Sequence[float], lower_is_better: bool = False) -> list[float]:
    """``v / final`` (scores) or ``final / v`` (losses), so the last point is 1 and worse is below 1."""
    if not len(values):
        return []
    final = float(values[-1])
    if final == 0 or math.isnan(final):
        raise ValueError(f"final value is {final}: a relative curve needs a non-zero final value")
    return [final / float(v) if lower_is_better else float(v) / final for v in values]


def long_items(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Held-out long-QA items ``{id, question, prompt, answer}`` (notebook 01's ``heldout-longqa.jsonl``)."""
    from longalign.eval.longbench_chat import load_heldout

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run notebooks/01_data_construction.ipynb first")
    return [{"id": it["id"], "question": it["question"], "prompt": it["prompt"], "answer": it["answer"]}
            for it in load_heldout(path, check_limit(limit, "long_limit"))]


def short_items(limit: int | None = None, path: str | Path | None = None) -> list[dict[str, Any]]:
    """Short-task items ``{id, prompt, answer, category}``: MT-Bench first turns with a GPT-4 reference, or the chat rows at ``path``.

    ``path`` is notebook 01's ``heldout-short.jsonl`` (short rows held out from training): the cpu
    profile's short task, since its docstring Q/A teaches nothing MT-Bench measures. Ids are row
    numbers (an LLM judge grades them as MT-Bench general questions, without the reference).
    """
    from longalign.eval import mtbench

    if path is not None:
        return _heldout_short(Path(path), check_limit(limit, "short_limit"))
    refs = mtbench.load_reference_answers()
    items = [{"id": str(q["question_id"]), "prompt": q["turns"][0], "answer": refs[int(q["question_id"])][0],
              "category": q["category"]}
             for q in mtbench.load_questions() if int(q["question_id"]) in refs]
    return items[:check_limit(limit, "short_limit")]


def _heldout_short(path: Path, limit: int | None) -> list[dict[str, Any]]:
    """The first turn of each held-out short chat row as a curve item (malformed rows name ``file:line``)."""
    from longalign.data.sharegpt import load_sharegpt

    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run notebooks/01_data_construction.ipynb first (heldout_short > 0)")
    rows = load_sharegpt(path, source="heldout-short")[:limit]
    if not rows:
        raise ValueError(f"{path} holds no usable short rows: set heldout_short > 0 in notebook 01")
    return [{"id": str(k), "prompt": r["messages"][0]["content"], "answer": r["messages"][1]["content"],
             "category": "heldout-short"} for k, r in enumerate(rows)]


def items_key(items: list[dict[str, Any]]) -> str:
    """Fingerprint of a task's items (ids, prompts, reference answers): a record of other items is stale."""
    blob = json.dumps([[it["id"], it["prompt"], it["answer"]] for it in items], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def curve_path(run: str, step: int, task: str, scorer: str = "overlap") -> Path:
    """``outputs/results/curves/{run}/step{step:06d}_{task}.json`` (LLM judges: under ``{run}/{scorer}/``)."""
    # Overlap and judge scores of the same checkpoint are different measurements: never read one as the other.
    folder = paths.results_dir("curves") / run
    return (folder if scorer == "overlap" else folder / scorer) / f"step{step:06d}_{task}.json"


def scorer_name(judge: Judge | None) -> str:
    """The ``scorer`` field of the curve records: ``overlap`` or the judge's name."""
    return "overlap" if judge is None else judge.name


def answer_nll(model, tokenizer, prompt, answer: str, max_input_tokens: int | None = None,
               max_answer_tokens: int = 256) -> float:
    """Mean cross-entropy (nats/token) of the reference ``answer`` (its first ``max_answer_tokens``, at most half the
    model's window, + EOS) after the chat-templated ``prompt`` (cut to fit)."""
    import torch
    import torch.nn.functional as F

    from longalign.eval.generate import context_window, encode_prompt

    window = context_window(model) or 10**9
    # at most half the window for the answer: a long reference must leave the prompt room
    target = tokenizer(answer, add_special_tokens=False)["input_ids"][:min(max_answer_tokens, window // 2 - 1)]
    target += [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    budget = window - len(target)
    prompt_ids = encode_prompt(tokenizer, prompt, budget if max_input_tokens is None else min(budget, max_input_tokens))
    ids = torch.tensor([prompt_ids + target])
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits[0, len(prompt_ids) - 1:-1]
    return float(F.cross_entropy(logits.float(), torch.tensor(target)))


def answer_rows(model, tokenizer, items: list[dict[str, Any]], *, max_new_tokens: int,
                max_input_tokens: int | None = None, batch_size: int = 1) -> list[dict[str, Any]]:
    """Greedy answers to ``items`` with the reference answers' NLL: ``[{id, answer, nll}]``."""
    from longalign.eval.generate import generate

    answers = generate(model, tokenizer, [it["prompt"] for it in items], max_new_tokens=max_new_tokens,
                       max_input_tokens=max_input_tokens, batch_size=batch_size, progress=False)
    return [{"id": it["id"], "answer": a.strip(),
             "nll": answer_nll(model, tokenizer, it["prompt"], it["answer"], max_input_tokens)}
            for it, a in zip(items, answers)]


def score_items(model, tokenizer, items: list[dict[str, Any]], *, max_new_tokens: int,
                max_input_tokens: int | None = None, batch_size: int = 1) -> tuple[float, list[dict[str, Any]]]:
    """Greedy answers to ``items`` scored by the offline overlap judge: (mean score, per-item rows)."""
    from longalign.eval.judge import overlap_score

    rows = answer_rows(model, tokenizer, items, max_new_tokens=max_new_tokens, max_input_tokens=max_input_tokens,
                       batch_size=batch_size)
    rows = [{"id": r["id"], "answer": r["answer"], "score": overlap_score(r["answer"], it["answer"]), "nll": r["nll"]}
            for it, r in zip(items, rows)]
    return sum(r["score"] for r in rows) / max(len(rows), 1), rows


def make_judge(kind: str, model: str | None = None, base_url: str | None = None, max_cost_usd: float | None = None,
               **judge_kwargs: Any) -> Judge | None:
    """The LLM judge of the curves (``openai``/``anthropic``/``local``), or None for the offline ``overlap`` score.

    None leaves a setting unset: the kind's default model, the provider's endpoint, no cost cap.
    """
    if kind == "overlap":
        return None
    # API keys come from the environment inside LLMClient; nothing secret passes through here.
    return Judge(kind, model, base_url=base_url, max_cost_usd=max_cost_usd, **judge_kwargs)


def judge_requests(task: str, items: list[dict[str, Any]], answers: dict[str, str]) -> list[JudgeRequest]:
    """LongBench-Chat judge requests (reference, 1-10) for ``long``, MT-Bench single-answer ones for ``short``."""
    from longalign.eval import longbench_chat, mtbench

    if task == "long":
        # Held-out items have no human-rated examples of their own, so the few-shot prompt cannot apply.
        return longbench_chat.judge_requests(items, answers, run=0, mode="zeroshot")
    if task == "short":
        prompts = mtbench.load_judge_prompts()
        return [mtbench.judge_request({"question_id": it["id"], "category": it["category"],
                                       "turns": [it["prompt"], ""]}, [answers[it["id"]]], 1, prompts, [it["answer"]])
                for it in items]
    raise ValueError(f"no LLM judge prompt for task {task!r}; expected 'long' or 'short'")


def judge_rows(judge: Judge, task: str, items: list[dict[str, Any]], rows: list[dict[str, Any]],
               model_tag: str) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Rate ``rows``' answers with ``judge`` (one resumable record each); rows get ``score`` (None = unparseable)."""
    requests = judge_requests(task, items, {r["id"]: r["answer"] for r in rows})
    counts = judge_sweep(judge, requests, benchmark=f"curves-{task}", model_tag=model_tag, runs=1)
    for row, req in zip(rows, requests):
        path = record_path(f"curves-{task}", judge.name, model_tag, req.item_id, 0)
        row["score"] = read_record(path)["score"] if record_exists(path) else None
    return rows, counts


def mean_score(rows: list[dict[str, Any]]) -> float:
    """Mean of the parsed scores (unparseable ones, None, left out); NaN when there is none."""
    scores = [r["score"] for r in rows if r["score"] is not None and not math.isnan(r["score"])]
    return sum(scores) / len(scores) if scores else math.nan


def checkpoint_record(run: str, step: int, task: str, model, tokenizer, items: list[dict[str, Any]], *,
                      judge: Judge | None, max_new_tokens: int, max_input_tokens: int | None,
                      batch_size: int) -> dict[str, Any] | None:
    """The curve record of one (checkpoint, task); None when some judge calls failed (a rerun retries them)."""
    start, kw = time.time(), dict(max_new_tokens=max_new_tokens, max_input_tokens=max_input_tokens,
                                  batch_size=batch_size)
    if judge is None:
        score, rows = score_items(model, tokenizer, items, **kw)
        extra = {"scorer": "overlap"}
    else:
        rows, counts = judge_rows(judge, task, items, answer_rows(model, tokenizer, items, **kw),
                                  f"{run}-step{step:06d}")
        if counts["failed"]:
            return None
        score, extra = mean_score(rows), {"scorer": scorer_name(judge), "n_nan": sum(r["score"] is None for r in rows)}
    return {"run": run, "step": step, "task": task, "score": None if math.isnan(score) else score,
            "n_items": len(rows), **extra, "nll": sum(r["nll"] for r in rows) / max(len(rows), 1),
            "items_key": items_key(items), "items": rows, "wall_s": time.time() - start}


def evaluate_run(run: str, tasks: dict[str, list[dict[str, Any]]], *, max_new_tokens: dict[str, int],
                 max_input_tokens: int | None = None, batch_size: int = 1, progress: bool = True,
                 judge: Judge | None = None) -> list[dict]:
    """One record per (checkpoint, task) of ``run``; finished ones of the same items are read back, not recomputed."""
    from tqdm.auto import tqdm

    records, incomplete, scorer = [], 0, scorer_name(judge)
    keys = {t: items_key(items) for t, items in tasks.items()}
    with output_lock(paths.results_dir("curves") / run):  # a second evaluation of this run waits, then reads back
        for ckpt in tqdm(checkpoints.run_checkpoints(run), desc=f"curves {run}", disable=not progress):
            done = {t: _current(curve_path(run, ckpt["step"], t, scorer), keys[t]) for t in tasks}
            todo = [t for t in tasks if done[t] is None]
            model, tokenizer = checkpoints.load_for_eval(ckpt["path"]) if todo else (None, None)
            for task in todo:
                record = checkpoint_record(run, ckpt["step"], task, model, tokenizer, tasks[task], judge=judge,
                                           max_new_tokens=max_new_tokens[task], max_input_tokens=max_input_tokens,
                                           batch_size=batch_size)
                incomplete += record is None
                if record is not None:
                    path = curve_path(run, ckpt["step"], task, scorer)
                    write_record(path, record)
                    done[task] = read_record(path)  # as stored, like the records read back
            records += [done[t] for t in tasks if done[t] is not None]
    if incomplete:
        print(f"[curves {run}] {incomplete} (checkpoint, task) cell(s) had failed judge calls: "
              f"no record written; rerun to retry")
    return records


def _current(path: Path, key: str) -> dict[str, Any] | None:
    """The record at ``path`` if it scored these items (another short_file or limit: None, recomputed, overwritten)."""
    record = read_record(path) if record_exists(path) else None
    return record if record is not None and record.get("items_key") == key else None


def curve_frame(df: pd.DataFrame, weight: float = 0.6, metric: str = "score") -> pd.DataFrame:
    """Records → one row per (run, task, step) with ``relative`` and ``relative_ema`` of ``metric`` (score or nll)."""
    if metric not in ("score", "nll"):
        raise ValueError(f"metric must be 'score' or 'nll', got {metric!r}")
    missing = {"run", "task", "step", metric} - set(df.columns)
    if missing:
        raise ValueError(f"curve records lack columns {sorted(missing)}")
    parts = []
    for _, g in df.sort_values("step").groupby(["run", "task"], sort=False):
        g = g[["run", "task", "step", *dict.fromkeys(["score", metric])]].copy()
        g["relative"] = relative_to_final(g[metric].tolist(), lower_is_better=metric == "nll")
        g["relative_ema"] = ema(g["relative"].tolist(), weight)
        parts.append(g)
    return pd.concat(parts, ignore_index=True)
