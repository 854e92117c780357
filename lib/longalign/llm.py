"""One client layer for every LLM call (data generation and judges): Anthropic, OpenAI(-compatible), local, offline.

Paid generation and judging must be resumable, cheap to rerun and impossible to overspend, so every
backend shares one machinery: retries with backoff for transient failures, an on-disk response
cache keyed by (backend, base_url, model, messages, params), accounting from the provider's billed
usage, and a hard ``max_cost_usd`` cap that holds with any concurrency and across clients sharing
a :class:`Budget` (each attempt's worst-case cost is reserved before it is sent). Failures no retry
can fix stop the job at once with a :class:`FatalAPIError` saying what to do. API keys come only
from ``ANTHROPIC_API_KEY`` / ``OPENAI_API_KEY`` and are scrubbed from every error this module raises.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from longalign import paths
from longalign.records import DataError, read_record, write_record

BACKENDS = ("anthropic", "openai", "local", "offline")
KEY_ENV = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}
PAID_BACKENDS = ("anthropic", "openai")

# USD per million tokens (input, output); matched by longest model-name prefix. Override with prices=.
PRICES: dict[str, tuple[float, float]] = {
    "claude-2": (8.0, 24.0),
    "claude-instant": (0.8, 2.4),
    "claude-3-opus": (15.0, 75.0),
    "claude-3-sonnet": (3.0, 15.0),
    "claude-3-haiku": (0.25, 1.25),
    "claude-3-5-sonnet": (3.0, 15.0),
    "claude-3-5-haiku": (0.8, 4.0),
    "claude-3-7-sonnet": (3.0, 15.0),
    "claude-sonnet-4": (3.0, 15.0),
    "claude-opus-4": (15.0, 75.0),
    "claude-haiku-4": (1.0, 5.0),
    "gpt-3.5-turbo": (0.5, 1.5),
    "gpt-4": (30.0, 60.0),
    "gpt-4-32k": (60.0, 120.0),
    "gpt-4-turbo": (10.0, 30.0),
    "gpt-4-1106": (10.0, 30.0),
    "gpt-4o": (2.5, 10.0),
    "gpt-4o-mini": (0.15, 0.6),
    "gpt-4.1": (2.0, 8.0),
    "gpt-4.1-mini": (0.4, 1.6),
}
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504, 529}
FATAL_STATUS = {401: "auth", 403: "forbidden", 404: "not_found"}
MESSAGE_TOKENS = 16  # per-message allowance for roles and chat framing in the worst-case input count
_KEYLIKE = re.compile(r"\bsk-[\w*\-]{8,}")  # provider echoes of a key, masked or not ("sk-proj-****abcd")


class LLMError(RuntimeError):
    """A request failed for good (after retries, or a non-retryable error); message has keys scrubbed.

    ``kind`` is the error class (see :func:`error_class`); ``billed_usd`` / ``input_tokens`` /
    ``output_tokens`` are what the provider billed for the failed request's attempts.
    """

    def __init__(self, message: str, *, kind: str = "other", billed_usd: float = 0.0, input_tokens: int = 0,
                 output_tokens: int = 0):
        super().__init__(message)
        self.kind, self.billed_usd = kind, billed_usd
        self.input_tokens, self.output_tokens = input_tokens, output_tokens


class BudgetExceeded(LLMError):
    """Sending the next request could take spend past ``max_cost_usd``: the job stops."""


class FatalAPIError(LLMError):
    """A failure no retry can fix (bad key, no access, wrong ``base_url``, nothing listening): the job stops.

    Raised at the first 401/403/404, missing key, invalid ``base_url``, or refused connection /
    unknown host before any request has succeeded; the message names the provider, ``base_url`` and
    the key's environment variable (never its value) and what to do.
    """


class EmptyCompletion(LLMError):
    """The model returned no text (retried like a transient error)."""


STOPS_JOB = (BudgetExceeded, FatalAPIError)


@dataclass
class Completion:
    """One model answer with its accounting."""

    text: str
    input_tokens: int
    output_tokens: int
    cost_usd: float
    cached: bool
    model: str


def scrub(text: str) -> str:
    """``text`` with API-key values (and key-like ``sk-...`` strings a provider echoes) replaced by ``***``."""
    for env in KEY_ENV.values():
        key = os.environ.get(env)
        if key and len(key) >= 8:
            text = text.replace(key, "***")
    return _KEYLIKE.sub("sk-***", text)


def normalize_messages(messages: str | list[dict[str, str]], system: str | None = None) -> list[dict[str, str]]:
    """Chat messages as a list of ``{role, content}``; a str is one user turn; ``system`` goes first."""
    msgs = [{"role": "user", "content": messages}] if isinstance(messages, str) else [dict(m) for m in messages]
    for i, m in enumerate(msgs):
        if set(m) != {"role", "content"} or m["role"] not in ("system", "user", "assistant"):
            raise ValueError(f"message {i} must be {{role: system|user|assistant, content: str}}, got keys {sorted(m)}")
    if system:
        msgs = [{"role": "system", "content": system}] + [m for m in msgs if m["role"] != "system"]
    return msgs


def approx_tokens(text: str) -> int:
    """Rough token count for cost estimates (UTF-8 bytes / 4: ~4 chars per English token, ~1.3 CJK chars)."""
    return math.ceil(len(text.encode("utf-8")) / 4)


def max_input_tokens(messages: list[dict[str, str]]) -> int:
    """Upper bound on billed input tokens: one per UTF-8 byte plus ``MESSAGE_TOKENS`` per message and for the reply."""
    return sum(len(m["content"].encode("utf-8")) + MESSAGE_TOKENS for m in messages) + MESSAGE_TOKENS


def price_for(model: str, prices: dict[str, Any] | None = None) -> tuple[float, float] | None:
    """(input, output) USD per million tokens for ``model`` by longest prefix match, or None if unknown."""
    table = {**PRICES, **(prices or {})}
    matches = [k for k in table if model.startswith(k)]
    if not matches:
        return None
    price_in, price_out = table[max(matches, key=len)]
    return float(price_in), float(price_out)


def require_price(model: str, prices: dict[str, Any] | None = None) -> tuple[float, float]:
    """The price of a paid ``model``, or a ValueError telling how to set it with the ``prices`` parameter."""
    price = price_for(model, prices)
    if price is None:
        raise ValueError(f"no price known for model {model!r}: set the `prices` parameter, e.g. "
                         f"prices = {{{model!r}: [input_usd, output_usd]}} in USD per million tokens "
                         "([0, 0] for a free self-hosted server)")
    return price


def error_class(err: Exception) -> str:
    """Short class of an API error for counts: ``auth``, ``rate_limit``, ``server``, ``timeout``, ``connect``, ..."""
    if isinstance(err, LLMError) and type(err) is not LLMError:
        return {BudgetExceeded: "budget", EmptyCompletion: "empty"}.get(type(err), err.kind)
    status = getattr(err, "status_code", None)
    if isinstance(status, int):
        named = {**FATAL_STATUS, 429: "rate_limit", 529: "overloaded"}
        return named.get(status, "server" if status >= 500 else f"http_{status}")
    names = _error_names(err)
    if names & {"APITimeoutError", "ReadTimeout", "TimeoutException"} or isinstance(err, TimeoutError):
        return "timeout"
    if names & {"ConnectError", "UnsupportedProtocol", "InvalidURL"}:
        return "connect"
    if names & {"APIResponseValidationError", "JSONDecodeError", "RemoteProtocolError"}:
        return "malformed"
    if names & {"APIConnectionError"} or isinstance(err, ConnectionError):
        return "connection"
    return f"other:{type(err).__name__}"


class Budget:
    """A spending cap that clients share: billed + unknown bills + reservations never pass ``max_cost_usd``.

    One per job: a judge's per-run clients share one, so ``max_cost_usd`` caps the whole sweep.
    Before an attempt is sent its worst case (:meth:`LLMClient.worst_case_cost`) is reserved under a
    lock; one that would take the total past the cap is not sent (``BudgetExceeded``). When the
    answer arrives the reservation is replaced by the provider's bill (``usage``; empty answers
    included); a timeout or unreadable body may still have been billed, so it keeps its whole
    reservation as spent. Billed spend therefore never exceeds the cap while each bill stays within
    its reservation.
    """

    def __init__(self, max_cost_usd: float | None = None):
        self.max_cost_usd = max_cost_usd
        self.billed, self.unknown, self.reserved = 0.0, 0.0, 0.0
        self._lock = threading.Lock()

    def reserve(self, cost: float, who: str) -> None:
        """Hold ``cost`` for a request about to be sent, or raise BudgetExceeded (then nothing is sent)."""
        with self._lock:
            cap = self.max_cost_usd
            if cap is not None and self.billed + self.unknown + self.reserved + cost > cap:
                raise BudgetExceeded(
                    f"[{who}] stopping before the cap: billed ${self.billed:.4f} + unknown bills ${self.unknown:.4f}"
                    f" + ${self.reserved:.4f} reserved in flight + this request's worst case ${cost:.4f} would "
                    f"exceed max_cost_usd=${cap:.4f}. Finished work is kept and cached; raise max_cost_usd and "
                    "rerun to continue.", kind="budget")
            self.reserved += cost

    def settle(self, reserved: float, billed: float, unknown: float = 0.0) -> None:
        """Replace a reservation by the provider's bill (``unknown``: the worst case kept for an unknown bill)."""
        with self._lock:
            self.reserved -= reserved
            self.billed += billed
            self.unknown += unknown


