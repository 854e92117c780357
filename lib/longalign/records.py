"""Result records and JSONL I/O: atomic writes, one record per unit of work, errors that name file and line.

Every long job (API generation, judging, sweeps, training) writes one JSON file per finished unit
with :func:`write_record`; a rerun asks :func:`record_exists` and skips what is done, and plots read
a folder back with :func:`load_records`. Item ids map to distinct file names (:func:`record_name`),
and :func:`output_lock` lets only one process at a time write an output, so shared outputs stay
consistent. Files under ``outputs/data`` or the API response caches hold a user's documents and
prompts and are owner-only (0600, :func:`owner_only`); other outputs are readable by collaborators.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
from filelock import FileLock, Timeout

from longalign import paths


class DataError(ValueError):
    """Bad input data; the message names the file and line."""


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary file + rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600 if owner_only(path) else 0o644)  # explicit: mkstemp's 0600 must widen for shared outputs
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def owner_only(path: str | Path) -> bool:
    """True for files under ``outputs/data`` or an API response cache, which get mode 0600 (not 0644)."""
    path = Path(path)
    path = path.parent.resolve() / path.name  # the folder exists by now; resolve links and ".." like paths.* does
    roots = (paths.outputs() / "data", paths.cache() / "llm", paths.cache() / "judge")
    return any(path.is_relative_to(root) for root in roots)


def write_record(path: str | Path, record: dict[str, Any]) -> Path:
    """Atomically write one JSON record (one unit of work) to ``path``."""
    return atomic_write_text(path, json.dumps(record, ensure_ascii=False, indent=1, default=_json_default) + "\n")


def read_record(path: str | Path) -> dict[str, Any]:
    """Read one JSON record; a corrupt file raises DataError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: invalid JSON record ({err.msg})") from err


def record_exists(path: str | Path) -> bool:
    """True when a finished record is already on disk (resume skips it)."""
    return Path(path).is_file()


def load_records(folder: str | Path, pattern: str = "*.json") -> pd.DataFrame:
    """All records under ``folder`` (recursively) as one DataFrame, with a ``_path`` column."""
    rows = []
    for path in sorted(Path(folder).rglob(pattern)):
        row = read_record(path)
        row["_path"] = str(path)
        rows.append(row)
    return pd.DataFrame(rows)


# Characters kept as they are in file names; everything else (and "%" itself) is percent-encoded.
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_MAX_NAME = 160  # bytes of the encoded id; longer ones keep a prefix plus a hash (file names stop at 255)


def record_name(item_id: Any) -> str:
    """Readable, injective file-name stem for an item id: ``[A-Za-z0-9._-]`` kept, all else ``%XX`` (UTF-8).

    A leading ``.`` is encoded too (no hidden files). Over-long ids keep a prefix and end in ``~`` + a
    SHA-1 of the id; ``~`` is never produced by the encoding itself, so the two forms cannot meet.
    """
    text = str(item_id)
    if not text:
        raise ValueError("an empty item id cannot name a record file; give every item a non-empty id")
    name = "".join(_quote(ch) for ch in text)
    if name.startswith("."):
        name = "%2E" + name[1:]
    if len(name) > _MAX_NAME:
        prefix = name[:_MAX_NAME - 41]
        cut = prefix.find("%", len(prefix) - 2)  # never end the prefix inside a %XX escape
        name = (prefix if cut < 0 else prefix[:cut]) + "~" + hashlib.sha1(text.encode()).hexdigest()
    return name


def _quote(ch: str) -> str:
    return ch if not _UNSAFE.match(ch) else "".join(f"%{b:02X}" for b in ch.encode("utf-8"))


def lock_path(target: str | Path) -> Path:
    """The lock file of an output file or records folder: ``.<name>.lock`` beside it."""
    target = Path(target).resolve()
    return target.with_name(f".{target.name}.lock")


@contextlib.contextmanager
def output_lock(target: str | Path, timeout: float | None = None) -> Iterator[Path]:
    """Hold the inter-process write lock of ``target`` (file or records folder); a second writer waits.

    The operating system releases the lock when its holder dies, so a killed run never blocks the
    next one. Resume logic (which records exist) must run *inside* the lock: the waiting writer then
    sees everything the first one wrote and does only what is left. Nested use on the same target in
    one thread is re-entrant (one lock object per path), not a deadlock.
    """
    path = lock_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), is_singleton=True)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"another process is writing {target} (lock {path}); waiting for it to finish ...",
              file=sys.stderr, flush=True)
        try:
            lock.acquire(timeout=-1 if timeout is None else timeout)
        except Timeout:
            raise RuntimeError(f"{target} is still being written by another process after {timeout} s "
                               f"(lock {path}); wait for that run to end or stop it, then rerun") from None
    try:
        yield path
    finally:
        lock.release()


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield objects from a JSONL(.gz) file; malformed lines raise DataError with ``file:line``."""
    for _, obj in read_jsonl_lines(path):
        yield obj


def read_jsonl_lines(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` from a JSONL(.gz) file, so callers can name lines in their errors."""
    path = Path(path)
    # Decode line by line (not through a buffered text stream) so a bad byte names its own line.
    with _open_binary(path) as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{path}:{lineno}: not valid UTF-8 ({err.reason} at byte {err.start})") from err
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}: malformed JSON ({err.msg} at column {err.colno})") from err
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Atomically write rows as JSONL (whole file at once)."""
    text = "".join(json.dumps(r, ensure_ascii=False, default=_json_default) + "\n" for r in rows)
    return atomic_write_text(path, text)


def append_jsonl(path: str | Path, row: dict[str, Any]) -> None:
    """Append one row as a single write + fsync (append-only logs; a crash loses at most a partial last line).

    :func:`owner_only` paths get 0600 whatever the umask; other new files get the umask's mode,
    not the 0644 of the atomic writes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(row, ensure_ascii=False, default=_json_default) + "\n"
    private = owner_only(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600 if private else 0o666)
    if private:
        os.fchmod(fd, 0o600)  # whatever the umask, and narrowing a file an older version left 0644
    with os.fdopen(fd, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy / torch arrays and scalars
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
