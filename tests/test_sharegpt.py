"""Short chat data loading (ShareGPT / chat / Alpaca), suites and held-out rows."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from longalign.data import corpus, sharegpt
from longalign.data.build import low_diversity_documents
from longalign.records import DataError, read_jsonl


def _conv(*turns, **extra):
    return {"conversations": [{"from": f, "value": v} for f, v in turns], **extra}


def test_sharegpt_roles_normalised_and_bad_conversations_counted(tmp_path):
    rows = [
        _conv(("system", "Be nice."), ("human", "Hi"), ("gpt", "Hello!"), id="ok"),
        _conv(("human", "Q"), ("gpt", "   "), id="empty"),                # empty response: paper 4.1
        _conv(("gpt", "stray"), ("human", "Q2"), ("chatgpt", "A2"), ("human", "dangling"), id="trim"),
        _conv(("human", "Q"), ("robot", "A"), id="role"),
        _conv(("human", "only a question"), id="noresp"),
        _conv(("human", "a"), ("human", "b"), ("gpt", "c"), id="alt"),
        {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}], "id": "chat"},
        {"instruction": "Summarise.", "input": "Long paper", "output": "Short.", "id": "alpaca"},
    ]
    path = tmp_path / "sg.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    skips = Counter()
    out = sharegpt.load_sharegpt(path, skips)
    by_id = {r["meta"]["id"]: r["messages"] for r in out}
    assert set(by_id) == {"ok", "trim", "chat", "alpaca"}
    assert [m["role"] for m in by_id["ok"]] == ["system", "user", "assistant"]
    assert by_id["trim"] == [{"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"}]
    assert by_id["alpaca"][0]["content"] == "Summarise.\n\nLong paper"
    assert skips == {"empty_response": 1, "unknown_role": 1, "no_response": 1, "non_alternating": 1, "trimmed_turns": 1}


def test_duplicates_and_trimmed_turns_are_counted_with_their_lines(tmp_path):
    rows = [_conv(("human", "Q"), ("gpt", "A")), _conv(("human", "Q2"), ("gpt", "A2")),
            _conv(("human", "Q"), ("gpt", "A"), id="again"), _conv(("human", "Q3"), ("gpt", "A3"), ("human", "more?"))]
    path = tmp_path / "sg.json"
    path.write_text(json.dumps(rows, indent=1), encoding="utf-8")  # pretty-printed: records start on later lines
    starts = [i for i, line in enumerate(path.read_text().splitlines(), start=1) if line.startswith(" {")]
    skips = corpus.Skips()
    out = sharegpt.load_sharegpt(path, skips)
    assert [r["messages"][0]["content"] for r in out] == ["Q", "Q2", "Q3"] and out[2]["messages"][-1]["content"] == "A3"
    assert dict(skips) == {"duplicate": 1, "trimmed_turns": 1}
    assert skips.examples == {"duplicate": [f"{path}:{starts[2]}"], "trimmed_turns": [f"{path}:{starts[3]}"]}


def test_longalpaca_official_format(tmp_path):
    # LongAlpaca-12k.json: one JSON list of {"instruction": document + question, "output": answer} (LongLoRA)
    doc = "Below is a paper. Memorize the paper and answer my question after the paper.\n The paper begins. \n" + "text " * 200
    rows = [{"instruction": doc + "\n Now the paper ends. \nWhat is the main contribution?", "output": "The method."},
            {"instruction": "Summarise the story.", "output": "  ", "file": "book.txt"},
            {"instruction": "Give three words.", "output": "a b c"}]
    path = tmp_path / "LongAlpaca-12k.json"
    path.write_text(json.dumps(rows, indent=4), encoding="utf-8")
    skips = Counter()
    out = sharegpt.load_longalpaca(path, skips)
    assert [r["messages"] for r in out] == [[{"role": "user", "content": rows[0]["instruction"]}, {"role": "assistant", "content": "The method."}],
                                            [{"role": "user", "content": "Give three words."}, {"role": "assistant", "content": "a b c"}]]
    assert {r["meta"]["source"] for r in out} == {"longalpaca-12k"} and {r["meta"]["kind"] for r in out} == {"long"}
    assert skips == {"empty_response": 1}
    path.write_text(json.dumps([rows[0], {"conversations": []}], indent=1), encoding="utf-8")
    line = path.read_text().splitlines().index(" {", 2) + 1
    with pytest.raises(DataError, match=rf"LongAlpaca-12k\.json:{line}: expected 'instruction' and 'output'"):
        sharegpt.load_longalpaca(path)
    with pytest.raises(FileNotFoundError, match="longalpaca-12k file .*missing.json does not exist"):
        sharegpt.load_longalpaca(tmp_path / "missing.json")


def test_bad_files_name_file_and_line(tmp_path):
    bad_json = tmp_path / "a.json"
    bad_json.write_text('[{"conversations": []},\n{"conv', encoding="utf-8")
    with pytest.raises(DataError, match=r"a\.json:2"):
        sharegpt.load_sharegpt(bad_json)
    bad_jsonl = tmp_path / "b.jsonl"
    bad_jsonl.write_text(json.dumps(_conv(("human", "q"), ("gpt", "a"))) + "\n{oops\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"b\.jsonl:2"):
        sharegpt.load_sharegpt(bad_jsonl)
    unknown = tmp_path / "c.jsonl"
    unknown.write_text('{"prompt": "x"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"c\.jsonl:1: expected 'conversations'"):
        sharegpt.load_sharegpt(unknown)


def test_docstring_qa_is_deterministic_and_grounded_in_docstrings():
    rows = sharegpt.docstring_qa(25, seed=4)
    assert len(rows) == 25 and rows == sharegpt.docstring_qa(25, seed=4)
    import importlib

    for row in rows[:10]:
        module, name = row["meta"]["id"].removeprefix("docstring:").split(".", 1)
        try:
            obj = getattr(importlib.import_module(module), name)
        except Exception:  # noqa: BLE001 — some stdlib modules are platform-specific
            continue
        assert (obj.__doc__ or "").strip()[:60].split("\n")[0] in row["messages"][1]["content"]


def _rows(n, kind):
    return [{"messages": [{"role": "user", "content": f"{kind}{i}"}, {"role": "assistant", "content": "a"}],
             "meta": {"doc_id": f"{kind}{i}"}} for i in range(n)]


def test_suites_have_the_paper_structure(tmp_path):
    long, short, alpaca = _rows(10, "L"), _rows(7, "S"), _rows(10, "A")
    suites = sharegpt.build_suites(long, short, alpaca, seed=0)
    kinds = {s: Counter(r["meta"]["kind"] for r in rows) for s, rows in suites.items()}
    assert kinds == {"long0": {"short": 7}, "long5": {"short": 7, "long": 5}, "long10": {"short": 7, "long": 10},
                     "longalpaca": {"short": 7, "long": 10}}
    long5 = {r["messages"][0]["content"] for r in suites["long5"] if r["meta"]["kind"] == "long"}
    assert long5 <= {r["messages"][0]["content"] for r in long}
    files = sharegpt.write_suites(suites, tmp_path)
    assert sorted(p.name for p in files.values()) == [f"mix-{s}.jsonl" for s in sorted(sharegpt.SUITES)]
    assert len(list(read_jsonl(files["long10"]))) == 17
    assert sharegpt.build_suites(long, short, alpaca, seed=0) == suites


def test_heldout_rows_split_context_and_question():
    rec = {"messages": [{"role": "user", "content": "DOC TEXT\n\nmore\n\nWhat?"}, {"role": "assistant", "content": "That."}],
           "meta": {"doc_id": "d1", "question": "What?"}}
    row = sharegpt.heldout_rows([rec])[0]
    assert row["context"] == "DOC TEXT\n\nmore" and row["answer"] == "That." and row["id"] == "d1"
    assert row["context"] + "\n\n" + row["question"] == rec["messages"][0]["content"]


def test_low_diversity_documents_come_from_one_source():
    docs = [{"id": f"a{i}", "source": "a"} for i in range(3)] + [{"id": "b", "source": "b"}]
    out = low_diversity_documents(docs, 7)
    assert {d["source"] for d in out} == {"a"} and len({d["id"] for d in out}) == 7
    assert [d["id"] for d in out[:4]] == ["a0", "a1", "a2", "a0#1"]


def test_short_rows_hold_out_the_rows_after_the_training_ones(tmp_path):
    train, held = sharegpt.short_rows(12, 5, seed=3)
    assert train == sharegpt.docstring_qa(12, 3)  # held-out rows leave the training rows unchanged
    assert held == sharegpt.docstring_qa(17, 3)[12:] and len(held) == 5
    assert not {r["meta"]["id"] for r in train} & {r["meta"]["id"] for r in held}
    path = tmp_path / "sg.jsonl"
    path.write_text("".join(json.dumps(_conv(("human", f"Q{i}"), ("gpt", f"A{i}"))) + "\n" for i in range(6)))
    train, held = sharegpt.short_rows(4, 2, path)
    assert [r["messages"][0]["content"] for r in train + held] == [f"Q{i}" for i in range(6)]
    assert [len(x) for x in sharegpt.short_rows(10, 0, path)] == [6, 0]  # without held-out rows n is only a cap
    with pytest.raises(ValueError, match=r"sg\.jsonl has 6 usable short rows, fewer than num_short \+ heldout_short = 7"):
        sharegpt.short_rows(4, 3, path)
