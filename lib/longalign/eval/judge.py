"""Judges: score a model's answer against a reference on a fixed scale.

The paper's benchmarks are rated by ``gpt-4`` (the official ``LongBench_Chat/eval.py`` and
``Needle_test/config-eval.yaml`` both name it, and appendix C.1's $0.96 for a ~32k-token run is
gpt-4's $30 per million input tokens). LLM judges (``openai`` / ``anthropic`` / ``local`` through
:class:`longalign.llm.LLMClient`) reply in free text with the rating in ``[[n]]``, parsed as the
official LongBench-Chat script does. The ``overlap`` judge is the cpu profile's offline proxy (token
F1 against the reference on the judge scale) so the pipeline runs without a network; its numbers
are not GPT-4 numbers. Every verdict is one resumable record, and one :class:`longalign.llm.Budget`
caps what a whole sweep may spend.
"""

from __future__ import annotations

import json
import math
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from longalign import paths
from longalign.llm import Budget, LLMClient, LLMError, normalize_messages, require_price
from longalign.records import output_lock, record_exists, record_name, write_record

# Official LongBench_Chat/eval.py: last "[[...]]" group, then the first number inside it.
_BRACKETS = re.compile(r"\[\[([^\]]+)\]\]")
_NUMBER = re.compile(r"\d+\.\d+|\d+")


def parse_rating(text: str | None) -> float:
    """The rating in the last ``[[...]]`` of ``text`` (first number inside it); NaN when there is none."""
    if not text:
        return math.nan
    groups = _BRACKETS.findall(text)
    if not groups:
        return math.nan
    numbers = _NUMBER.findall(groups[-1])  # the official script fails (→ retry) when the last group has no number
    return float(numbers[0]) if numbers else math.nan


# -- offline proxy judge ------------------------------------------------------------------------

_PUNCT = set(string.punctuation) | {"，", "。", "！", "？", "：", "；", "、", "“", "”", "‘", "’", "（", "）", "《", "》", "【", "】", "…", "—"}
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def _is_cjk(ch: str) -> bool:
    """CJK ideographs, kana and hangul: scripts written without spaces, so each character is a token."""
    code = ord(ch)
    return (0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0x20000 <= code <= 0x2A6DF
            or 0xF900 <= code <= 0xFAFF or 0x3040 <= code <= 0x30FF or 0xAC00 <= code <= 0xD7AF)


def overlap_tokens(text: str) -> list[str]:
    """SQuAD/LongBench-style normalisation (lowercase, no punctuation/articles), CJK split per character."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if (ch in _PUNCT or unicodedata.category(ch).startswith("P")) else ch for ch in text)
    text = _ARTICLES.sub(" ", text)
    tokens: list[str] = []
    for word in text.split():
        buf = ""
        for ch in word:
            if _is_cjk(ch):
                tokens += [buf] if buf else []
                tokens.append(ch)
                buf = ""
            else:
                buf += ch
        tokens += [buf] if buf else []
    return tokens


def token_f1(answer: str, reference: str) -> float:
    """Token-level F1 between the normalised answer and reference (0 when either is empty)."""
    pred, gold = overlap_tokens(answer), overlap_tokens(reference)
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def overlap_score(answer: str, reference: str, low: float = 1.0, high: float = 10.0) -> float:
    """Offline proxy judge: ``low + (high - low) * F1`` (1 + 9·F1 on the LongBench-Chat 1-10 scale)."""
    return low + (high - low) * token_f1(answer, reference)


# -- judges ---------------------------------------------------------------------------------------

JUDGE_KINDS = ("openai", "anthropic", "local", "overlap")
RATING_MODES = ("generate", "logprob")
RATING_PREFIX = "Rating: [["
# The system prompt of the official LongBench-Chat (and THUDM LongBench) GPT-4 judge scripts.
JUDGE_SYSTEM = "You're a good assistant at evaluating the quality of texts."


@dataclass
class JudgeRequest:
    """One answer to rate: the judge prompt for LLM judges, answer + reference for the overlap proxy."""

    item_id: str
    prompt: str
    answer: str
    reference: str | None
    low: float = 1.0
    high: float = 10.0
    system: str | None = JUDGE_SYSTEM
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Verdict:
    """A judge's rating of one request (NaN score when no rating could be parsed or the call failed)."""

    score: float
    raw: str
    attempts: int
    parse_failed: bool = False
    error: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


