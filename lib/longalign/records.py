"""Result records and JSONL I/O: atomic writes, one record per unit of work, errors that name file and line.

Every long job (API generation, judging, sweeps, training) writes one JSON file per finished unit
with :func:`write_record`; a rerun asks :func:`record_exists` and skips what is done. Plots read a
folder of records back with :func:`load_records`.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd


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
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; outputs are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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
    """Append one row as a single write + fsync (append-only logs; a crash loses at most a partial last line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(row, ensure_ascii=False, default=_json_default) + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy / torch arrays and scalars
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
