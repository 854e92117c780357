"""Chat data → token ids with assistant-only labels, stored variable-length as a ``datasets`` Arrow table.

Only assistant tokens are trained on, so labels carry the token id on assistant turns and -100
everywhere else (HF-aligned: same positions as ``input_ids``). Sequences are stored unpadded,
because packing and the batching methods need the true lengths; over-long ones are truncated from
the right as in the paper. Malformed records are counted skips with their ``file#record``, and
data that yields nothing trainable is refused naming the files.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from tqdm.auto import tqdm

from longalign import paths as lpaths
from longalign.collate import IGNORE_INDEX
from longalign.records import DataError, read_jsonl, write_record

SKIP_REASONS = ("bad_schema", "bad_roles", "empty_assistant", "zero_target", "over_length")
_MAX_EXAMPLES = 5
_SHARD_ROWS = 1000


@dataclass
class TokenizeStats:
    """Counts of a tokenization run: records read, kept, truncated, and skipped per reason."""

    read: int = 0
    kept: int = 0
    truncated: int = 0
    skipped: dict[str, int] = field(default_factory=lambda: {r: 0 for r in SKIP_REASONS})
    examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, where: str) -> None:
        """Count one skipped record and remember where it was (first few per reason)."""
        self.skipped[reason] += 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < _MAX_EXAMPLES:
            self.examples[reason].append(where)

    def summary(self) -> str:
        """One line: read / kept / truncated / skipped per reason."""
        skips = ", ".join(f"{r}={n}" for r, n in self.skipped.items() if n) or "none"
        return f"tokenized {self.read} records: kept {self.kept} ({self.truncated} truncated), skipped: {skips}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"read": self.read, "kept": self.kept, "truncated": self.truncated,
                "skipped": dict(self.skipped), "examples": dict(self.examples)}


def check_messages(messages: Any) -> str | None:
    """Skip reason for a malformed conversation (optional system, then user/assistant alternating
    and ending with an assistant turn), or None when it is well formed."""
    if not isinstance(messages, list) or not messages:
        return "bad_schema"
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            return "bad_schema"
    roles = [m["role"] for m in messages]
    body = roles[1:] if roles[0] == "system" else roles
    if any(r != ("user" if i % 2 == 0 else "assistant") for i, r in enumerate(body)):
        return "bad_roles"
    if "assistant" not in body:
        return "zero_target"  # a prompt without an answer: nothing to learn from
    if body[-1] != "assistant":
        return "bad_roles"
    if any(m["role"] == "assistant" and not m["content"].strip() for m in messages):
        return "empty_assistant"
    return None


def _has_generation_markers(tokenizer) -> bool:
    return re.search(r"\{%-?\s*generation\s*-?%\}", tokenizer.chat_template or "") is not None


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _assistant_char_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """Rendered text and the character span of every assistant turn, from prefix renderings."""
    text = _render(tokenizer, messages)
    spans = []
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:k], add_generation_prompt=True)
        upto = _render(tokenizer, messages[:k + 1])
        if not (text.startswith(before) and text.startswith(upto) and upto.startswith(before)):
            raise ValueError("chat template renders are not prefix-consistent; use method='generation'")
        spans.append((len(before), len(upto.rstrip())))
    return text, spans


def _mask_from_spans(offsets: Sequence[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """1 for every token overlapping a span (HF's rule for assistant masks)."""
    return [int(any(s < e2 and e > s2 for s2, e2 in spans)) if e > s else 0 for s, e in offsets]


def tokenize_conversation(messages: list[dict], tokenizer, method: str = "auto") -> tuple[list[int], list[int]]:
    """Token ids and assistant-only labels (HF-aligned, -100 elsewhere) of one conversation.

    ``method="generation"`` uses the template's ``{% generation %}`` markers (HF's assistant mask);
    ``"prefix"`` derives assistant spans by rendering conversation prefixes (``messages[:k]`` +
    generation prompt vs ``messages[:k+1]``), for templates without markers (SmolLM2, ChatGLM);
    ``"auto"`` picks by the template. Both mark the tokens overlapping each assistant span (its
    content and end-of-turn token; whitespace the template adds after the turn is not a target).
    A tokenizer without any chat template raises ``ValueError`` saying how to give one.
    """
    if not getattr(tokenizer, "chat_template", None):
        from longalign.models import CHAT_TEMPLATES
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template, so chat data "
                         "cannot be rendered: load it with longalign.models.load_tokenizer(name, chat_template=...) "
                         f"({' / '.join(CHAT_TEMPLATES)} or a Jinja string), or use a chat model's tokenizer")
    if method == "auto":
        method = "generation" if _has_generation_markers(tokenizer) else "prefix"
    if method == "generation":
        out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
        ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
    elif method == "prefix":
        text, spans = _assistant_char_spans(tokenizer, messages)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, mask = list(enc["input_ids"]), _mask_from_spans(enc["offset_mapping"], spans)
    else:
        raise ValueError(f"unknown method {method!r}: use 'auto', 'generation' or 'prefix'")
    return ids, [t if m else IGNORE_INDEX for t, m in zip(ids, mask)]