class Judge:
    """A rating judge: an LLM behind :class:`LLMClient` (``openai``/``anthropic``/``local``) or ``overlap``.

    The clients of all scoring runs share one :class:`longalign.llm.Budget`, so ``max_cost_usd`` is
    a hard cap on everything the judge sends: a sweep stops (``BudgetExceeded``) before a request
    could pass it, and a bad key, wrong ``base_url`` or unreachable server stops it at the first
    request (``FatalAPIError``). A ``local`` judge can rate by probability (``rating="logprob"``,
    :func:`expected_rating`): small local models rarely write a parseable ``[[n]]`` when
    generating freely, and this always yields a rating.
    """

    def __init__(self, kind: str, model: str | None = None, *, base_url: str | None = None,
                 concurrency: int = 4, max_attempts: int = 3, max_tokens: int = 1024,
                 cache_dir: str | Path | None = None, max_cost_usd: float | None = None,
                 local_model: Any = None, timeout_s: float = 120.0, max_retries: int = 6,
                 backoff_s: float = 1.0, rating: str = "generate", prices: dict[str, Any] | None = None):
        if kind not in JUDGE_KINDS:
            raise ValueError(f"unknown judge {kind!r}; expected one of {JUDGE_KINDS}")
        if rating not in RATING_MODES or (rating == "logprob" and kind != "local"):
            raise ValueError(f"rating {rating!r}: choose from {RATING_MODES}; 'logprob' needs the local judge")
        self.rating = rating
        if kind in ("openai", "anthropic") and not model:
            raise ValueError(f"judge {kind!r} needs a model name (judge_model; the paper's judge is gpt-4)")
        if kind in ("openai", "anthropic"):
            require_price(model, prices)  # fail here, before any answer is generated, naming `prices`
        self.kind, self.model = kind, model or ("smollm2" if kind == "local" else kind)
        # Greedy local decoding gives the same text every time: re-asking it cannot help.
        self.max_attempts = 1 if kind == "local" else max(1, max_attempts)
        self.max_tokens = max_tokens
        self.cache_dir = Path(cache_dir) if cache_dir is not None else paths.cache() / "judge"
        # Local generation has no transient faults to wait out (and greedy output never changes).
        self._client_kwargs = dict(base_url=base_url, concurrency=concurrency, timeout_s=timeout_s,
                                   max_retries=0 if kind == "local" else max_retries, budget=Budget(max_cost_usd),
                                   local_model=local_model, backoff_s=backoff_s, prices=prices)
        self._clients: dict[int, LLMClient] = {}

    @property
    def stats(self) -> dict[str, float]:
        """Billed tokens and USD over every run's client (empty and unparseable replies included)."""
        keys = ("cost_usd", "cost_unknown_usd", "input_tokens", "output_tokens")
        return {k: sum(c.stats[k] for c in self._clients.values()) for k in keys}

    @property
    def name(self) -> str:
        """Folder-safe judge name, e.g. ``overlap`` or ``openai-gpt-4-1106-preview``."""
        if self.kind == "overlap":
            return "overlap"
        kind = f"{self.kind}-logprob" if self.rating == "logprob" else self.kind
        return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{kind}-{Path(str(self.model)).name}")

    def client(self, run: int) -> LLMClient:
        """The LLM client of scoring run ``run``: each run has its own response cache (independent repeats)."""
        if self.kind == "overlap":
            raise ValueError("the overlap judge makes no LLM calls")
        if run not in self._clients:
            # A shared cache would hand run 2 the answers of run 1; a per-run cache keeps resume exact.
            self._clients[run] = LLMClient(self.kind, self.model, cache_dir=self.cache_dir / self.name / f"run{run}",
                                           **self._client_kwargs)
        return self._clients[run]

    def judge_many(self, requests: list[JudgeRequest], run: int = 0, desc: str = "judge") -> Iterator[tuple[int, Verdict]]:
        """Yield ``(index, Verdict)`` for every request (any order); unparseable replies are re-asked."""
        if self.kind == "overlap" or self.rating == "logprob":
            rate = self._overlap if self.kind == "overlap" else self._logprob
            for i, req in enumerate(tqdm(requests, desc=desc, disable=len(requests) < 50)):
                yield i, rate(req)
            return
        pending = list(range(len(requests)))
        spent: dict[int, Verdict] = {}
        for attempt in range(self.max_attempts):
            pending = yield from self._attempt(requests, pending, spent, attempt, run, f"{desc} (try {attempt + 1})")
            if not pending:
                return
        for i in pending:  # still no [[n]] after every attempt: NaN, flagged, never a silent score
            yield i, spent[i]

    def _overlap(self, req: JudgeRequest) -> Verdict:
        if not req.reference:
            return Verdict(math.nan, "", 0, error="no reference answer: the overlap proxy cannot rate this item")
        score = overlap_score(req.answer, req.reference, req.low, req.high)
        return Verdict(score, f"[[{score:.4f}]]", 1)

    def _logprob(self, req: JudgeRequest) -> Verdict:
        model, tok = self.client(0).local_pair()  # deterministic: every run gives the same rating
        msgs = normalize_messages(req.prompt, req.system)
        score, probs = expected_rating(model, tok, msgs, int(req.low), int(req.high))
        return Verdict(score, json.dumps({"expected": score, "p": probs}), 1)

    def _attempt(self, requests, pending, spent, attempt, run, desc):
        """One pass over ``pending``; yields final verdicts, returns the indices to re-ask."""
        client = self.client(run)
        # A retry at the same temperature would only hit the response cache: warm it up a little.
        temperature = min(1.0, 0.3 * attempt)
        calls = [dict(messages=requests[i].prompt, system=requests[i].system, max_tokens=self.max_tokens,
                      temperature=temperature) for i in pending]
        if attempt == 0 and calls:
            client.check_budget(calls, expected_output_tokens=min(self.max_tokens, 256))
        retry = []
        for j, result in client.complete_many(calls, desc=desc):  # raises when the job must stop (cap, bad key)
            i = pending[j]
            verdict = self._verdict(result, attempt, spent.get(i))
            if verdict.parse_failed and attempt + 1 < self.max_attempts:
                spent[i] = verdict
                retry.append(i)
                continue
            yield i, verdict
        return retry

    def _verdict(self, result: Any, attempt: int, previous: Verdict | None) -> Verdict:
        """The verdict of one reply (or failure), carrying what every attempt so far was billed."""
        tokens = (previous.input_tokens, previous.output_tokens, previous.cost_usd) if previous else (0, 0, 0.0)
        if isinstance(result, LLMError):
            tokens = (tokens[0] + result.input_tokens, tokens[1] + result.output_tokens, tokens[2] + result.billed_usd)
        billed = dict(input_tokens=tokens[0], output_tokens=tokens[1], cost_usd=tokens[2])
        if isinstance(result, LLMError) and result.kind == "empty":
            # Still empty after every transport retry: the judge gave no rating, like an unparseable reply.
            return Verdict(math.nan, "", attempt + 1, parse_failed=True, **billed)
        if isinstance(result, Exception):
            return Verdict(math.nan, "", attempt + 1, error=f"{type(result).__name__}: {result}", **billed)
        score = parse_rating(result.text)
        return Verdict(score, result.text, attempt + 1, parse_failed=math.isnan(score),
                       input_tokens=tokens[0] + result.input_tokens, output_tokens=tokens[1] + result.output_tokens,
                       cost_usd=tokens[2] + result.cost_usd)


