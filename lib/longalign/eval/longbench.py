"""LongBench Single-Doc QA, Multi-Doc QA and Summarization rated by a judge (paper §4.1, appendix C.2).

Aligned models answer at length, so instead of F1/ROUGE the paper has GPT-4 rate each answer against
the ground truth: 1-3 for the QA tasks, 1-5 for summaries, normalised to 0-100 as
``100 * (rating - 1) / (top - 1)``. With several ground truths an item takes its best rating (as the
THUDM scorer does). The official model prompts and answer lengths of the 12 datasets are shipped
below (from LongBench's ``dataset2prompt.json`` / ``dataset2maxlen.json``); the data itself
(``THUDM/LongBench`` ``data/<name>.jsonl``) is read from a user's copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from longalign.config import check_limit
from longalign.eval.judge import JUDGE_SYSTEM, JudgeRequest
from longalign.records import DataError, read_jsonl

TASKS: dict[str, list[str]] = {
    "Single-Doc QA": ["narrativeqa", "qasper", "multifieldqa_en", "multifieldqa_zh"],
    "Multi-Doc QA": ["hotpotqa", "2wikimqa", "musique", "dureader"],
    "Summarization": ["gov_report", "qmsum", "multi_news", "vcsum"],
}
DATASET_TASK = {name: task for task, names in TASKS.items() for name in names}
SCALE_TOP = {"Single-Doc QA": 3, "Multi-Doc QA": 3, "Summarization": 5}

# LongBench dataset2maxlen.json (answer token budgets) for the 12 datasets.
DATASET2MAXLEN = {"narrativeqa": 128, "qasper": 128, "multifieldqa_en": 64, "multifieldqa_zh": 64,
                  "hotpotqa": 32, "2wikimqa": 32, "musique": 32, "dureader": 128,
                  "gov_report": 512, "qmsum": 512, "multi_news": 512, "vcsum": 512}

_MDQA = ("Answer the question based on the given passages. Only give me the answer and do not output any other words."
         "\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. "
         "Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:")
# LongBench dataset2prompt.json, verbatim (including its "asconcisely" typo).
DATASET2PROMPT = {
    "narrativeqa": "You are given a story, which can be either a novel or a movie script, and a question. Answer the question asconcisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nStory: {context}\n\nNow, answer the question based on the story asconcisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:",
    "qasper": "You are given a scientific article and a question. Answer the question as concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered based on the information in the article, write \"unanswerable\". If the question is a yes/no question, answer \"yes\", \"no\", or \"unanswerable\". Do not provide any explanation.\n\nArticle: {context}\n\n Answer the question based on the above article as concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered based on the information in the article, write \"unanswerable\". If the question is a yes/no question, answer \"yes\", \"no\", or \"unanswerable\". Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:",
    "multifieldqa_en": "Read the following text and answer briefly.\n\n{context}\n\nNow, answer the following question based on the above text, only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "multifieldqa_zh": "阅读以下文字并用中文简短回答：\n\n{context}\n\n现在请基于上面的文章回答下面的问题，只告诉我答案，不要输出任何其他字词。\n\n问题：{input}\n回答：",
    "hotpotqa": _MDQA,
    "2wikimqa": _MDQA,
    "musique": _MDQA,
    "dureader": "请基于给定的文章回答下述问题。\n\n文章：{context}\n\n请基于上述文章回答下面的问题。\n\n问题：{input}\n回答：",
    "gov_report": "You are given a report by a government agency. Write a one-page summary of the report.\n\nReport:\n{context}\n\nNow, write a one-page summary of the report.\n\nSummary:",
    "qmsum": "You are given a meeting transcript and a query containing a question or instruction. Answer the query in one or more sentences.\n\nTranscript:\n{context}\n\nNow, answer the query based on the above meeting transcript in one or more sentences.\n\nQuery: {input}\nAnswer:",
    "multi_news": "You are given several news passages. Write a one-page summary of all news. \n\nNews:\n{context}\n\nNow, write a one-page summary of all the news.\n\nSummary:",
    "vcsum": "下面有一段会议记录，请你阅读后，写一段总结，总结会议的内容。\n会议记录：\n{context}\n\n会议总结：",
}

# Paper appendix C.2: the GPT-4 judge prompts.
QA_JUDGE_PROMPT = """You are asked to evaluate the quality of the AI assistant's answers to user question as an impartial judge, and your evaluation should take into account factors including correctness (high priority), and comprehensiveness (whether the assistant's answer covers all points). Read the AI assistant's answer and compare against the reference answer, and give an overall integer rating in 1, 2, 3 (1 = wrong or irrelevant, 2 = partially correct, 3 = correct and comprehensive) based on the above principles, strictly in the following format:"[[rating]]", e.g. "[[2]]".

