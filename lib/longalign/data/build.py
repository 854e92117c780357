"""Notebook 01's steps as library calls: corpus → train/held-out/low-diversity documents → client → records frame.

Keeps the notebook thin: each function is one step of data construction with its counted skips and
changes; :func:`prepare_documents` also returns the counts that notebook 01 writes to
``outputs/data/build-stats.json``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from longalign.data import corpus
from longalign.data.grounded import grounded_responder
from longalign.llm import LLMClient
from longalign.records import read_jsonl

OFFLINE_MODEL = "grounded-offline-v1"
CHANGE_REASONS = ("control_chars_removed", "trimmed_turns")  # counted records that were kept, changed


def prepare_documents(sources: list[str], tokenizer: Any, *, num_documents: int, heldout_documents: int,
                      min_len: int, max_len: int, reserve_tokens: int = 256, alpha: float = 1.0,
                      overlong: str = "truncate", seed: int = 0, skips: Counter | None = None,
                      limit_per_source: int | None = None) -> dict[str, Any]:
    """``{"train", "heldout", "stats"}``: length-sampled documents fitted to ``max_len - reserve_tokens`` and their counts.

    Documents longer than that are cut (``overlong="truncate"``) or skipped (``"skip"``, the paper);
    ``limit_per_source`` caps the documents read from each source (None: no cap); no document left
    raises a DataError naming the sources read and every skip reason.
    """
    skips = skips if skips is not None else corpus.Skips()
    counts: dict[str, int] = {}
    docs = corpus.measure_tokens(corpus.load_corpus(sources, skips, limit_per_source, counts), tokenizer)
    doc_max = max_len - reserve_tokens  # room for the question, the answer and the chat template
    # held-out documents come from the eligible lengths and are removed before training sampling
    eligible = corpus.filter_lengths(docs, min_len, doc_max, overlong, skips)
    corpus.require_documents(eligible, f"documents of {min_len}-{doc_max} tokens", counts, skips)
    train_pool, held_pool = corpus.split_heldout(eligible, heldout_documents, seed)
    train = corpus.sample_by_length(train_pool, num_documents, min_len, doc_max, alpha=alpha, overlong=overlong,
                                    seed=seed, skips=skips)
    corpus.require_documents(train, "training documents (all eligible ones were held out)", counts, skips)
    cut = [corpus.truncate_doc(d, tokenizer, doc_max) for d in train]
    held = [corpus.truncate_doc(d, tokenizer, doc_max) for d in held_pool]
    stats = {"sources": counts, "documents": len(docs), "eligible": len(eligible), "overlong": overlong,
             "doc_max_tokens": doc_max, "train": len(cut), "heldout": len(held),
             "truncated": sum(d["truncated"] for d in cut + held), "skips": skip_report(skips)}
    return {"train": cut, "heldout": held, "stats": stats}


def skip_report(skips: Counter) -> dict[str, Any]:
    """Skip counts by reason for a stats record (with example places when ``skips`` is a ``corpus.Skips``)."""
    return skips.report() if isinstance(skips, corpus.Skips) else {r: {"count": n} for r, n in sorted(skips.items())}


def loaded_summary(rows: list[dict[str, Any]], skips: Counter) -> dict[str, Any]:
    """A file-loaded set (e.g. LongAlpaca-12k) summarised with the keys of a generation run's summary."""
    changed = sum(skips[r] for r in CHANGE_REASONS)
    dropped = sum(skips.values()) - changed
    return {"documents": len(rows) + dropped, "already_done": 0, "written": len(rows), "records_total": len(rows),
            "skipped": dropped, "changed": changed, "skips": dict(skips), "llm_cost_usd": 0.0}


def low_diversity_documents(docs: list[dict[str, Any]], n: int, source: str | None = None) -> list[dict[str, Any]]:
    """``n`` documents from ONE source (the most frequent unless given), cycled with ``#k`` ids when too few."""
    if not docs or n <= 0:
        return []
    source = source or Counter(d["source"] for d in docs).most_common(1)[0][0]
    pool = [d for d in docs if d["source"] == source]
    if not pool:
        raise ValueError(f"no documents from source {source!r}; have {sorted({d['source'] for d in docs})}")
    return [{**pool[i % len(pool)], "id": pool[i % len(pool)]["id"] + (f"#{i // len(pool)}" if i >= len(pool) else "")}
            for i in range(n)]


def make_client(backend: str, model: str, *, base_url: str | None = None, concurrency: int = 4,
                max_cost_usd: float | None = None, **kwargs: Any) -> LLMClient:
    """The generation client: offline uses the grounded generator, local loads ``model`` (e.g. ``smollm2``)."""
    extra = {"offline_fn": grounded_responder} if backend == "offline" else {}
    return LLMClient(backend, model, base_url=base_url, concurrency=concurrency, max_cost_usd=max_cost_usd,
                     **extra, **kwargs)


def load_rows(path: str | Path, documents: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """All rows of a JSONL file (empty list when it does not exist); with ``documents``, in their order.

    Generation appends each record when it finishes (``concurrency`` at once), so the file's order
    varies from run to run; the documents' order does not. Every later step (the suites' seeded
    sampling and shuffles, the held-out subsets) depends on the order, so same seed = same data needs
    this one. Rows of other documents (an earlier run's) follow, by ``doc_id``.
    """
    rows = list(read_jsonl(path)) if Path(path).is_file() else []
    if documents is None:
        return rows
    rank = {d["id"]: k for k, d in enumerate(documents)}
    doc_id = lambda r: str(r.get("meta", {}).get("doc_id", ""))  # noqa: E731
    return sorted(rows, key=lambda r: (rank.get(doc_id(r), len(rank)), doc_id(r)))


def records_frame(rows: list[dict[str, Any]], tokenizer: Any) -> pd.DataFrame:
    """One row per example: ``n_tokens`` (chat template, training tokenizer), ``kind``, ``source``, ``task_type``, ``lang``."""
    from longalign.data.selfinstruct import conversation_tokens

    out = []
    for r in rows:
        meta = r.get("meta", {})
        n = meta.get("n_tokens") or conversation_tokens(r["messages"], tokenizer)
        out.append({"n_tokens": n, "kind": meta.get("kind", "long"), "source": meta.get("source", "?"),
                    "task_type": meta.get("task_type", "-"), "lang": meta.get("lang", "en")})
    return pd.DataFrame(out)
