"""Self-Instruct long instruction data (paper §3.2, appendix A): task-type prompts, question parsing, resumable pipeline.

For each long document: pick one of the four task types (general, summary, reasoning, information
extraction), ask the model for 5 questions in the ``1: ... 2: ...`` format (Chinese prompts for
Chinese documents), pick one and ask for its answer with the document. The record is
``{"messages": [user: doc + "\\n\\n" + question, assistant: answer], "meta": {...}}``. Every random
choice is seeded per document id, so results do not depend on order or concurrency, and the
output is append-only JSONL so that a killed or repeated run resumes without a paid call twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import time
from collections import Counter
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any

from longalign.llm import STOPS_JOB, LLMClient, LLMError
from longalign.records import DataError, append_jsonl, output_lock, write_record

TASK_TYPES = ("general", "summary", "reasoning", "extraction")
# Appendix A, verbatim (the paper's typo "diversed" kept); Chinese: faithful translations for Chinese documents.
PROMPTS: dict[str, dict[str, str]] = {
    "en": {
        "general": 'Given the above text, please propose 5 English questions that are diverse and cover all parts of the text, in the following format: "1: ", "2: ", ...',
        "summary": 'Given the above text, please propose 5 English questions that require summarization or integration from multiple parts, make sure they are diverse and cover all parts of the text, in the following format: "1: ", "2: ", ...',
        "reasoning": 'Given the above text, please propose 5 English questions that require multi-hop reasoning, make sure they are diverse and cover all parts of the text, in the following format: "1: ", "2: ", ...',
        "extraction": 'Given the above text, please propose 5 English information-seeking questions, make sure they are diversed and cover all parts of the text, in the following format: "1: ", "2: ", ...',
    },
    "zh": {
        "general": "根据以上文本，请提出5个中文问题，要求问题多样并覆盖文本的所有部分，格式如下：“1: ”，“2: ”，……",
        "summary": "根据以上文本，请提出5个需要总结或整合多个部分信息的中文问题，确保问题多样并覆盖文本的所有部分，格式如下：“1: ”，“2: ”，……",
        "reasoning": "根据以上文本，请提出5个需要多跳推理的中文问题，确保问题多样并覆盖文本的所有部分，格式如下：“1: ”，“2: ”，……",
        "extraction": "根据以上文本，请提出5个信息检索类的中文问题，确保问题多样并覆盖文本的所有部分，格式如下：“1: ”，“2: ”，……",
    },
}
_ITEM = re.compile(
    r"^\s*(?:[-*•·>]\s*)?(?:\*\*|__)?\s*(?:(?:Q|Question|问题|问)\s*)?(?:第\s*)?(\d{1,2})\s*(?:个问题|题)?\s*"
    r"(?:\*\*|__)?\s*(?:[:：.)）、]|-\s)\s*(?:\*\*|__)?\s*(.*)$", re.IGNORECASE)
_BULLET = re.compile(r"^\s*[-*•·]\s+(.*[?？][\"'”」』]?)\s*$")
_INLINE = re.compile(r"\s+(?=(?:Q\s*)?\d{1,2}\s*[:：]\s)")
_QUOTES = "\"'“”「」『』"


class SkipDocument(Exception):
    """A document that yields no record; ``reason`` is counted in the run summary."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def question_prompt(doc_text: str, task_type: str, lang: str) -> str:
    """The appendix-A prompt: the document, a blank line, then the task-type instruction (zh for Chinese)."""
    return doc_text + "\n\n" + PROMPTS["zh" if lang == "zh" else "en"][task_type]


def _clean_question(text: str) -> str:
    text = re.sub(r"\*\*|__", "", text).strip()
    if len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    return text


def parse_questions(text: str) -> list[str]:
    """Questions from a numbered list (``1:``, ``1.``, ``1)``, ``Q1:``, ``1：``, bullets, gaps, extra prose tolerated)."""
    items: list[str] = []
    current: list[str] | None = None
    for raw in text.splitlines():
        for line in (_INLINE.split(raw) if _ITEM.match(raw) else [raw]):
            m = _ITEM.match(line)
            if m:
                current = [m.group(2).strip()] if m.group(2).strip() else []  # "1." alone: text on the next line
                items.append(current)  # type: ignore[arg-type]
            elif not line.strip():
                current = None if current else current  # a blank line ends an item; later prose is ignored
            elif current is not None and not (current and current[-1].rstrip().endswith(("?", "？"))):
                current.append(line.strip())  # a wrapped question continues on the next line
    questions = [_clean_question(" ".join(parts)) for parts in items]
    if not questions:  # no numbering at all: fall back to bullet lines that end in a question mark
        questions = [_clean_question(m.group(1)) for m in map(_BULLET.match, text.splitlines()) if m]
    return list(dict.fromkeys(q for q in questions if len(q) >= 3))