def _row(messages: list[dict], tokenizer, max_len: int, method: str) -> tuple[dict | None, str | None]:
    """A dataset row for one conversation, or the reason it is skipped."""
    ids, labels = tokenize_conversation(messages, tokenizer, method)
    # position 0 is never predicted (collators mask it), so it does not count as a target
    if not any(y != IGNORE_INDEX for y in labels[1:]):
        return None, "zero_target"
    truncated = len(ids) > max_len
    ids, labels = ids[:max_len], labels[:max_len]  # truncation from the right, as in the paper
    n_targets = sum(1 for y in labels[1:] if y != IGNORE_INDEX)
    if n_targets == 0:
        return None, "over_length"
    return {"input_ids": ids, "labels": labels, "length": len(ids), "num_target_tokens": n_targets,
            "truncated": truncated}, None


def tokenize_jsonl(paths: str | Path | Iterable[str | Path], tokenizer, max_len: int,
                   method: str = "auto", progress: bool = True) -> tuple[datasets.Dataset, TokenizeStats]:
    """Tokenize JSONL chat files into a variable-length Dataset; bad records are counted skips.

    Rows are ``{"messages": [...], "meta": {...}}`` read with ``records.read_jsonl`` (a malformed
    line raises ``DataError`` naming file and line), truncated from the right to ``max_len``.
    Columns: ``input_ids``, ``labels``, ``length``, ``num_target_tokens``, ``truncated``, ``source``
    (``file#record``), ``meta`` (JSON string). Prints a one-line summary; files that yield no
    trainable record raise ``DataError`` naming the files and the skip reasons.
    """
    files = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    stats, rows, shards = TokenizeStats(), [], []
    for path in files:
        for k, obj in enumerate(tqdm(read_jsonl(path), desc=f"tokenize {path.name}", disable=not progress), 1):
            stats.read += 1
            where = f"{path}#{k}"
            messages = obj.get("messages")
            reason = check_messages(messages)
            row = None
            if reason is None:
                row, reason = _row(messages, tokenizer, max_len, method)
            if reason is not None:
                stats.skip(reason, where)
                continue
            stats.kept += 1
            stats.truncated += row["truncated"]
            rows.append({**row, "source": where, "meta": json.dumps(obj.get("meta", {}), ensure_ascii=False)})
            if len(rows) == _SHARD_ROWS:  # to compact Arrow now: Python int lists cost ~9x the memory
                shards.append(_to_dataset(rows))
                rows = []
    print(stats.summary())
    if stats.kept == 0:
        raise DataError(_nothing_kept(files, stats))
    return datasets.concatenate_datasets(shards + [_to_dataset(rows)]), stats


def _nothing_kept(files: list[Path], stats: TokenizeStats) -> str:
    """The refusal message for data that yields no trainable record: which files, and why each was skipped."""
    names = ", ".join(str(f) for f in files)
    if stats.read == 0:
        return f"no records in {names}: the file(s) are empty; regenerate the data (notebook 01) or pick other files"
    reasons = "; ".join(f"{r}={n} (e.g. {', '.join(stats.examples.get(r, [])[:2])})"
                        for r, n in stats.skipped.items() if n)
    return f"none of the {stats.read} records of {names} is trainable (no assistant target token survives): {reasons}"


def _to_dataset(rows: list[dict]) -> datasets.Dataset:
    """Rows → Arrow table with int32 token lists (variable length, never padded)."""
    features = datasets.Features({
        "input_ids": datasets.Sequence(datasets.Value("int32")),
        "labels": datasets.Sequence(datasets.Value("int32")),
        "length": datasets.Value("int64"), "num_target_tokens": datasets.Value("int64"),
        "truncated": datasets.Value("bool"), "source": datasets.Value("string"),
        "meta": datasets.Value("string"),
    })
    columns = {name: [r[name] for r in rows] for name in features}
    return datasets.Dataset.from_dict(columns, features=features)


def tokenized_dir(name: str) -> Path:
    """``outputs/data/tokenized/<name>``."""
    return lpaths.data_dir() / "tokenized" / name


def save_tokenized(dataset: datasets.Dataset, name: str, stats: TokenizeStats | None = None) -> Path:
    """Save a tokenized dataset (and its stats) atomically to ``outputs/data/tokenized/<name>``.

    The folder is replaced whole; ``stats.json`` lies beside the Arrow files.
    """
    folder = tokenized_dir(name)
    tmp = folder.with_name(f".{name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    dataset.save_to_disk(str(tmp))
    if stats is not None:
        write_record(tmp / "stats.json", stats.to_dict())
    old = folder.with_name(f".{name}.old")
    if folder.exists():  # swap in the new folder, so readers never see a half-written one
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def load_tokenized(name: str) -> datasets.Dataset:
    """Load a dataset saved by ``save_tokenized``."""
    folder = tokenized_dir(name)
    if not folder.is_dir():
        raise FileNotFoundError(f"no tokenized dataset at {folder}; run tokenize_jsonl + save_tokenized first")
    return datasets.load_from_disk(str(folder))
