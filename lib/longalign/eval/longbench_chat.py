"""LongBench-Chat (paper §3.4, appendix C.1): 50 long-context user queries rated 1-10 by a judge.

The official test cases and few-shot examples (``THUDM/LongAlign``, ``LongBench_Chat/``) are
downloaded once into ``paths.cache()`` on a user's machine, or read from a local path. The judge
prompts are shipped here verbatim: the few-shot prompt (``prompt_fs.txt``, three human-rated
answers shuffled in every run) and the zero-shot baseline of appendix C.1. The cpu profile uses the
held-out long-QA set of notebook 01 as an offline stand-in. Model answers are generated once per
item (resumable records under ``outputs/results/answers/<benchmark>/<model_tag>/``), then judged
with :func:`longalign.eval.judge.judge_sweep`.
"""

from __future__ import annotations

import json
import random
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from tqdm.auto import tqdm

from longalign import paths
from longalign.config import check_limit, check_path
from longalign.eval.checkpoints import final_checkpoints, load_for_eval, model_tag  # noqa: F401 (notebook 07)
from longalign.eval.judge import JUDGE_SYSTEM, JudgeRequest, item_scores
from longalign.records import DataError, output_lock, read_jsonl, read_record, record_exists, record_name, write_record

OFFICIAL_BASE_URL = "https://raw.githubusercontent.com/THUDM/LongAlign/main/LongBench_Chat/"
TEST_CASES_FILE = "test_cases.json"
FEW_SHOTS_FILE = "few_shots.json"
N_OFFICIAL = 50

# LongBench_Chat/prompt_fs.txt (= paper appendix C.1): question, reference, 3 x (answer, rating), answer.
# The judging instructions shared by both prompts (paper appendix C.1).
_INSTRUCTIONS = """[Instructions]
You are asked to evaluate the quality of the AI assistant's answers to user questions as an impartial judge, and your evaluation should take into account factors including correctness (high priority), helpfulness, accuracy, and relevance. The scoring principles are as follows:
1. Read the AI assistant's answer and compare the assistant's answer with the reference answer.
2. Identify all errors in the AI Assistant's answers and consider how much they affect the answer to the question.
3. Evaluate how helpful the AI assistant's answers are in directly answering the user's questions and providing the information the user needs. 
4. Examine any additional information in the AI assistant's answer to ensure that it is correct and closely related to the question. If this information is incorrect or not relevant to the question, points should be deducted from the overall score.

Please give an overall integer rating from 1 to 10 based on the above principles, strictly in the following format:"[[rating]]", e.g. "[[5]]".

"""

FEWSHOT_TEMPLATE = _INSTRUCTIONS + """[Question]
{}

[Reference answer begins]
{}
[Reference answer ends]

Below are several assistants' answers and their ratings:

[Assistant's answer begins]
{}
[Assistant's answer ends]

Rating: [[{}]]

[Assistant's answer begins]
{}
[Assistant's answer ends]

Rating: [[{}]]

[Assistant's answer begins]
{}
[Assistant's answer ends]

Rating: [[{}]]

Please rate the following assistant answers based on the scoring principles and examples above:

[Assistant's answer begins]
{}
[Assistant's answer ends]

Rating: """

# Paper appendix C.1: the zero-shot prompt, baseline of the judge-agreement study (Table 1).
ZEROSHOT_TEMPLATE = _INSTRUCTIONS + """[Question]
{}

[Reference answer]
{}

[Assistant's answer]
{}

Rating: """


# -- data ----------------------------------------------------------------------------------------


def download_official(name: str, dest: str | Path | None = None, base_url: str = OFFICIAL_BASE_URL) -> Path:
    """An official LongBench_Chat file, downloaded once into ``paths.cache()/longbench_chat``."""
    dest = Path(dest) if dest is not None else paths.cache() / "longbench_chat" / name
    if dest.is_file():
        return dest
    url = base_url + name
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            data = resp.read()
    except OSError as err:
        raise FileNotFoundError(f"could not download {url} ({err}); download it by hand and pass its local path") from err
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(dest)
    return dest


def _read_rows(path: Path) -> list[Any]:
    """A JSON list, or a JSONL file of objects."""
    if path.suffix == ".jsonl" or path.name.endswith(".jsonl.gz"):
        return list(read_jsonl(path))
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from err
    if not isinstance(rows, list):
        raise DataError(f"{path}:1: expected a JSON list")
    return rows