Question:
{question}
Reference answer:
{reference}
Assistant's answer:
{answer}
Rating:"""

SUMM_JUDGE_PROMPT = """You are asked to evaluate the quality of the AI assistant's generated summary as an impartial judge, and your evaluation should take into account factors including correctness (high priority), comprehensiveness (whether the assistant's summary covers all points), and coherence. Read the AI assistant's summary and compare against the reference summary, and give an overall integer rating in on a scale of 1 to 5, where 1 is the lowest and 5 is the highest based on the evaluation criteria, strictly in the following format:"[[rating]]", e.g. "[[3]]".

Reference summary:
{reference}
Assistant's summary:
{answer}
Rating:"""


def normalise(rating: float, task: str) -> float:
    """A 1-3 (QA) or 1-5 (summary) rating mapped to 0-100: ``100 (r - 1) / (top - 1)``."""
    top = SCALE_TOP[task]
    if not 1 <= rating <= top:
        raise ValueError(f"{task} rating {rating} outside 1..{top}")
    return 100.0 * (rating - 1) / (top - 1)


def dataset_file(root: str | Path, name: str) -> Path:
    """``<root>/data/<name>.jsonl`` or ``<root>/<name>.jsonl`` of a LongBench copy."""
    root = Path(root).expanduser()
    for path in (root / "data" / f"{name}.jsonl", root / f"{name}.jsonl"):
        if path.is_file():
            return path
    raise FileNotFoundError(f"LongBench dataset {name!r} not found under {root} (expected data/{name}.jsonl)")


def load_dataset(root: str | Path, name: str, limit: int | None = None) -> list[dict[str, Any]]:
    """One LongBench dataset as items ``{id, dataset, task, prompt, question, answers, max_new_tokens}``."""
    if name not in DATASET_TASK:
        raise ValueError(f"{name!r} is not one of the judged LongBench datasets: {sorted(DATASET_TASK)}")
    limit, path = check_limit(limit, "longbench_items"), dataset_file(root, name)
    items = []
    for n, row in enumerate(read_jsonl(path), start=1):
        if not {"context", "input", "answers"} <= set(row) or not row["answers"]:
            raise DataError(f"{path}:{n}: LongBench row needs context, input and non-empty answers")
        items.append({"id": f"{name}-{n - 1}", "dataset": name, "task": DATASET_TASK[name],
                      "prompt": DATASET2PROMPT[name].format(context=row["context"], input=row["input"]),
                      "question": row["input"], "answers": [str(a) for a in row["answers"]],
                      "max_new_tokens": DATASET2MAXLEN[name]})
        if limit is not None and len(items) >= limit:
            break
    return items


def judge_requests(items: list[dict[str, Any]], answers: dict[str, str]) -> list[JudgeRequest]:
    """One request per (item, ground truth) with the appendix C.2 prompt of the item's task."""
    out = []
    for item in items:
        answer, top = answers[item["id"]], SCALE_TOP[item["task"]]
        for j, ref in enumerate(item["answers"]):
            if item["task"] == "Summarization":
                prompt = SUMM_JUDGE_PROMPT.format(reference=ref, answer=answer)
            else:
                prompt = QA_JUDGE_PROMPT.format(question=item["question"], reference=ref, answer=answer)
            out.append(JudgeRequest(f"{item['id']}-gt{j}", prompt, answer, ref, 1.0, float(top), JUDGE_SYSTEM,
                                    {"dataset": item["dataset"], "task": item["task"], "item": item["id"], "gt": j}))
    return out


def summarise(records: pd.DataFrame) -> pd.DataFrame:
    """Per (judge, model, task): 0-100 score = mean over datasets of the mean over items and runs of the best-gt rating."""
    df = records.copy()
    df["score"] = pd.to_numeric(df["score"], errors="coerce")
    # A rating off the task's scale (e.g. [[4]] on 1-3) is as unusable as no rating: NaN, counted.
    df["norm"] = [normalise(s, t) if pd.notna(s) and 1 <= s <= SCALE_TOP[t] else float("nan")
                  for s, t in zip(df["score"], df["task"])]
    best = df.groupby(["judge", "model_tag", "task", "dataset", "item", "run"])["norm"].max().reset_index()
    per_dataset = best.groupby(["judge", "model_tag", "task", "dataset"]).agg(
        score=("norm", "mean"), n_items=("item", "nunique"), n_nan=("norm", lambda s: int(s.isna().sum())))
    out = per_dataset.groupby(level=[0, 1, 2]).agg(score=("score", "mean"), n_datasets=("score", "size"),
                                                   n_items=("n_items", "sum"), n_nan=("n_nan", "sum"))
    return out.reset_index().rename(columns={"task": "benchmark"})