class LLMClient:
    """Chat completions with retries, cache, accounting and a hard cost cap, for one backend + model."""

    def __init__(self, backend: str, model: str, *, base_url: str | None = None, concurrency: int = 4,
                 max_retries: int = 6, timeout_s: float = 120.0, cache_dir: str | Path | None = None,
                 max_cost_usd: float | None = None, prices: dict[str, Any] | None = None,
                 offline_fn: Callable[[list[dict[str, str]]], str] | None = None, local_model: Any = None,
                 backoff_s: float = 1.0, max_backoff_s: float = 60.0, seed: int = 0, budget: Budget | None = None):
        _check_backend(backend, base_url, offline_fn)
        if not model:  # e.g. an unset judge_model: say so here, not as "no price known for model None"
            raise ValueError(f"backend {backend!r} needs a model name, got {model!r} (the model / judge_model parameter)")
        self.backend, self.model, self.base_url = backend, model, base_url
        self.concurrency, self.max_retries, self.timeout_s = max(1, concurrency), max_retries, timeout_s
        self.cache_dir = Path(cache_dir) if cache_dir is not None else paths.cache() / "llm"
        self.prices = prices
        if budget is not None and max_cost_usd is not None:
            raise ValueError("give max_cost_usd or a shared budget=Budget(max_cost_usd), not both")
        self.budget = budget if budget is not None else Budget(max_cost_usd)
        # Paid backends need a price up front: the cap and the accounting depend on it.
        self.price = require_price(model, prices) if backend in PAID_BACKENDS else (0.0, 0.0)
        self.offline_fn, self.backoff_s, self.max_backoff_s = offline_fn, backoff_s, max_backoff_s
        self._local = local_model
        self._sdk = None
        self._lock = threading.Lock()
        self._local_lock = threading.Lock()  # one generate() at a time: torch already uses all cores
        self._rng = random.Random(seed)
        self._overrun, self._answered, self._fatal = 1.0, False, None
        self._private_dirs: set[Path] = set()
        self.errors: dict[str, dict[str, Any]] = {}  # class -> {count, failed, example}
        self.stats = {"requests": 0, "api_calls": 0, "retries": 0, "cache_hits": 0, "failures": 0,
                      "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0, "cost_unknown_usd": 0.0}

    @property
    def max_cost_usd(self) -> float | None:
        """The hard cap of this client's :class:`Budget` (None: no cap)."""
        return self.budget.max_cost_usd

    @max_cost_usd.setter
    def max_cost_usd(self, value: float | None) -> None:
        self.budget.max_cost_usd = value

    def __repr__(self) -> str:
        return f"LLMClient(backend={self.backend!r}, model={self.model!r}, base_url={self.base_url!r})"

    # ---- public API -------------------------------------------------------------------------
    def complete(self, messages: str | list[dict[str, str]], *, system: str | None = None,
                 max_tokens: int = 1024, temperature: float = 0.0) -> Completion:
        """One chat completion (cached; retried on transient errors; raises LLMError when it gives up)."""
        msgs = normalize_messages(messages, system)
        params = {"max_tokens": max_tokens, "temperature": temperature}
        key = self.cache_key(msgs, params)
        self._count(requests=1)
        hit = self._cache_get(key)
        if hit is not None:
            self._count(cache_hits=1)
            return hit
        if self._fatal is not None:  # an earlier request hit a failure no retry can fix: send nothing more
            raise FatalAPIError(str(self._fatal), kind=self._fatal.kind) from None
        comp = self._with_retries(msgs, params)
        self._cache_put(key, comp)
        return comp

    def complete_many(self, requests: Iterable[Any], desc: str = "llm") -> Iterator[tuple[int, Completion | Exception]]:
        """Yield ``(index, Completion | Exception)`` in completion order, ``concurrency`` requests in flight.

        A request is a str, a list of messages, or a dict of :meth:`complete` keyword arguments
        (``messages`` plus optional ``system``, ``max_tokens``, ``temperature``).
        """
        yield from self.map_concurrent(self._complete_request, requests, desc=desc)

    def map_concurrent(self, fn: Callable[[Any], Any], items: Iterable[Any], desc: str = "llm") -> Iterator[tuple[int, Any]]:
        """Run ``fn(item)`` on threads, ``concurrency`` at a time; yield ``(index, result | Exception)`` as each ends.

        A job-stopping error (``BudgetExceeded``, ``FatalAPIError``) ends the job: nothing new is
        started, the calls in flight finish and are yielded, then the error is raised. The errors of
        the job are printed by class at the end.
        """
        before = {k: dict(v) for k, v in self.errors.items()}
        try:
            yield from self._run_pool(fn, list(items), desc)
        finally:
            self.print_errors(before)

    def _run_pool(self, fn: Callable[[Any], Any], items: list[Any], desc: str) -> Iterator[tuple[int, Any]]:
        stop: Exception | None = None
        with ThreadPoolExecutor(self.concurrency) as pool, tqdm(total=len(items), desc=desc) as bar:
            queue = iter(enumerate(items))
            pending = {pool.submit(fn, item): i for i, item in _take(queue, self.concurrency)}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    i, err = pending.pop(fut), fut.exception()
                    bar.update(1)
                    if isinstance(err, STOPS_JOB):
                        stop = stop or err
                        continue
                    yield i, (err if err is not None else fut.result())
                    for j, item in ([] if stop else _take(queue, 1)):
                        pending[pool.submit(fn, item)] = j
        if stop is not None:
            raise stop

    def error_report(self, since: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
        """Errors by class ``{count, failed, example}`` (attempts, requests given up, one scrubbed message)."""
        since = since or {}
        out = {}
        for kind, rec in self.errors.items():
            old = since.get(kind, {"count": 0, "failed": 0})
            if rec["count"] > old["count"]:
                out[kind] = {"count": rec["count"] - old["count"], "failed": rec["failed"] - old["failed"],
                             "example": rec["example"]}
        return out

    def print_errors(self, since: dict[str, dict[str, Any]] | None = None) -> None:
        """Print the error counts by class with one example each (nothing when there were none)."""
        report = self.error_report(since)
        if report:
            lines = [f"  {kind}: {r['count']} attempt(s), {r['failed']} request(s) given up; e.g. {r['example']}"
                     for kind, r in sorted(report.items())]
            print(f"[{self.backend}:{self.model}] API errors by class:", *lines, sep="\n")

    def estimate_cost(self, requests: Iterable[Any], expected_output_tokens: int = 512) -> float:
        """Expected USD for ``requests`` not yet cached (0 for local/offline), for the printout before a job."""
        if self.backend not in PAID_BACKENDS:
            return 0.0
        total = 0.0
        for req in requests:
            kwargs = _request_kwargs(req)
            msgs = normalize_messages(kwargs["messages"], kwargs.get("system"))
            params = {"max_tokens": kwargs.get("max_tokens", 1024), "temperature": kwargs.get("temperature", 0.0)}
            if self._cache_get(self.cache_key(msgs, params)) is not None:
                continue
            n_in = sum(approx_tokens(m["content"]) + 4 for m in msgs)
            total += self._cost(n_in, min(expected_output_tokens, params["max_tokens"]))
        return total

    def check_budget(self, requests: Iterable[Any], expected_output_tokens: int = 512) -> float:
        """Print the cost estimate; raise BudgetExceeded before spending if it exceeds what is left of the cap."""
        est = self.estimate_cost(requests, expected_output_tokens)
        cap = self.max_cost_usd
        spent = self.budget.billed + self.budget.unknown
        print(f"[{self.backend}:{self.model}] estimated cost of uncached requests: ${est:.4f} "
              f"({'no cap' if cap is None else f'cap ${cap:.2f}, ${spent:.4f} spent so far'})")
        if cap is not None and est > cap - spent:
            raise BudgetExceeded(f"estimated cost ${est:.4f} exceeds what is left of max_cost_usd=${cap:.4f} "
                                 f"(${spent:.4f} already spent): raise max_cost_usd or ask for less", kind="budget")
        return est

    def worst_case_cost(self, messages: list[dict[str, str]], max_tokens: int) -> float:
        """USD reserved before sending: :func:`max_input_tokens` in, ``max_tokens`` out, times any observed overrun.

        One input token per UTF-8 byte (a byte-level BPE never makes more tokens than bytes; for
        English about 4x the expected count, slack for a provider counting more). Should a provider
        ever bill more than reserved, later reservations grow by 1.25x the observed ratio, so only
        attempts already in flight can overshoot.
        """
        return self._cost(max_input_tokens(messages), max_tokens) * self._overrun

    def cache_key(self, messages: list[dict[str, str]], params: dict[str, Any]) -> str:
        """sha256 of (backend, base_url, model, messages, params): two servers never share answers."""
        blob = json.dumps([self.backend, self.base_url or "", self.model, messages, params], ensure_ascii=False,
                          sort_keys=True)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    # ---- retries, spending, errors ---------------------------------------------------------------
    def _complete_request(self, req: Any) -> Completion:
        return self.complete(**_request_kwargs(req))

    def _with_retries(self, msgs: list[dict[str, str]], params: dict[str, Any]) -> Completion:
        billed = Completion("", 0, 0, 0.0, False, self.model)  # what every attempt of this request was billed
        for attempt in range(self.max_retries + 1):
            try:
                comp = self._attempt(msgs, params, billed)
                if comp.text.strip():  # the answer, with what all its attempts were billed (empty ones too)
                    return Completion(comp.text, billed.input_tokens, billed.output_tokens, billed.cost_usd,
                                      False, comp.model)
                raise EmptyCompletion(f"{self.model} returned an empty completion")
            except BudgetExceeded:
                raise
            except Exception as err:  # noqa: BLE001 — classified in _after_failure
                time.sleep(self._after_failure(err, attempt, billed))
        raise AssertionError("unreachable")

    def _attempt(self, msgs: list[dict[str, str]], params: dict[str, Any], billed: Completion) -> Completion:
        """One HTTP attempt: reserve its worst case, send, settle to the bill (or keep the reservation if unknown)."""
        reserved = self._reserve(msgs, params["max_tokens"])
        self._count(api_calls=1)
        try:
            comp = self._call_backend(msgs, params)
        except Exception as err:
            self._settle(reserved, None, unknown=_maybe_billed(err))
            raise
        self._settle(reserved, comp)
        billed.input_tokens += comp.input_tokens
        billed.output_tokens += comp.output_tokens
        billed.cost_usd += comp.cost_usd
        return comp

    def _reserve(self, msgs: list[dict[str, str]], max_tokens: int) -> float:
        if self.backend not in PAID_BACKENDS:
            return 0.0
        cost = self.worst_case_cost(msgs, max_tokens)
        self.budget.reserve(cost, f"{self.backend}:{self.model}")
        return cost

    def _settle(self, reserved: float, comp: Completion | None, unknown: bool = False) -> None:
        """Replace a reservation by the bill; an unknown bill (timeout, unreadable body) keeps the reservation."""
        kept = reserved if comp is None and unknown else 0.0
        self.budget.settle(reserved, comp.cost_usd if comp is not None else 0.0, kept)
        with self._lock:
            self.stats["cost_unknown_usd"] += kept
            if comp is None:
                return
            self._answered = True
            self.stats["input_tokens"] += comp.input_tokens
            self.stats["output_tokens"] += comp.output_tokens
            self.stats["cost_usd"] += comp.cost_usd
            if reserved > 0 and comp.cost_usd > reserved:  # billed past its reservation: reserve more from now on
                self._overrun = max(self._overrun, 1.25 * self._overrun * comp.cost_usd / reserved)

    def _after_failure(self, err: Exception, attempt: int, billed: Completion) -> float:
        """Record ``err``; return the delay before the next attempt, or raise when the request (or job) must stop."""
        kind = error_class(err)
        fatal = self._is_fatal(err, kind)
        delay = None if fatal else self._retry_delay(err, attempt)
        given_up = fatal or delay is None or attempt == self.max_retries
        self._record_error(kind, err, given_up)
        if fatal:  # not chained: the provider's own error may echo the key
            raise self._stop(err, kind) from None
        if given_up:
            raise LLMError(scrub(f"{self.backend}:{self.model} failed after {attempt + 1} attempt(s): "
                                 f"{type(err).__name__}: {err}"), kind=kind, billed_usd=billed.cost_usd,
                           input_tokens=billed.input_tokens, output_tokens=billed.output_tokens) from None
        self._count(retries=1)
        return delay

    def _is_fatal(self, err: Exception, kind: str) -> bool:
        """401/403/404 and a missing key always; a refused connection, unknown host or bad URL before any answer."""
        if isinstance(err, FatalAPIError) or kind in FATAL_STATUS.values():
            return True
        # After an answer, a refused connection is more likely a restart or a blip than a wrong URL: retry it.
        return kind == "connect" and self.backend in PAID_BACKENDS and not self._answered

    def _stop(self, err: Exception, kind: str) -> FatalAPIError:
        """The job-stopping error: provider message, base_url, the key's variable name and what to do."""
        if isinstance(err, FatalAPIError):
            fatal = err
        else:
            env, url = KEY_ENV.get(self.backend, "-"), self.base_url or "the provider's default URL"
            advice = {
                "auth": f"the provider rejected the key: put a valid key in the {env} environment variable",
                "forbidden": f"the key in {env} may not use model {self.model!r}: check the account's access and "
                             "billing, or choose another model",
                "not_found": f"check base_url ({url}; OpenAI-compatible servers usually need the /v1 suffix) and "
                             f"the model name {self.model!r}",
            }.get(kind, f"nothing answered at {url}: check base_url (http:// or https://), the host name, and "
                        "that the server is running and reachable")
            cause = f" ({err.__cause__})" if err.__cause__ is not None else ""
            fatal = FatalAPIError(scrub(f"{self.backend} API at {url} (model {self.model!r}, key from {env}) "
                                        f"failed with {kind}: {type(err).__name__}: {err}{cause}. What to do: "
                                        f"{advice}. Stopped at the first such failure; no more requests are sent."),
                                  kind=kind)
        with self._lock:
            self._fatal = self._fatal or fatal
        return fatal

    def _record_error(self, kind: str, err: Exception, given_up: bool) -> None:
        with self._lock:
            rec = self.errors.setdefault(kind, {"count": 0, "failed": 0, "example": scrub(f"{type(err).__name__}: "
                                                                                        f"{err}")[:300]})
            rec["count"] += 1
            rec["failed"] += int(given_up)

    def _retry_delay(self, err: Exception, attempt: int) -> float | None:
        """Seconds to wait before retrying ``err``, or None when it is not transient."""
        if not _is_transient(err):
            return None
        with self._lock:
            jitter = self._rng.uniform(0.0, self.backoff_s)
        delay = min(self.max_backoff_s, self.backoff_s * 2 ** attempt + jitter)
        retry_after = _retry_after_s(err)
        return min(self.max_backoff_s, max(delay, retry_after)) if retry_after is not None else delay

    def _count(self, **deltas: float) -> None:
        with self._lock:
            for k, v in deltas.items():
                self.stats[k] += v

    # ---- owner-only response cache ---------------------------------------------------------------
    def _cache_path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.json"

    def _cache_get(self, key: str) -> Completion | None:
        path = self._cache_path(key)
        if not path.is_file():
            return None
        try:
            rec = read_record(path)
        except DataError:
            return None  # a corrupt entry is just a miss; it gets rewritten atomically
        return Completion(text=rec["text"], input_tokens=rec["input_tokens"], output_tokens=rec["output_tokens"],
                          cost_usd=0.0, cached=True, model=rec["model"])

    def _cache_put(self, key: str, comp: Completion) -> None:
        """Write one answer owner-only: prompts and answers may be a user's private documents."""
        path = self._cache_path(key)
        for folder in (self.cache_dir, path.parent):
            if folder not in self._private_dirs:
                paths.private_dir(folder)
                self._private_dirs.add(folder)
        write_record(path, {**asdict(comp), "backend": self.backend, "cached": False})
        os.chmod(path, 0o600)  # the folder is already 0700, so the moment at write_record's mode is unreachable

    def _cost(self, n_in: int, n_out: int) -> float:
        return (n_in * self.price[0] + n_out * self.price[1]) / 1e6

    # ---- backends ----------------------------------------------------------------------------
    def _call_backend(self, msgs: list[dict[str, str]], params: dict[str, Any]) -> Completion:
        fn = {"anthropic": self._call_anthropic, "openai": self._call_openai,
              "local": self._call_local, "offline": self._call_offline}[self.backend]
        return fn(msgs, params)

    def _client(self) -> Any:
        with self._lock:
            if self._sdk is None:
                self._sdk = _make_sdk_client(self.backend, self.base_url, self.timeout_s)
            return self._sdk

    def _call_anthropic(self, msgs: list[dict[str, str]], params: dict[str, Any]) -> Completion:
        system = "\n\n".join(m["content"] for m in msgs if m["role"] == "system")
        kwargs = {"system": system} if system else {}
        # anthropic 2.x dropped the ``temperature`` keyword; the Messages API still takes it in the body.
        resp = self._client().messages.create(
            model=self.model, messages=[m for m in msgs if m["role"] != "system"],
            max_tokens=params["max_tokens"], extra_body={"temperature": params["temperature"]}, **kwargs)
        text = "".join(getattr(b, "text", "") for b in (resp.content or []))
        n_in, n_out = resp.usage.input_tokens, resp.usage.output_tokens
        return Completion(text, n_in, n_out, self._cost(n_in, n_out), False, resp.model or self.model)

    def _call_openai(self, msgs: list[dict[str, str]], params: dict[str, Any]) -> Completion:
        resp = self._client().chat.completions.create(
            model=self.model, messages=msgs, max_tokens=params["max_tokens"], temperature=params["temperature"])
        # No choices is billed like an empty answer: counted, then retried as EmptyCompletion.
        text = (resp.choices[0].message.content or "") if resp.choices else ""
        n_in = resp.usage.prompt_tokens if resp.usage else sum(approx_tokens(m["content"]) for m in msgs)
        n_out = resp.usage.completion_tokens if resp.usage else approx_tokens(text)
        return Completion(text, n_in, n_out, self._cost(n_in, n_out), False, resp.model or self.model)

    def _call_offline(self, msgs: list[dict[str, str]], params: dict[str, Any]) -> Completion:
        text = self.offline_fn(msgs)
        n_in = sum(approx_tokens(m["content"]) for m in msgs)
        return Completion(text, n_in, approx_tokens(text), 0.0, False, self.model)

    def _call_local(self, msgs: list[dict[str, str]], params: dict[str, Any]) -> Completion:
        import torch

        model, tok = self._local_pair()
        with self._local_lock:
            enc = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True,
                                          return_dict=True, return_tensors="pt")
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=params["max_tokens"], do_sample=False,
                                     pad_token_id=tok.pad_token_id or tok.eos_token_id)
        new = out[0, enc["input_ids"].shape[1]:]
        text = tok.decode(new, skip_special_tokens=True).strip()
        return Completion(text, int(enc["input_ids"].shape[1]), int(new.shape[0]), 0.0, False, self.model)

    def local_pair(self) -> tuple[Any, Any]:
        """(model, tokenizer) of the local backend, loaded once (for scoring that is not generation)."""
        if self.backend != "local":
            raise ValueError(f"local_pair needs the local backend, this client is {self.backend!r}")
        return self._local_pair()

    def _local_pair(self) -> tuple[Any, Any]:
        """(model, tokenizer) for the local backend: given as a pair, or loaded by name (e.g. ``smollm2``)."""
        with self._local_lock:
            if self._local is None or isinstance(self._local, str):
                from longalign.models import load_causal_lm, load_tokenizer

                name = self._local or self.model
                self._local = (load_causal_lm(name).eval(), load_tokenizer(name))
            return self._local