def expected_rating(model: Any, tokenizer: Any, messages: list[dict[str, str]], low: int = 1,
                    high: int = 10) -> tuple[float, dict[str, float]]:
    """Σ k·P(k) over k = low..high, P(k) ∝ P("k]]" | chat prompt + "Rating: [["); returns (score, {k: P(k)}).

    The reply is prefilled with ``Rating: [[`` and the score is the expected rating under the
    model's probabilities, as in G-Eval; the distribution is recorded with the verdict.
    """
    import torch

    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) + RATING_PREFIX
    prefix = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ratings = list(range(low, high + 1))
    # whole continuations, not first tokens: "10" may share its first token with "1"
    conts = [tokenizer(f"{k}]]", add_special_tokens=False)["input_ids"] for k in ratings]
    width = len(prefix) + max(len(c) for c in conts)
    ids = torch.zeros(len(conts), width, dtype=torch.long)
    for row, c in enumerate(conts):
        ids[row, :len(prefix) + len(c)] = torch.tensor(prefix + c)
    with torch.no_grad():  # right padding: positions before each row's end never see it
        logp = torch.log_softmax(model(input_ids=ids, use_cache=False).logits.float(), dim=-1)
    scores = torch.stack([sum(logp[row, len(prefix) + j - 1, t] for j, t in enumerate(c))
                          for row, c in enumerate(conts)])
    probs = torch.softmax(scores, dim=0)
    return float((probs * torch.tensor(ratings, dtype=probs.dtype)).sum()), \
        {str(k): round(float(p), 6) for k, p in zip(ratings, probs)}


# -- resumable sweeps over records -----------------------------------------------------------------


def record_path(benchmark: str, judge_name: str, model_tag: str, item_id: str, run: int) -> Path:
    """``outputs/results/<benchmark>/<judge>/<model_tag>/<record_name(item_id)>-run<k>.json`` (distinct ids, distinct files)."""
    return sweep_dir(benchmark, judge_name, model_tag) / f"{record_name(item_id)}-run{run}.json"


def sweep_dir(benchmark: str, judge_name: str, model_tag: str) -> Path:
    """``outputs/results/<benchmark>/<judge>/<model_tag>``: the records (and write lock) of one sweep."""
    return paths.results_dir(benchmark) / judge_name / model_tag


