"""Short general instruction data (ShareGPT) and the training suites / held-out set that notebook 01 writes.

The paper mixes its long data with ShareGPT and compares four suites (§4.1): ``long0`` / ``long5`` /
``long10`` = the short data + none / a seeded half / all of the long records, and ``longalpaca`` =
the short data + LongAlpaca-12k (paper profile) or, as the cpu stand-in, as many long records as
``long10`` but of low diversity (one source, one task type). Offline, the short set is questions
about the Python standard library's public functions and classes answered by their docstrings (a
deterministic, licence-clean stand-in); MT-Bench questions are deliberately NOT used, because
notebooks 05 and 07 evaluate on MT-Bench. The short rows after the training ones are held out
(``heldout-short.jsonl``): the cpu profile's short task in notebook 05, because docstring Q/A does
not teach MT-Bench answers. Files: ``outputs/data/mix-{suite}.jsonl``, ``outputs/data/heldout-longqa.jsonl``
and ``outputs/data/heldout-short.jsonl``.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import random
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from longalign import paths
from longalign.data import corpus
from longalign.records import DataError, read_jsonl_lines, write_jsonl

ROLE_MAP = {"human": "user", "user": "user", "prompter": "user", "gpt": "assistant", "assistant": "assistant",
            "chatgpt": "assistant", "bard": "assistant", "bing": "assistant", "model": "assistant", "system": "system"}
SUITES = ("long0", "long5", "long10", "longalpaca")


def _rows(path: Path) -> list[tuple[int, Any]]:
    """(line, row) pairs from a JSON list or JSONL(.gz) file; malformed input raises DataError naming ``file:line``."""
    if corpus.file_kind(path) == "json":
        return corpus.read_json_list(path)
    return list(read_jsonl_lines(path))


def raw_turns(row: dict[str, Any]) -> list[tuple[Any, Any]] | None:
    """(role, text) pairs of a ShareGPT, chat or Alpaca row, un-normalised; None for an unknown format."""
    if isinstance(row.get("conversations"), list):
        return [(t.get("from"), t.get("value")) if isinstance(t, dict) else (None, None) for t in row["conversations"]]
    if isinstance(row.get("messages"), list):
        return [(t.get("role"), t.get("content")) if isinstance(t, dict) else (None, None) for t in row["messages"]]
    if "instruction" in row and "output" in row:
        prompt = "\n\n".join(x for x in (row.get("instruction"), row.get("input")) if isinstance(x, str) and x.strip())
        return [("user", prompt), ("assistant", row["output"])]
    return None


def normalize_turns(turns: list[tuple[Any, Any]], where: str = "",
                    skips: Counter | None = None) -> tuple[list[dict[str, str]] | None, str | None]:
    """(messages, None) or (None, skip reason): roles mapped; leading non-user and trailing user turns dropped (counted)."""
    msgs = []
    for role, text in turns:
        role = ROLE_MAP.get(str(role).lower()) if role is not None else None
        if role is None:
            return None, "unknown_role"
        if not isinstance(text, str):
            return None, "bad_turn"
        if role == "assistant" and not text.strip():
            return None, "empty_response"
        msgs.append({"role": role, "content": text})
    system = [m for m in msgs[:1] if m["role"] == "system"]
    body = _trim_body(msgs[len(system):])
    if not body:
        return None, "no_response"
    if any(a["role"] == b["role"] or a["role"] == "system" for a, b in zip(body, body[1:])):
        return None, "non_alternating"
    if len(system) + len(body) < len(msgs):  # a kept conversation that lost turns is a changed record
        corpus.note_skip(skips, "trimmed_turns", where)
    return system + body, None


def _trim_body(body: list[dict[str, str]]) -> list[dict[str, str]]:
    """The turns from the first user turn to the last assistant turn."""
    start = next((i for i, m in enumerate(body) if m["role"] == "user"), len(body))
    end = next((i + 1 for i in range(len(body) - 1, -1, -1) if body[i]["role"] == "assistant"), 0)
    return body[start:end]


def load_sharegpt(path: str | Path, skips: Counter | None = None, source: str = "sharegpt") -> list[dict[str, Any]]:
    """Short chat rows ``{messages, meta}`` from a ShareGPT/chat/Alpaca file; drops and changes counted in ``skips``.

    Rows are ShareGPT (``conversations`` with ``from``/``value``; roles human/gpt/system and
    aliases), chat (``messages`` with ``role``/``content``) or Alpaca (``instruction``/``input``/
    ``output``), from ``.json`` or ``.jsonl(.gz)``. Roles are normalised; conversations with an empty
    assistant response (paper §4.1) and exact duplicates are dropped; leading non-user and trailing
    user turns are trimmed. Errors and examples name ``file:line``.
    """
    return _load_chats(Path(path), skips, source, "short")


def load_longalpaca(path: str | Path, skips: Counter | None = None) -> list[dict[str, Any]]:
    """Long chat rows from LongAlpaca-12k's JSON list of ``{"instruction": document + question, "output": answer}``.

    The real ``LongAlpaca-12k.json`` (format from LongLoRA's README and SFT script), for the paper
    profile's ``longalpaca`` suite.
    """
    return _load_chats(Path(path), skips, "longalpaca-12k", "long", alpaca_only=True)


def _load_chats(path: Path, skips: Counter | None, source: str, kind: str, alpaca_only: bool = False) -> list[dict[str, Any]]:
    """Normalised chat rows of one file; unusable rows and exact duplicates are counted skips."""
    if not path.is_file():
        raise FileNotFoundError(f"{source} file {path} does not exist: download it or fix the path parameter")
    skips = skips if skips is not None else Counter()
    out, seen = [], set()
    for n, (line, row) in enumerate(_rows(path), start=1):
        where = f"{path}:{line}"
        turns = raw_turns(row) if isinstance(row, dict) and (not alpaca_only or "instruction" in row) else None
        if turns is None:
            expected = "'instruction' and 'output' (LongAlpaca format)" if alpaca_only else \
                "'conversations', 'messages' or 'instruction'/'output'"
            raise DataError(f"{where}: expected {expected}")
        msgs, reason = normalize_turns(turns, where, skips)
        key = hashlib.sha1(json.dumps(msgs, ensure_ascii=False).encode()).digest() if msgs else b""
        if reason or key in seen:
            corpus.note_skip(skips, reason or "duplicate", where)
            continue
        seen.add(key)
        row_id = str(row.get("id", f"{path.stem}:{n}"))
        out.append({"messages": msgs, "meta": {"id": row_id, "source": source, "kind": kind}})
    return out


def _public_docstrings(path: Path) -> list[tuple[str, str, str, str]]:
    """(kind, qualified name, signature, docstring) of the public top-level defs of one stdlib module."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    out = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef) and not node.name.startswith("_"):
            doc = ast.get_docstring(node) or ""
            if len(doc) >= 40:
                sig = f"({ast.unparse(node.args)})" if isinstance(node, ast.FunctionDef) else ""
                out.append(("function" if sig else "class", f"{path.stem}.{node.name}", sig, doc.strip()))
    return out


@functools.lru_cache(maxsize=1)
def _stdlib_docstrings() -> tuple[tuple[str, str, str, str], ...]:
    stdlib = Path(sys.modules["os"].__file__).parent
    return tuple(it for p in sorted(stdlib.glob("*.py")) for it in _public_docstrings(p))


def docstring_qa(n: int, seed: int = 0, max_answer_chars: int = 1500) -> list[dict[str, Any]]:
    """``n`` short Q/A rows about stdlib functions/classes answered by their docstrings (offline ShareGPT stand-in)."""
    items = list(_stdlib_docstrings())
    rng = random.Random(seed)
    rng.shuffle(items)
    rows = []
    for kind, name, sig, doc in items[:n]:
        question = rng.choice([f"What does the Python standard library {kind} `{name}` do?",
                               f"Explain the purpose of `{name}{sig}` in Python.",
                               f"I am reading Python code that uses `{name}`. What is it for?"])
        answer = f"`{name}{sig}`: {doc[:max_answer_chars]}"
        rows.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                     "meta": {"id": f"docstring:{name}", "source": "stdlib_docstrings", "kind": "short"}})
    return rows


