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


# -- file names from item ids, and one writer at a time ---------------------------------------------------


@pytest.mark.parametrize("item_id", ["a/b", "a_b", "a%2Fb", "a b", "中文-1", "q.1", "..", ".hidden", "x~y", "A-Z_09"])
def test_record_name_is_readable_and_reversible(item_id):
    from urllib.parse import quote, unquote

    # Independent reference: the standard library's percent-encoding with only "._-" kept (plus a leading dot).
    expected = quote(item_id, safe="._-").replace("~", "%7E")
    expected = "%2E" + expected[1:] if expected.startswith(".") else expected
    assert records.record_name(item_id) == expected
    assert unquote(expected, errors="strict") == item_id  # reversible, hence one file per id


def test_record_names_are_distinct(tmp_path):
    ids = ["a/b", "a_b", "a b", "a%2Fb", "a%252Fb", "A/B", "a\\b", "a:b", "a.b", "a-b", "x" * 400, "x" * 401, "1", 1]
    names = [records.record_name(i) for i in ids[:-1]]
    assert len(set(names)) == len(names), "one file per distinct id"
    assert records.record_name(1) == records.record_name("1")  # ids are compared as text
    for name in names:  # every name is a usable single path component on this file system
        records.write_record(tmp_path / f"{name}-run0.json", {"name": name})
        assert len(name.encode()) <= 200 and "/" not in name
    assert len(list(tmp_path.glob("*.json"))) == len(names)
    with pytest.raises(ValueError, match="empty item id"):
        records.record_name("")


WRITER = r"""
import json, sys, time
from pathlib import Path
from longalign import records
out, ready, go = (Path(p) for p in sys.argv[1:4])
with records.output_lock(out):
    done = {r["id"] for r in records.read_jsonl(out)} if out.is_file() else set()
    ready.touch()
    while not go.exists():  # the first writer holds the lock until the test has seen the second one wait
        time.sleep(0.05)
    for i in range(20):
        if i not in done:
            records.append_jsonl(out, {"id": i, "writer": sys.argv[4]})
print("wrote", sys.argv[4])
"""


@pytest.mark.slow
def test_two_writers_at_once_write_each_record_once(tmp_path):
    """Two processes resume-and-append to one JSONL file: the second waits, says so, then finds nothing left."""
    import os
    import subprocess
    import sys

    script, out, go = tmp_path / "writer.py", tmp_path / "gen.jsonl", tmp_path / "go"
    script.write_text(WRITER)
    env = {**os.environ, "PYTHONPATH": str(paths.ROOT / "lib")}
    run = [sys.executable, str(script), str(out)]
    first = subprocess.Popen(run + [str(tmp_path / "ready1"), str(go), "first"], env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    while not (tmp_path / "ready1").exists():  # the first writer holds the lock now
        assert first.poll() is None, first.communicate()
    second = subprocess.Popen(run + [str(tmp_path / "ready2"), str(go), "second"], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = second.stderr.readline()  # blocks until the second writer reports that it waits
    assert "another process is writing" in line and str(out) in line
    assert not (tmp_path / "ready2").exists(), "the second writer must not read the file while the first writes"
    go.touch()
    outs = [p.communicate(timeout=120) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outs
    rows = list(records.read_jsonl(out))
    assert sorted(r["id"] for r in rows) == list(range(20)) and {r["writer"] for r in rows} == {"first"}


def test_lock_timeout_names_the_file(tmp_path):
    from filelock import FileLock, Timeout

    target = tmp_path / "results"
    holder = FileLock(str(records.lock_path(target)))
    with holder:  # another holder (a separate lock object, as another process would have)
        with pytest.raises(RuntimeError, match="still being written by another process"):
            with records.output_lock(target, timeout=0.1):
                pass
    with records.output_lock(target) as lock:
        assert lock == records.lock_path(target) and lock.name == ".results.lock"
        with records.output_lock(target, timeout=0.1):  # nested in the same thread: re-entrant
            pass
        with pytest.raises(Timeout):  # still held: another lock object cannot take it
            FileLock(str(lock)).acquire(timeout=0)


# -- owner-only data and caches ---------------------------------------------------------------------------------


def test_data_and_cache_files_are_owner_only_whatever_the_umask(tmp_path, monkeypatch):
    """Files under outputs/data and the response caches are 0600, others stay 0644, even with umask 000."""
    import os
    import stat

    monkeypatch.setenv("LONGALIGN_CACHE", str(tmp_path / "cache"))
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    data = paths.data_dir()
    old = os.umask(0)  # the widest umask: nothing may rely on it
    try:
        (data / "old.jsonl").write_text('{"a": 0}\n')
        os.chmod(data / "old.jsonl", 0o644)  # left readable by an earlier version
        private = [records.write_record(data / "r.json", {"a": 1}),
                   records.write_jsonl(data / "nested" / "deeper" / "d.jsonl", [{"a": 1}]),
                   records.write_record(paths.cache() / "llm" / "ab" / "k.json", {"a": 1}),
                   records.write_record(paths.cache() / "judge" / "j" / "run0" / "ab" / "k.json", {"a": 1})]
        records.append_jsonl(data / "log.jsonl", {"a": 1})
        records.append_jsonl(data / "old.jsonl", {"a": 2})
        shared = [records.write_record(paths.results_dir("needle") / "cell.json", {"a": 1}),
                  records.write_jsonl(paths.outputs() / "datasets.jsonl", [{"a": 1}]),  # not inside data/
                  records.write_record(paths.cache() / "other" / "x.json", {"a": 1})]
    finally:
        os.umask(old)
    assert {str(p): mode(p) for p in private + [data / "log.jsonl", data / "old.jsonl"]} == \
        {str(p): 0o600 for p in private + [data / "log.jsonl", data / "old.jsonl"]}
    assert {str(p): mode(p) for p in shared} == {str(p): 0o644 for p in shared}
    assert [r["a"] for r in records.read_jsonl(data / "old.jsonl")] == [0, 2]
