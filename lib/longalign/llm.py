"""One client layer for every LLM call (data generation and judges): Anthropic, OpenAI(-compatible), local, offline.

``LLMClient.complete`` sends one chat request; ``complete_many`` runs many with bounded thread
concurrency and a tqdm bar. Every backend shares the same machinery: retries with exponential
backoff + jitter (429, 5xx, 529 overloaded, timeouts, connection errors, malformed bodies, empty
completions), an on-disk response cache keyed by (backend, model, messages, params) so reruns cost
nothing, token/cost accounting, a cost estimate printed before paid calls and a ``max_cost_usd``
guard. API keys come only from ``ANTHROPIC_API_KEY`` / ``OPENAI_API_KEY``; they are never accepted
as parameters and are scrubbed from every error message this module raises.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
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


class LLMError(RuntimeError):
    """A request failed for good (after retries, or a non-retryable error); message has keys scrubbed."""


class BudgetExceeded(LLMError):
    """The estimated or actual spend crosses ``max_cost_usd``."""


class EmptyCompletion(LLMError):
    """The model returned no text (retried like a transient error)."""


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
    """``text`` with the values of every API-key environment variable replaced by ``***``."""
    for env in KEY_ENV.values():
        key = os.environ.get(env)
        if key and len(key) >= 8:
            text = text.replace(key, "***")
    return text


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


def price_for(model: str, prices: dict[str, tuple[float, float]] | None = None) -> tuple[float, float] | None:
    """(input, output) USD per million tokens for ``model`` by longest prefix match, or None if unknown."""
    table = {**PRICES, **(prices or {})}
    matches = [k for k in table if model.startswith(k)]
    return table[max(matches, key=len)] if matches else None


class LLMClient:
    """Chat completions with retries, cache, accounting and a cost guard, for one backend + model."""

    def __init__(self, backend: str, model: str, *, base_url: str | None = None, concurrency: int = 4,
                 max_retries: int = 6, timeout_s: float = 120.0, cache_dir: str | Path | None = None,
                 max_cost_usd: float | None = None, prices: dict[str, tuple[float, float]] | None = None,
                 offline_fn: Callable[[list[dict[str, str]]], str] | None = None, local_model: Any = None,
                 backoff_s: float = 1.0, max_backoff_s: float = 60.0, seed: int = 0):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
        if backend == "offline" and offline_fn is None:
            raise ValueError("backend 'offline' needs offline_fn(messages) -> str")
        self.backend, self.model, self.base_url = backend, model, base_url
        self.concurrency, self.max_retries, self.timeout_s = max(1, concurrency), max_retries, timeout_s
        self.cache_dir = Path(cache_dir) if cache_dir is not None else paths.cache() / "llm"
        self.max_cost_usd, self.prices = max_cost_usd, prices
        self.offline_fn, self.backoff_s, self.max_backoff_s = offline_fn, backoff_s, max_backoff_s
        self._local = local_model
        self._sdk = None
        self._lock = threading.Lock()
        self._local_lock = threading.Lock()  # one generate() at a time: torch already uses all cores
        self._rng = random.Random(seed)
        self.stats = {"requests": 0, "api_calls": 0, "retries": 0, "cache_hits": 0, "failures": 0,
                      "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0}

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
        """Run ``fn(item)`` on threads, ``concurrency`` at a time; yield ``(index, result | Exception)`` as each ends."""
        items = list(items)
        with ThreadPoolExecutor(self.concurrency) as pool, tqdm(total=len(items), desc=desc) as bar:
            pending: dict[Any, int] = {}
            queue = iter(enumerate(items))
            for i, item in _take(queue, self.concurrency):
                pending[pool.submit(fn, item)] = i
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    i = pending.pop(fut)
                    err = fut.exception()
                    bar.update(1)
                    yield i, (err if err is not None else fut.result())
                    for j, item in _take(queue, 1):
                        pending[pool.submit(fn, item)] = j

    def estimate_cost(self, requests: Iterable[Any], expected_output_tokens: int = 512) -> float:
        """Upper-bound USD for ``requests`` not yet cached (0 for local/offline; raises if the price is unknown)."""
        if self.backend not in PAID_BACKENDS:
            return 0.0
        price = price_for(self.model, self.prices)
        if price is None:
            raise ValueError(f"no price known for model {self.model!r}: pass prices={{'{self.model}': (in, out)}} per Mtok")
        total = 0.0
        for req in requests:
            kwargs = _request_kwargs(req)
            msgs = normalize_messages(kwargs["messages"], kwargs.get("system"))
            params = {"max_tokens": kwargs.get("max_tokens", 1024), "temperature": kwargs.get("temperature", 0.0)}
            if self._cache_get(self.cache_key(msgs, params)) is not None:
                continue
            n_in = sum(approx_tokens(m["content"]) + 4 for m in msgs)
            n_out = min(expected_output_tokens, params["max_tokens"])
            total += (n_in * price[0] + n_out * price[1]) / 1e6
        return total

    def check_budget(self, requests: Iterable[Any], expected_output_tokens: int = 512) -> float:
        """Print the cost estimate and raise BudgetExceeded before spending if it exceeds ``max_cost_usd``."""
        est = self.estimate_cost(requests, expected_output_tokens)
        cap = "no cap" if self.max_cost_usd is None else f"cap ${self.max_cost_usd:.2f}"
        print(f"[{self.backend}:{self.model}] estimated cost of uncached requests: ${est:.4f} ({cap})")
        if self.max_cost_usd is not None and est > self.max_cost_usd:
            raise BudgetExceeded(f"estimated cost ${est:.4f} exceeds max_cost_usd=${self.max_cost_usd:.2f}")
        return est

    def cache_key(self, messages: list[dict[str, str]], params: dict[str, Any]) -> str:
        """sha256 of (backend, model, messages, params): the on-disk cache key."""
        blob = json.dumps([self.backend, self.model, messages, params], ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    # ---- retries, cache, accounting ------------------------------------------------------------
    def _complete_request(self, req: Any) -> Completion:
        return self.complete(**_request_kwargs(req))

    def _with_retries(self, msgs: list[dict[str, str]], params: dict[str, Any]) -> Completion:
        for attempt in range(self.max_retries + 1):
            self._guard_spend()
            try:
                self._count(api_calls=1)
                comp = self._call_backend(msgs, params)
                if not comp.text.strip():
                    raise EmptyCompletion(f"{self.model} returned an empty completion")
                self._count(input_tokens=comp.input_tokens, output_tokens=comp.output_tokens, cost_usd=comp.cost_usd)
                return comp
            except Exception as err:  # noqa: BLE001 — classified just below
                delay = self._retry_delay(err, attempt)
                if delay is None or attempt == self.max_retries:
                    self._count(failures=1)
                    raise LLMError(scrub(f"{self.backend}:{self.model} failed after {attempt + 1} attempt(s): "
                                         f"{type(err).__name__}: {err}")) from None
                self._count(retries=1)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _retry_delay(self, err: Exception, attempt: int) -> float | None:
        """Seconds to wait before retrying ``err``, or None when it is not transient."""
        if not _is_transient(err):
            return None
        with self._lock:
            jitter = self._rng.uniform(0.0, self.backoff_s)
        delay = min(self.max_backoff_s, self.backoff_s * 2 ** attempt + jitter)
        retry_after = _retry_after_s(err)
        return min(self.max_backoff_s, max(delay, retry_after)) if retry_after is not None else delay

    def _guard_spend(self) -> None:
        if self.max_cost_usd is not None and self.backend in PAID_BACKENDS and self.stats["cost_usd"] >= self.max_cost_usd:
            raise BudgetExceeded(f"spent ${self.stats['cost_usd']:.4f} >= max_cost_usd=${self.max_cost_usd:.2f}; stopping")

    def _count(self, **deltas: float) -> None:
        with self._lock:
            for k, v in deltas.items():
                self.stats[k] += v

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
        write_record(self._cache_path(key), {**asdict(comp), "backend": self.backend, "cached": False})

    def _cost(self, n_in: int, n_out: int) -> float:
        price = price_for(self.model, self.prices) if self.backend in PAID_BACKENDS else (0.0, 0.0)
        return 0.0 if price is None else (n_in * price[0] + n_out * price[1]) / 1e6

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
        if not resp.choices:
            raise EmptyCompletion(f"{self.model} returned no choices")
        text = resp.choices[0].message.content or ""
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


def _make_sdk_client(backend: str, base_url: str | None, timeout_s: float) -> Any:
    """The official SDK client; the key is read from the environment only, SDK retries disabled (ours count)."""
    env = KEY_ENV[backend]
    if not os.environ.get(env):
        raise LLMError(f"backend {backend!r} needs the {env} environment variable (keys are never parameters)")
    if backend == "anthropic":
        import anthropic

        return anthropic.Anthropic(base_url=base_url, timeout=timeout_s, max_retries=0)
    import openai

    return openai.OpenAI(base_url=base_url, timeout=timeout_s, max_retries=0)


def _is_transient(err: Exception) -> bool:
    """True for rate limits, 5xx/529, timeouts, connection errors, malformed bodies and empty completions."""
    if isinstance(err, EmptyCompletion | json.JSONDecodeError | TimeoutError | ConnectionError):
        return True
    status = getattr(err, "status_code", None)
    if isinstance(status, int):
        return status in RETRY_STATUS or status >= 500
    names = {cls.__name__ for cls in type(err).__mro__}
    # SDK errors without a status: APITimeoutError / APIConnectionError, and bodies that fail to parse.
    return bool(names & {"APITimeoutError", "APIConnectionError", "APIResponseValidationError",
                         "JSONDecodeError", "ReadTimeout", "ConnectError", "RemoteProtocolError"})


def _retry_after_s(err: Exception) -> float | None:
    response = getattr(err, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    try:
        return float(headers.get("retry-after"))
    except (TypeError, ValueError):
        return None
