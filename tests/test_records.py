"""Records and JSONL I/O: atomic writes, resume checks, errors that name file and line."""

from __future__ import annotations

import gzip

import pytest

from longalign import paths, records


def test_write_read_roundtrip(tmp_path):
    import numpy as np

    path = records.write_record(tmp_path / "a" / "r.json", {"x": np.float32(1.5), "v": np.arange(3), "s": "中文"})
    assert records.record_exists(path)
    assert records.read_record(path) == {"x": 1.5, "v": [0, 1, 2], "s": "中文"}
    assert not list(path.parent.glob(".*.tmp")), "no temporary files left behind"


def test_load_records_dataframe(tmp_path):
    for i in range(3):
        records.write_record(tmp_path / f"sub{i % 2}" / f"{i}.json", {"i": i})
    df = records.load_records(tmp_path)
    assert sorted(df["i"]) == [0, 1, 2] and "_path" in df


def test_corrupt_record_names_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": 1,\n oops}')
    with pytest.raises(records.DataError, match=r"bad\.json:2"):
        records.read_record(bad)


def test_jsonl_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n{"a": \n')
    it = records.read_jsonl(path)
    assert next(it) == {"a": 1} and next(it) == {"a": 2}
    with pytest.raises(records.DataError, match=r"d\.jsonl:4: malformed JSON"):
        next(it)


def test_jsonl_non_object_and_non_utf8(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text('[1, 2]\n')
    with pytest.raises(records.DataError, match=r"list\.jsonl:1: expected a JSON object"):
        list(records.read_jsonl(path))
    raw = tmp_path / "latin.jsonl"
    raw.write_bytes(b'{"a": 1}\n{"a": "caf\xe9"}\n')
    with pytest.raises(records.DataError, match=r"latin\.jsonl:2: not valid UTF-8"):
        list(records.read_jsonl(raw))


def test_gzip_and_append(tmp_path):
    path = tmp_path / "x.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        fh.write('{"k": 1}\n')
    assert list(records.read_jsonl(path)) == [{"k": 1}]
    log = tmp_path / "log.jsonl"
    records.append_jsonl(log, {"a": 1})
    records.append_jsonl(log, {"a": 2})
    assert [r["a"] for r in records.read_jsonl(log)] == [1, 2]


def test_paths_follow_env(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGALIGN_OUTPUTS", str(tmp_path / "o"))
    assert paths.figures_dir() == (tmp_path / "o" / "figures").resolve()
    assert paths.results_dir("needle").is_dir()
    monkeypatch.setenv("LONGALIGN_CACHE", str(tmp_path / "c"))
    assert paths.cache() == (tmp_path / "c").resolve()


def test_line_numbers_and_permissions(tmp_path):
    path = tmp_path / "n.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n')
    assert [n for n, _ in records.read_jsonl_lines(path)] == [1, 3]
    written = records.write_record(tmp_path / "r.json", {"a": 1})
    assert written.stat().st_mode & 0o777 == 0o644