def seeded_rng(seed: int, doc_id: str, purpose: str) -> random.Random:
    """A Random that depends only on (seed, document id, purpose) — not on order or threads."""
    return random.Random(hashlib.sha256(f"{seed}|{doc_id}|{purpose}".encode()).hexdigest())


def choose_task_type(doc_id: str, seed: int = 0, task_types: Iterable[str] = TASK_TYPES) -> str:
    """The task type for a document (uniform over ``task_types``, seeded by document id)."""
    return seeded_rng(seed, doc_id, "task").choice(list(task_types))


def ask_questions(doc: dict[str, Any], task_type: str, client: LLMClient, *, max_tokens: int = 1024,
                  parse_retries: int = 2) -> tuple[list[str], list[Any]]:
    """(questions, completions); retries at a higher temperature (a new cache key) when nothing parses."""
    prompt = question_prompt(doc["text"], task_type, doc["lang"])
    completions = []
    for attempt in range(parse_retries + 1):
        comp = client.complete(prompt, max_tokens=max_tokens, temperature=0.0 if attempt == 0 else 0.6 + 0.1 * attempt)
        completions.append(comp)
        questions = parse_questions(comp.text)
        if questions:
            return questions, completions
    raise SkipDocument("unparseable_questions", doc["id"])


def generate_record(doc: dict[str, Any], client: LLMClient, *, seed: int = 0, task_types: Iterable[str] = TASK_TYPES,
                    max_tokens_questions: int = 1024, max_tokens_answer: int = 1024,
                    parse_retries: int = 2) -> dict[str, Any]:
    """One instruction record for ``doc`` (two model calls); raises SkipDocument or LLMError."""
    if not doc["text"].strip():
        raise SkipDocument("empty_document", doc["id"])
    task = choose_task_type(doc["id"], seed, task_types)
    questions, comps = ask_questions(doc, task, client, max_tokens=max_tokens_questions, parse_retries=parse_retries)
    qi = seeded_rng(seed, doc["id"], "question").randrange(min(len(questions), 5))
    user = doc["text"] + "\n\n" + questions[qi]
    answer = client.complete(user, max_tokens=max_tokens_answer)
    comps.append(answer)
    meta = {"doc_id": doc["id"], "source": doc["source"], "lang": doc["lang"], "title": doc.get("title", ""),
            "task_type": task, "question_index": qi, "question": questions[qi], "questions": questions,
            "model": client.model, "backend": client.backend, "doc_tokens": doc.get("n_tokens"),
            "truncated": doc.get("truncated", False), "input_tokens": sum(c.input_tokens for c in comps),
            "output_tokens": sum(c.output_tokens for c in comps), "cost_usd": sum(c.cost_usd for c in comps),
            "cached": all(c.cached for c in comps), "question_attempts": len(comps) - 1}
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer.text}], "meta": meta}


def repair_jsonl(path: str | Path) -> int:
    """Cut a torn last line (no trailing newline, e.g. after a kill mid-write); returns bytes removed."""
    path = Path(path)
    if not path.is_file():
        return 0
    with open(path, "rb+") as fh:
        data = fh.read()
        if not data or data.endswith(b"\n"):
            return 0
        keep = data.rfind(b"\n") + 1
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())
    return len(data) - keep