def load_test_cases(path: str | Path | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """The first ``limit`` (None: all) official test cases as ``{id, question, prompt, answer}`` (``path``; None: the download)."""
    limit = check_limit(limit)
    path = check_path(path, "test_cases_path") or download_official(TEST_CASES_FILE)
    items = []
    for n, row in enumerate(_read_rows(path), start=1):
        missing = {"query", "answer", "prompt"} - set(row)
        if missing:
            raise DataError(f"{path}:{n}: test case lacks {sorted(missing)}")
        idx = int(row.get("idx", n))
        items.append({"id": str(idx), "idx": idx, "question": row["query"], "prompt": row["prompt"],
                      "answer": row["answer"]})
    return items[:limit]


def load_heldout(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Notebook 01's held-out long-QA rows as ``{id, question, prompt, answer}`` (the cpu stand-in; ``limit`` None: all)."""
    limit, items = check_limit(limit), []
    for n, row in enumerate(read_jsonl(path), start=1):
        if not {"id", "question", "answer"} <= set(row):
            raise DataError(f"{path}:{n}: held-out row needs id, question, answer")
        items.append({"id": str(row["id"]), "question": row["question"], "prompt": _heldout_prompt(row, path, n),
                      "answer": row["answer"]})
        if limit is not None and len(items) >= limit:
            break
    return items


def _heldout_prompt(row: dict[str, Any], path: str | Path, n: int) -> str | list[dict[str, str]]:
    """The user side of the conversation (the final assistant turn is the reference, not the input)."""
    messages = row.get("messages")
    if messages:
        turns = messages[:-1] if messages[-1]["role"] == "assistant" else messages
        if not turns:
            raise DataError(f"{path}:{n}: messages hold no user turn")
        return turns
    if "context" not in row:
        raise DataError(f"{path}:{n}: held-out row needs messages or context")
    return f"{row['context']}\n\n{row['question']}"


def load_few_shots(path: str | Path | None = None) -> list[list[dict[str, Any]]]:
    """The per-question human-rated examples (``few_shots.json``: 50 lists of 3 ``{answer, score}``; None: the download)."""
    path = check_path(path, "few_shots_path") or download_official(FEW_SHOTS_FILE)
    shots = _read_rows(path)
    for n, group in enumerate(shots, start=1):
        if len(group) != 3 or not all({"answer", "score"} <= set(s) for s in group):
            raise DataError(f"{path}: entry {n} must hold 3 {{answer, score}} examples")
    return shots


# -- judge prompts ---------------------------------------------------------------------------------


def fewshot_prompt(question: str, reference: str, answer: str, shots: list[dict[str, Any]],
                   rng: random.Random) -> str:
    """The few-shot judge prompt with the 3 scored examples in an ``rng``-shuffled order."""
    if len(shots) != 3:
        raise ValueError(f"the LongBench-Chat judge prompt takes exactly 3 scored examples, got {len(shots)}")
    order = list(shots)
    rng.shuffle(order)
    filled = [x for shot in order for x in (shot["answer"], shot["score"])]
    return FEWSHOT_TEMPLATE.format(question, reference, *filled, answer)


def zeroshot_prompt(question: str, reference: str, answer: str) -> str:
    """The zero-shot judge prompt (appendix C.1 baseline)."""
    return ZEROSHOT_TEMPLATE.format(question, reference, answer)


def judge_requests(items: list[dict[str, Any]], answers: dict[str, str], *, run: int, seed: int = 0,
                   few_shots: list[list[dict[str, Any]]] | None = None, mode: str = "fewshot") -> list[JudgeRequest]:
    """Judge requests for one scoring run (few-shot order reshuffled per run and item, reproducibly)."""
    if mode not in ("fewshot", "zeroshot"):
        raise ValueError(f"mode must be 'fewshot' or 'zeroshot', got {mode!r}")
    if mode == "fewshot" and few_shots is None:
        raise ValueError("few-shot judging needs the few-shot examples (load_few_shots)")
    out = []
    for item in items:
        answer = answers[item["id"]]
        if mode == "fewshot":
            rng = random.Random(f"{seed}|{run}|{item['id']}")
            prompt = fewshot_prompt(item["question"], item["answer"], answer, few_shots[item["idx"] - 1], rng)
        else:
            prompt = zeroshot_prompt(item["question"], item["answer"], answer)
        out.append(JudgeRequest(item["id"], prompt, answer, item["answer"], 1.0, 10.0, JUDGE_SYSTEM,
                                {"prompt_kind": mode}))
    return out


# -- model answers ---------------------------------------------------------------------------------


def answers_dir(benchmark: str, model_tag: str) -> Path:
    """``outputs/results/answers/<benchmark>/<model_tag>``: one record per generated answer."""
    return paths.results_dir("answers") / benchmark / model_tag


def answer_path(benchmark: str, model_tag: str, item_id: Any) -> Path:
    """The answer record of one item: ``answers_dir(...)/<record_name(item_id)>.json`` (distinct ids, distinct files)."""
    return answers_dir(benchmark, model_tag) / f"{record_name(item_id)}.json"


def generate_answers(model, tokenizer, items: list[dict[str, Any]], *, benchmark: str, model_tag: str,
                     max_new_tokens: int, max_input_tokens: int | None = None, batch_size: int = 1,
                     chunk: int = 8) -> dict[str, str]:
    """Generate (or reload) each item's answer; records are written per chunk, so a crash loses one chunk."""
    from longalign.eval.generate import generate

    # A second run for the same model waits, then finds the answers the first one wrote.
    with output_lock(answers_dir(benchmark, model_tag)):
        todo = [it for it in items if not record_exists(answer_path(benchmark, model_tag, it["id"]))]
        for start in tqdm(range(0, len(todo), chunk), desc=f"answers {model_tag}", disable=len(todo) <= chunk):
            part = todo[start:start + chunk]
            texts = generate(model, tokenizer, [it["prompt"] for it in part], max_new_tokens=max_new_tokens,
                             max_input_tokens=max_input_tokens, batch_size=batch_size, progress=False)
            for it, text in zip(part, texts):
                write_record(answer_path(benchmark, model_tag, it["id"]),
                             {"item_id": it["id"], "benchmark": benchmark, "model_tag": model_tag,
                              "answer": text.strip()})
    return load_answers(benchmark, model_tag, items)


def load_answers(benchmark: str, model_tag: str, items: list[dict[str, Any]]) -> dict[str, str]:
    """Previously generated answers of ``items`` (a missing one raises, naming its record)."""
    missing = [it["id"] for it in items if not record_exists(answer_path(benchmark, model_tag, it["id"]))]
    if missing:
        raise FileNotFoundError(f"{answers_dir(benchmark, model_tag)}: no answer record for {len(missing)} item(s), "
                                f"e.g. {missing[0]}; generate them first")
    return {it["id"]: read_record(answer_path(benchmark, model_tag, it["id"]))["answer"] for it in items}


# -- agreement with human ratings --------------------------------------------------------------------


def agreement(judge: Any, human: Any) -> dict[str, float]:
    """Spearman ρ and Kendall τ (scipy, τ-b) between paired judge and human scores; NaN pairs dropped.

    Fewer than 3 complete pairs give NaN correlations (with ``n`` saying why) rather than an error,
    so that a sweep with many unparseable ratings still reports.
    """
    a, b = np.asarray(judge, dtype=float), np.asarray(human, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"judge and human scores differ in length: {a.shape} vs {b.shape}")
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    if len(a) < 3:
        nan = float("nan")
        return {"spearman": nan, "spearman_p": nan, "kendall": nan, "kendall_p": nan, "n": int(len(a)),
                "dropped": int((~keep).sum())}
    rho, rho_p = stats.spearmanr(a, b)
    tau, tau_p = stats.kendalltau(a, b)
    return {"spearman": float(rho), "spearman_p": float(rho_p), "kendall": float(tau), "kendall_p": float(tau_p),
            "n": int(len(a)), "dropped": int((~keep).sum())}


def load_human_scores(path: str | Path) -> pd.DataFrame:
    """Human ratings as a DataFrame ``model_tag, item_id, human`` from a CSV or JSONL file."""
    path = Path(path)
    df = pd.DataFrame(list(read_jsonl(path))) if path.suffix in (".jsonl", ".gz") else pd.read_csv(path)
    if "score" in df.columns and "human" not in df.columns:
        df = df.rename(columns={"score": "human"})
    missing = {"model_tag", "item_id", "human"} - set(df.columns)
    if missing:
        raise DataError(f"{path}:1: human-score file lacks columns {sorted(missing)}")
    df["item_id"] = df["item_id"].astype(str)
    df["human"] = pd.to_numeric(df["human"], errors="coerce")
    return df.groupby(["model_tag", "item_id"], as_index=False)["human"].mean()


def judge_human_agreement(records: pd.DataFrame, human: pd.DataFrame) -> pd.DataFrame:
    """Per (benchmark, judge) and prompt kind: ρ and τ between run-averaged judge scores and human scores."""
    items = item_scores(records)
    kinds = records.groupby(["judge", "model_tag", "item_id"])["prompt_kind"].first().reset_index() \
        if "prompt_kind" in records else None
    if kinds is not None:
        items = items.merge(kinds, on=["judge", "model_tag", "item_id"], how="left")
    merged = items.merge(human, on=["model_tag", "item_id"], how="inner")
    rows = []
    for key, grp in merged.groupby(["benchmark", "judge"] + (["prompt_kind"] if kinds is not None else [])):
        rows.append({**dict(zip(["benchmark", "judge", "prompt_kind"], key)), **agreement(grp["score"], grp["human"])})
    return pd.DataFrame(rows)