def short_rows(n: int, heldout: int = 0, path: str | Path | None = None, seed: int = 0,
               skips: Counter | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the first ``n`` short rows for training, the next ``heldout`` for evaluation): ShareGPT at ``path`` or docstring Q/A.

    The held-out rows follow the training rows in the same order, so they never overlap and adding
    held-out rows leaves the training rows unchanged (exact duplicates are dropped by the loader).
    """
    rows = load_sharegpt(path, skips) if path is not None else docstring_qa(n + heldout, seed)
    if heldout and len(rows) < n + heldout:  # without held-out rows, n is a cap (the paper: all of ShareGPT)
        where = path if path is not None else "the stdlib docstrings"
        raise ValueError(f"{where} has {len(rows)} usable short rows, fewer than num_short + heldout_short = {n + heldout}")
    return rows[:n], rows[n:n + heldout]


def build_suites(long_rows: list[dict[str, Any]], short_rows: list[dict[str, Any]],
                 longalpaca_rows: list[dict[str, Any]], seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """The four training mixtures, each shuffled with ``seed``; every row's meta gets ``kind`` and ``suite``."""
    rng = random.Random(seed)
    half = rng.sample(long_rows, len(long_rows) // 2)
    parts = {"long0": [], "long5": half, "long10": long_rows, "longalpaca": longalpaca_rows}
    suites = {}
    for suite, longs in parts.items():
        rows = [_tag(r, "long", suite) for r in longs] + [_tag(r, "short", suite) for r in short_rows]
        random.Random(f"{seed}|{suite}").shuffle(rows)
        suites[suite] = rows
    return suites


def _tag(row: dict[str, Any], kind: str, suite: str) -> dict[str, Any]:
    return {"messages": row["messages"], "meta": {**row.get("meta", {}), "kind": kind, "suite": suite}}


def write_suites(suites: dict[str, list[dict[str, Any]]], folder: Path | None = None) -> dict[str, Path]:
    """Write ``mix-{suite}.jsonl`` for every suite (atomically) under ``outputs/data``."""
    folder = Path(folder) if folder is not None else paths.data_dir()
    return {suite: write_jsonl(folder / f"mix-{suite}.jsonl", rows) for suite, rows in suites.items()}


def heldout_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Held-out long-QA rows ``{id, question, context, answer, messages, meta}`` from generation records."""
    rows = []
    for rec in records:
        question = rec["meta"]["question"]
        user, answer = rec["messages"][0]["content"], rec["messages"][1]["content"]
        context = user[: -len(question) - 2] if user.endswith("\n\n" + question) else user
        rows.append({"id": rec["meta"]["doc_id"], "question": question, "context": context, "answer": answer,
                     "messages": rec["messages"], "meta": rec["meta"]})
    return rows