def finished_ids(path: str | Path) -> set[str]:
    """Document ids already written to ``path`` (a duplicate id raises DataError naming the line)."""
    path, done = Path(path), set()
    if not path.is_file():
        return done
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                doc_id = json.loads(line)["meta"]["doc_id"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise DataError(f"{path}:{lineno}: not a generation record ({err})") from err
            if doc_id in done:
                raise DataError(f"{path}:{lineno}: duplicate record for document {doc_id!r}")
            done.add(doc_id)
    return done


def conversation_tokens(messages: list[dict[str, str]], tokenizer: Any) -> int:
    """Length of the conversation under ``tokenizer``'s chat template (what training sees)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _budget_requests(docs: list[dict[str, Any]], seed: int, task_types: Iterable[str], mq: int, ma: int) -> list[dict]:
    """Both calls per document for the cost estimate (the answer prompt ≈ the document + a question)."""
    reqs = []
    for d in docs:
        task = choose_task_type(d["id"], seed, task_types)
        reqs.append({"messages": question_prompt(d["text"], task, d["lang"]), "max_tokens": mq})
        reqs.append({"messages": d["text"] + "\n\n" + "?" * 200, "max_tokens": ma})
    return reqs


def run_generation(docs: list[dict[str, Any]], client: LLMClient, output_path: str | Path, *, seed: int = 0,
                   task_types: Iterable[str] = TASK_TYPES, tokenizer: Any = None, max_tokens_questions: int = 1024,
                   max_tokens_answer: int = 1024, parse_retries: int = 2, expected_output_tokens: int = 400,
                   max_len: int | None = None, desc: str = "self-instruct") -> dict[str, Any]:
    """Generate one record per document into ``output_path`` (resumable); returns and saves the run summary.

    One line per finished document, written with a single write + fsync from one thread; on start
    a torn last line is cut off and documents already in the file are skipped, so a killed run
    resumes with exactly one record per document. The whole run holds the output file's lock
    (:func:`longalign.records.output_lock`): a second run on the same file waits, then resumes.
    Unparseable question lists are retried at a higher temperature, then counted as a skip. A
    transient API failure that outlasts its retries skips the document (``api_error``, retried on
    the next run); a job-stopping one (``max_cost_usd`` reached, bad key, wrong ``base_url``,
    nothing listening) ends the run at once, writes the summary (with ``stopped`` and the error
    counts by class) and raises. A run that wrote nothing because every document failed at the API
    raises too. The output and its summary are owner-only (0600): they hold a user's documents.

    With ``tokenizer`` each record gets ``meta.n_tokens``; with ``max_len`` too, longer records are
    counted as ``record_too_long`` and not written (training would have to cut their answer).
    """
    output_path, task_types = Path(output_path), tuple(task_types)
    # Resume state is read inside the lock: a second run on this file waits, then writes only what is left.
    with output_lock(output_path):
        repaired = repair_jsonl(output_path)
        done = finished_ids(output_path)
        todo = list({d["id"]: d for d in docs if d["id"] not in done}.values())
        client.check_budget(_budget_requests(todo, seed, task_types, max_tokens_questions, max_tokens_answer),
                            expected_output_tokens)
        stats0, errors0, t0 = dict(client.stats), {k: dict(v) for k, v in client.errors.items()}, time.time()
        work = partial(generate_record, client=client, seed=seed, task_types=task_types, parse_retries=parse_retries,
                       max_tokens_questions=max_tokens_questions, max_tokens_answer=max_tokens_answer)
        skips, written, stopped = _generate(client, work, todo, output_path, tokenizer, max_len, desc)
        summary = _summary(output_path, docs, done, written, skips, repaired, client, stats0, time.time() - t0)
        summary.update(errors=client.error_report(errors0), stopped=str(stopped) if stopped else None)
        _write_private(output_path.with_name(output_path.stem + ".summary.json"), summary)
    if stopped is not None:
        raise stopped
    if todo and summary["records_total"] == 0 and skips["api_error"]:
        raise LLMError(f"{output_path}: no record written, {skips['api_error']} document(s) failed at the API "
                       f"({client.backend}:{client.model}); errors by class: {summary['errors']}", kind="api_error")
    return summary


def _generate(client: LLMClient, work: Any, todo: list[dict[str, Any]], output_path: Path, tokenizer: Any,
              max_len: int | None, desc: str) -> tuple[Counter, int, Exception | None]:
    """Run ``work`` over ``todo``, appending each record: (skip counts, records written, job-stopping error)."""
    skips, written = Counter(), 0
    try:
        for _, result in client.map_concurrent(work, todo, desc=desc):
            written += _keep(result, output_path, skips, tokenizer, max_len)
    except STOPS_JOB as err:
        return skips, written, err
    return skips, written, None


def _keep(result: Any, output_path: Path, skips: Counter, tokenizer: Any, max_len: int | None) -> int:
    """Append one finished record (1) or count why there is none (0)."""
    if isinstance(result, Exception):
        skips[_skip_reason(result)] += 1
        return 0
    if tokenizer is not None:
        result["meta"]["n_tokens"] = conversation_tokens(result["messages"], tokenizer)
        if max_len is not None and result["meta"]["n_tokens"] > max_len:
            skips["record_too_long"] += 1
            return 0
    if not output_path.exists():
        output_path.touch(mode=0o600)
        os.chmod(output_path, 0o600)  # owner-only whatever the umask: the records hold a user's documents
    append_jsonl(output_path, result)  # one write + fsync from this thread only: never two records per doc
    return 1


def _write_private(path: Path, record: dict[str, Any]) -> None:
    write_record(path, record)
    os.chmod(path, 0o600)


def _skip_reason(err: Exception) -> str:
    """Counted skip reason; programming errors are re-raised instead of being hidden as skips."""
    if isinstance(err, SkipDocument):
        return err.reason
    if isinstance(err, LLMError):
        return "api_error"
    raise err


def _summary(path: Path, docs: list, done: set, written: int, skips: Counter, repaired: int,
             client: LLMClient, stats0: dict, wall_s: float) -> dict[str, Any]:
    delta = {k: client.stats[k] - stats0[k] for k in client.stats}
    return {"output": str(path), "documents": len(docs), "already_done": len(done), "written": written,
            "records_total": len(done) + written, "skipped": sum(skips.values()), "skips": dict(skips),
            "repaired_bytes": repaired, "backend": client.backend, "model": client.model, "wall_s": wall_s,
            **{f"llm_{k}": v for k, v in delta.items()}}