def _take(it: Iterator[Any], n: int) -> list[Any]:
    out = []
    for _ in range(n):
        try:
            out.append(next(it))
        except StopIteration:
            break
    return out


def _request_kwargs(req: Any) -> dict[str, Any]:
    if isinstance(req, dict):
        if "messages" not in req:
            raise ValueError(f"request dict needs 'messages', got keys {sorted(req)}")
        return {k: req[k] for k in ("messages", "system", "max_tokens", "temperature") if k in req}
    return {"messages": req}


def _check_backend(backend: str, base_url: str | None, offline_fn: Any) -> None:
    """Reject an unknown backend, an offline one without ``offline_fn`` and a ``base_url`` that is not http(s)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if backend == "offline" and offline_fn is None:
        raise ValueError("backend 'offline' needs offline_fn(messages) -> str")
    if base_url and not re.match(r"https?://[^/\s]+", base_url):
        raise ValueError(f"base_url {base_url!r} is not a URL: it must start with http:// or https:// and name a "
                         "host, e.g. http://localhost:8000/v1")


def _make_sdk_client(backend: str, base_url: str | None, timeout_s: float) -> Any:
    """The official SDK client; the key is read from the environment only, SDK retries disabled (ours count)."""
    env = KEY_ENV[backend]
    if not os.environ.get(env):
        raise FatalAPIError(f"backend {backend!r} needs the {env} environment variable (keys are never parameters); "
                            f"set it and rerun", kind="missing_key")
    if backend == "anthropic":
        import anthropic

        return anthropic.Anthropic(base_url=base_url, timeout=timeout_s, max_retries=0)
    import openai

    return openai.OpenAI(base_url=base_url, timeout=timeout_s, max_retries=0)


def _error_names(err: Exception) -> set[str]:
    """Class names of ``err`` and of its cause (the SDKs wrap httpx errors in APIConnectionError)."""
    names = {cls.__name__ for cls in type(err).__mro__}
    if err.__cause__ is not None:
        names |= {cls.__name__ for cls in type(err.__cause__).__mro__}
    return names


def _is_transient(err: Exception) -> bool:
    """True for rate limits, 5xx/529, timeouts, connection errors, malformed bodies and empty completions."""
    if isinstance(err, EmptyCompletion | json.JSONDecodeError | TimeoutError | ConnectionError):
        return True
    status = getattr(err, "status_code", None)
    if isinstance(status, int):
        return status in RETRY_STATUS or status >= 500
    # SDK errors without a status: APITimeoutError / APIConnectionError, and bodies that fail to parse.
    return bool(_error_names(err) & {"APITimeoutError", "APIConnectionError", "APIResponseValidationError",
                                     "JSONDecodeError", "ReadTimeout", "ConnectError", "RemoteProtocolError"})


def _maybe_billed(err: Exception) -> bool:
    """True when the provider may have billed a failed attempt: it timed out, or its body could not be read."""
    if isinstance(getattr(err, "status_code", None), int) or isinstance(err, LLMError):
        return False  # an HTTP error status is not billed; our own errors were raised before sending
    return error_class(err) in ("timeout", "malformed", "connection")


def _retry_after_s(err: Exception) -> float | None:
    response = getattr(err, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    try:
        return float(headers.get("retry-after"))
    except (TypeError, ValueError):
        return None
