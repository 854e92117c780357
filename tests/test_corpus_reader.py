"""The one reader of a user's corpus (files or folders of text, JSONL, JSON lists): what it reads, what it skips, and where it says so."""

from __future__ import annotations

import gzip
import json

import pytest

from longalign.data import corpus
from longalign.data.build import prepare_documents
from longalign.records import DataError
from test_corpus import CharTokenizer


def _user_folder(root):
    """A folder as a user fills it: text, JSONL, gzipped JSONL, a JSON list, a PDF and a binary 'text' file."""
    (root / "notes.md").write_text("# Notes\nA markdown document about rivers.", encoding="utf-8")
    (root / "arxiv.jsonl").write_text(json.dumps({"id": "x1", "text": "Paper one."}) + "\n\n"
                                      + json.dumps({"text": "Paper two."}) + "\n", encoding="utf-8")
    (root / "sub").mkdir()
    with gzip.open(root / "sub" / "books.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.write(json.dumps({"text": "A book.", "title": "B"}) + "\n")
    (root / "wiki.json").write_text(json.dumps([{"text": "Wiki one."}, "Wiki two as a plain string."]), encoding="utf-8")
    (root / "paper.pdf").write_bytes(b"%PDF-1.4 binary")
    (root / "dump.txt").write_bytes(b"\x00" * 64)


def test_folder_reads_text_jsonl_gz_and_json_lists_and_names_skipped_files(tmp_path):
    _user_folder(tmp_path)
    skips = corpus.Skips()
    docs = list(corpus.iter_user_docs(tmp_path, skips))
    texts = sorted(d["text"] for d in docs)
    assert texts == sorted(["# Notes\nA markdown document about rivers.", "Paper one.", "Paper two.", "A book.",
                            "Wiki one.", "Wiki two as a plain string."])
    by_text = {d["text"]: d for d in docs}
    assert by_text["Paper one."]["id"] == "x1" and by_text["Paper two."]["id"] == "arxiv:2"
    assert by_text["A book."]["source"] == "books" and by_text["Wiki one."]["source"] == "wiki"
    assert dict(skips) == {"unsupported_file": 1, "binary_or_control_chars": 1}
    assert skips.examples["unsupported_file"] == [str(tmp_path / "paper.pdf")]
    assert "paper.pdf" in corpus.format_skips(skips) and "dump.txt" in corpus.format_skips(skips)


def test_single_files_of_each_kind_and_an_unknown_kind(tmp_path):
    _user_folder(tmp_path)
    assert [d["text"] for d in corpus.load_source(str(tmp_path / "wiki.json"))] == ["Wiki one.", "Wiki two as a plain string."]
    assert [d["title"] for d in corpus.load_source(str(tmp_path / "notes.md"))] == ["notes.md"]
    with pytest.raises(DataError, match=r"paper\.pdf: not a corpus file type"):
        corpus.load_source(str(tmp_path / "paper.pdf"))


def test_json_list_errors_name_the_real_line(tmp_path):
    path = tmp_path / "docs.json"
    path.write_text('[\n  {"text": "a"},\n\n  {"title": "no text"}\n]\n', encoding="utf-8")
    assert [line for line, _ in corpus.read_json_list(path)] == [2, 4]
    with pytest.raises(DataError, match=r"docs\.json:4: field 'text' missing"):
        list(corpus.iter_json_docs(path))
    path.write_text('[\n {"text": "a"},\n {"text": "b"\n]\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"docs\.json:4: malformed JSON"):
        corpus.read_json_list(path)
    path.write_text('{"text": "not a list"}', encoding="utf-8")
    with pytest.raises(DataError, match=r"docs\.json:1: expected a JSON list"):
        corpus.read_json_list(path)
    path.write_bytes(b'[\n {"text": "a"},\n {"text": "caf\xe9"}\n]')
    with pytest.raises(DataError, match=r"docs\.json:3: not valid UTF-8"):
        corpus.read_json_list(path)
    path.write_text("[]", encoding="utf-8")
    assert corpus.read_json_list(path) == []


def test_control_characters_removed_with_a_count_and_binary_text_skipped(tmp_path):
    skips = corpus.Skips()
    prose = "tab\tnewline\nform feed\x0c and carriage return\r are kept. " * 10
    assert corpus.clean_text("bell\x07 and\x1b escape. " + prose, "a", skips) == "bell and escape. " + prose
    assert corpus.clean_text("A\x00B" * 50, "b", skips) is None
    assert corpus.clean_text("\x01\x02\x03 mostly control", "c", skips) is None  # 3 of 19 characters
    assert dict(skips) == {"control_chars_removed": 1, "binary_or_control_chars": 2}
    long_ok = "one bell in a long line of ordinary words " * 3
    rows = [{"text": "fine text"}, {"text": "\u0000\u0000\u0000"}, {"text": "\u0007" + long_ok}]
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    skips = corpus.Skips()
    assert [d["text"] for d in corpus.iter_jsonl_docs(path, skips=skips)] == ["fine text", long_ok]
    assert skips.examples == {"binary_or_control_chars": [f"{path}:2"], "control_chars_removed": [f"{path}:3"]}


def test_no_documents_left_names_sources_and_skips(tmp_path):
    (tmp_path / "short.txt").write_text("too short", encoding="utf-8")
    (tmp_path / "scan.pdf").write_bytes(b"%PDF")
    with pytest.raises(DataError) as err:
        prepare_documents([str(tmp_path)], CharTokenizer(), num_documents=5, heldout_documents=1, min_len=100,
                          max_len=1000, reserve_tokens=100)
    message = str(err.value)
    assert f"'{tmp_path}': 1" in message and "too_short: 1" in message and "scan.pdf" in message


def test_overlong_skip_drops_and_counts_instead_of_cutting(tmp_path):
    lengths = [300 + 97 * i for i in range(30)]  # characters = tokens under CharTokenizer
    for i, n in enumerate(lengths):
        (tmp_path / f"d{i:02d}.txt").write_text((f"doc {i} " + "x" * n)[:n], encoding="utf-8")
    kw = dict(num_documents=50, heldout_documents=3, min_len=400, max_len=2500, reserve_tokens=500, seed=0)
    skip = prepare_documents([str(tmp_path)], CharTokenizer(), overlong="skip", **kw)
    cut = prepare_documents([str(tmp_path)], CharTokenizer(), overlong="truncate", **kw)
    too_long, too_short = sum(n > 2000 for n in lengths), sum(n < 400 for n in lengths)
    assert skip["stats"]["skips"]["too_long"]["count"] == too_long and skip["stats"]["truncated"] == 0
    assert skip["stats"]["skips"]["too_short"]["count"] == too_short
    assert len(skip["train"]) + len(skip["heldout"]) == len(lengths) - too_long - too_short
    assert all(d["n_tokens"] <= 2000 and not d["truncated"] for d in skip["train"] + skip["heldout"])
    assert cut["stats"]["truncated"] == too_long and "too_long" not in cut["stats"]["skips"]


def test_paper_profile_skips_overlong_documents_and_reads_longalpaca():
    from longalign import config

    paper = config.load_profile("paper")["01_data_construction"]
    assert paper["overlong"] == "skip" and paper["longalpaca_path"].endswith("LongAlpaca-12k.json")
    for profile in ("cpu", "test"):  # the synthetic low-diversity stand-in
        assert config.load_profile(profile)["01_data_construction"]["longalpaca_path"] is None