def judge_sweep(judge: Judge, requests: list[JudgeRequest] | Callable[[int], list[JudgeRequest]], *,
                benchmark: str, model_tag: str, runs: int = 2, meta: dict[str, Any] | None = None) -> dict[str, int]:
    """Rate every request ``runs`` times, one record each; finished records are skipped. Returns counts.

    ``requests`` may be a function of the run index, for prompts that change between runs
    (LongBench-Chat reshuffles its few-shot examples).
    """
    counts = {"judged": 0, "skipped": 0, "nan": 0, "failed": 0}
    # A second sweep of the same (judge, model) waits, then skips what the first one recorded.
    with output_lock(sweep_dir(benchmark, judge.name, model_tag)):
        for run in range(runs):
            batch = requests(run) if callable(requests) else requests
            todo = [r for r in batch if not record_exists(record_path(benchmark, judge.name, model_tag, r.item_id, run))]
            counts["skipped"] += len(batch) - len(todo)
            if todo:
                _judge_run(judge, todo, run, benchmark, model_tag, meta or {}, counts)
    if counts["nan"] or counts["failed"]:
        print(f"[{benchmark}/{model_tag}] {counts['nan']} unparseable rating(s) recorded as NaN, "
              f"{counts['failed']} request(s) failed (no record; rerun to retry)")
    return counts


def _judge_run(judge: Judge, todo: list[JudgeRequest], run: int, benchmark: str, model_tag: str,
               meta: dict[str, Any], counts: dict[str, int]) -> None:
    """Rate ``todo`` once (scoring run ``run``), writing one record per verdict and updating ``counts``."""
    for i, verdict in judge.judge_many(todo, run=run, desc=f"{benchmark}/{model_tag} run {run}"):
        if verdict.error is not None and judge.kind != "overlap":
            counts["failed"] += 1  # transport failure: no record, so a rerun asks again
            continue
        _write_verdict(judge, todo[i], verdict, benchmark, model_tag, run, meta)
        counts["judged"] += 1
        counts["nan"] += math.isnan(verdict.score)


def _write_verdict(judge: Judge, req: JudgeRequest, verdict: Verdict, benchmark: str, model_tag: str,
                   run: int, meta: dict[str, Any]) -> None:
    record = {**meta, **req.extra, "benchmark": benchmark, "model_tag": model_tag, "item_id": req.item_id,
              "run": run, "judge": judge.name, "judge_kind": judge.kind, "judge_model": judge.model,
              "scale_low": req.low, "scale_high": req.high, **asdict(verdict), "answer": req.answer}
    record["score"] = None if math.isnan(verdict.score) else verdict.score  # JSON has no NaN
    write_record(record_path(benchmark, judge.name, model_tag, req.item_id, run), record)


# -- summaries ---------------------------------------------------------------------------------------


def item_scores(records: pd.DataFrame) -> pd.DataFrame:
    """Per (benchmark, judge, model, item): mean over runs of the parsed scores, and how many were NaN."""
    df = records.copy()
    df["score"] = pd.to_numeric(df["score"], errors="coerce")
    keys = ["benchmark", "judge", "model_tag", "item_id"]
    out = df.groupby(keys, dropna=False).agg(score=("score", "mean"), runs=("run", "nunique"),
                                             n_nan=("score", lambda s: int(s.isna().sum())))
    return out.reset_index()


def summarise(records: pd.DataFrame) -> pd.DataFrame:
    """Per (benchmark, judge, model): mean item score (items averaged over runs), items, NaN ratings, std over runs."""
    items = item_scores(records)
    df = records.copy()
    df["score"] = pd.to_numeric(df["score"], errors="coerce")
    per_run = df.groupby(["benchmark", "judge", "model_tag", "run"])["score"].mean()
    run_std = per_run.groupby(level=[0, 1, 2]).std(ddof=0).rename("std_over_runs")
    out = items.groupby(["benchmark", "judge", "model_tag"]).agg(
        score=("score", "mean"), n_items=("item_id", "nunique"), n_nan=("n_nan", "sum"),
        sem=("score", lambda s: float(s.std(ddof=1) / math.sqrt(s.count())) if s.count() > 1 else math.nan))
    return out.join(run_std).reset_index()


def results_table(*summaries: pd.DataFrame, order: list[str] | None = None) -> pd.DataFrame:
    """A Table 3-style grid: one row per model, one column per benchmark (score), from summary frames."""
    frames = [s[["model_tag", "benchmark", "score"]] for s in summaries if s is not None and len(s)]
    if not frames:
        return pd.DataFrame()
    table = pd.concat(frames).pivot_table(index="model_tag", columns="benchmark", values="score", aggfunc="mean")
    if order:
        table = table[[c for c in order if c in table.columns] + [c for c in table.columns if c not in order]]
    return table
