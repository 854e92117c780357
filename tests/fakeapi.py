"""A fault-injecting local LLM API server for tests: Anthropic Messages + OpenAI Chat Completions wire formats.

Usage (the real SDKs talk to it; ``longalign.llm.LLMClient`` with ``base_url=``)::

    from fakeapi import FakeAPI, fake_api, planted_keys   # fixtures: import them into the test module

    def test_x(fake_api, planted_keys):
        api = fake_api(responder=lambda msgs: "1: a?\\n2: b?", fault_rate=0.4, seed=1)
        client = LLMClient("anthropic", "claude-2.1", base_url=api.anthropic_base_url, timeout_s=0.5, backoff_s=0.01)
        ...
        assert api.calls_for("some prompt text") == 1          # the cache prevented repeat calls
        assert all(h["x-api-key"] == planted_keys["anthropic"] for h in api.auth_headers("anthropic"))

Endpoints: ``POST /v1/messages`` (Anthropic; base_url = ``api.anthropic_base_url``) and
``POST /v1/chat/completions`` (OpenAI; base_url = ``api.openai_base_url``, which ends in ``/v1``).
``responder(messages) -> str`` gets the request's messages as ``[{role, content}]`` with the system
prompt (if any) first, exactly like ``LLMClient(offline_fn=...)``. Faults are drawn per request
from ``faults`` at ``fault_rate`` with a deterministic RNG keyed by (seed, prompt, attempt number);
``max_faults_per_prompt`` caps consecutive faults so a client with enough retries always gets
through. Fault kinds: ``429`` (with retry-after), ``500``, ``529`` (overloaded; Anthropic only,
500 on OpenAI), ``timeout`` (sleeps ``timeout_sleep_s`` before answering), ``empty`` (a valid
answer with empty text), ``malformed`` (HTTP 200 with a truncated JSON body). Listens on
127.0.0.1 on a random port; ``stop()`` (or the fixture's teardown) shuts it down.

Billing: every answer that the server computes (clean, empty, malformed, or sent after a timeout)
is billed like a real provider and logged as ``billed = (input_tokens, output_tokens)``;
``bill_input_factor`` inflates the input count and ``bill_output="max_tokens"`` bills the request's
whole ``max_tokens`` (hidden reasoning tokens), so a client can be made to spend more than it
expects. ``fail_status`` (401, 403 or 404) answers every request with that provider error, the 401
echoing the presented key as a careless proxy might; error statuses are not billed.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

FAULTS = ("429", "500", "529", "timeout", "empty", "malformed")
PLANTED_KEYS = {"anthropic": "sk-ant-test-PLANTED-4f1c9e7a2b", "openai": "sk-test-PLANTED-openai-8d3b61"}
Responder = Callable[[list[dict[str, str]]], str]


def default_responder(messages: list[dict[str, str]]) -> str:
    """A deterministic reply naming a hash of the prompt."""
    digest = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:8]
    return f"reply-{digest}"


class FakeAPI:
    """The server: start()/stop() or use as a context manager; inspect ``requests`` afterwards."""

    def __init__(self, responder: Responder | None = None, *, fault_rate: float = 0.0,
                 faults: tuple[str, ...] = FAULTS, seed: int = 0, max_faults_per_prompt: int = 3,
                 timeout_sleep_s: float = 1.0, retry_after_s: float = 0.0, bill_input_factor: float = 1.0,
                 bill_output: str = "text", fail_status: int | None = None):
        unknown = set(faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {FAULTS}")
        self.responder = responder or default_responder
        self.fault_rate, self.faults, self.seed = fault_rate, tuple(faults), seed
        self.max_faults_per_prompt, self.timeout_sleep_s = max_faults_per_prompt, timeout_sleep_s
        self.retry_after_s = retry_after_s
        if bill_output not in ("text", "max_tokens") or fail_status not in (None, 401, 403, 404):
            raise ValueError(f"bill_output must be text|max_tokens, fail_status None|401|403|404")
        self.bill_input_factor, self.bill_output, self.fail_status = bill_input_factor, bill_output, fail_status
        self.requests: list[dict[str, Any]] = []  # one dict per HTTP request: path, kind, prompt, fault, headers
        self._attempts: Counter[str] = Counter()
        self._faults_in_row: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "FakeAPI":
        """Bind 127.0.0.1:<random port> and serve in a daemon thread."""
        handler = type("Handler", (_Handler,), {"api": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Shut the server down (idempotent)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeAPI":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        return self._server.server_address[1]

    @property
    def anthropic_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # ---- inspection ------------------------------------------------------------------------------
    def calls_for(self, substring: str) -> int:
        """HTTP requests (all attempts, faulted or not) whose last user message contains ``substring``."""
        with self._lock:
            return sum(1 for r in self.requests if substring in r["prompt"])

    def successes_for(self, substring: str) -> int:
        """Requests containing ``substring`` that got a good (non-faulted) answer."""
        with self._lock:
            return sum(1 for r in self.requests if substring in r["prompt"] and r["fault"] is None)

    def calls_by_prompt(self) -> Counter[str]:
        """Last user message -> number of HTTP requests."""
        with self._lock:
            return Counter(r["prompt"] for r in self.requests)

    def fault_counts(self) -> Counter[str]:
        """Fault kind -> how many were injected (``None`` counts clean answers)."""
        with self._lock:
            return Counter(r["fault"] for r in self.requests)

    def billed_tokens(self) -> tuple[int, int]:
        """(input, output) tokens billed over every answer the server computed."""
        with self._lock:
            bills = [r["billed"] for r in self.requests if r.get("billed")]
        return sum(b[0] for b in bills), sum(b[1] for b in bills)

    def billed_usd(self, price: tuple[float, float]) -> float:
        """What the provider billed in USD at ``price`` = (input, output) USD per million tokens."""
        n_in, n_out = self.billed_tokens()
        return (n_in * price[0] + n_out * price[1]) / 1e6

    def auth_headers(self, kind: str | None = None) -> list[dict[str, str | None]]:
        """The ``authorization`` and ``x-api-key`` headers of every request (``kind``: anthropic|openai)."""
        with self._lock:
            return [r["headers"] for r in self.requests if kind is None or r["kind"] == kind]

    # ---- request handling (called from server threads) -----------------------------------------
    def _decide(self, prompt_key: str) -> str | None:
        with self._lock:
            attempt = self._attempts[prompt_key]
            self._attempts[prompt_key] += 1
            rng = random.Random(f"{self.seed}|{prompt_key}|{attempt}")
            fault = rng.choice(self.faults) if self.faults and rng.random() < self.fault_rate else None
            if fault is not None and self._faults_in_row[prompt_key] >= self.max_faults_per_prompt:
                fault = None
            self._faults_in_row[prompt_key] = self._faults_in_row[prompt_key] + 1 if fault else 0
            return fault

    def _log(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append(entry)


class _Handler(BaseHTTPRequestHandler):
    api: FakeAPI
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        pass

    def do_POST(self) -> None:  # noqa: N802 — http.server naming
        path = self.path.split("?")[0]
        kind = {"/v1/messages": "anthropic", "/v1/chat/completions": "openai"}.get(path)
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        if kind is None:
            return self._send(404, {"error": {"type": "not_found_error", "message": f"no route {path}"}})
        req = json.loads(body or b"{}")
        messages = _request_messages(kind, req)
        prompt = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        key = json.dumps(messages, sort_keys=True)
        fault = self.api._decide(key) if self.api.fail_status is None else str(self.api.fail_status)
        headers = {"authorization": self.headers.get("authorization"), "x-api-key": self.headers.get("x-api-key")}
        entry = {"path": path, "kind": kind, "model": req.get("model"), "prompt": prompt, "fault": fault,
                 "headers": headers, "time": time.time(), "billed": None}
        self.api._log(entry)
        try:
            self._respond(kind, req, messages, fault, entry)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client timed out and went away: expected for the timeout fault

    def _respond(self, kind: str, req: dict[str, Any], messages: list[dict[str, str]], fault: str | None,
                 entry: dict[str, Any]) -> None:
        if fault == "timeout":
            time.sleep(self.api.timeout_sleep_s)
            fault = None
        if fault in ("401", "403", "404", "429", "500", "529"):
            status = 500 if (fault == "529" and kind == "openai") else int(fault)
            extra = {"retry-after": str(self.api.retry_after_s)} if status == 429 else {}
            key = self.headers.get("x-api-key") or (self.headers.get("authorization") or "").removeprefix("Bearer ")
            return self._send(status, _error_body(kind, status, key), extra)
        text = "" if fault == "empty" else self.api.responder(messages)
        body = _ok_body(kind, req, messages, text, self.api)
        usage = body["usage"]
        entry["billed"] = (usage.get("input_tokens", usage.get("prompt_tokens")),
                           usage.get("output_tokens", usage.get("completion_tokens")))  # billed even if unreadable
        if fault == "malformed":
            return self._send_raw(200, b'{"id": "msg_trunc", "content": [{"type": "te')
        self._send(200, body)

    def _send(self, status: int, obj: dict[str, Any], extra: dict[str, str] | None = None) -> None:
        self._send_raw(status, json.dumps(obj).encode(), extra)

    def _send_raw(self, status: int, data: bytes, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


def _request_messages(kind: str, req: dict[str, Any]) -> list[dict[str, str]]:
    """Messages as [{role, content: str}] with the system prompt first (Anthropic's ``system`` field)."""
    msgs = [{"role": m["role"], "content": _text(m["content"])} for m in req.get("messages", [])]
    if kind == "anthropic" and req.get("system"):
        msgs = [{"role": "system", "content": _text(req["system"])}] + msgs
    return msgs


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(block.get("text", "") for block in content if isinstance(block, dict))


def _ntok(text: str) -> int:
    return max(1, len(text.encode("utf-8")) // 4)


def _ok_body(kind: str, req: dict[str, Any], messages: list[dict[str, str]], text: str,
             api: FakeAPI | None = None) -> dict[str, Any]:
    n_in, n_out = sum(_ntok(m["content"]) for m in messages), (_ntok(text) if text else 0)
    if api is not None:
        n_in = int(n_in * api.bill_input_factor + 0.5)
        n_out = int(req.get("max_tokens") or n_out) if api.bill_output == "max_tokens" else n_out
    if kind == "anthropic":
        return {"id": "msg_fake", "type": "message", "role": "assistant", "model": req.get("model", "fake"),
                "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": n_in, "output_tokens": n_out}}
    return {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
            "model": req.get("model", "fake"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}}


def _error_body(kind: str, status: int, key: str = "") -> dict[str, Any]:
    etype = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error",
             500: "api_error", 529: "overloaded_error"}[status]
    message = {401: f"invalid x-api-key: {key}", 403: "your key may not use this model",
               404: "model not found"}.get(status, f"injected {status}")
    if kind == "anthropic":
        return {"type": "error", "error": {"type": etype, "message": message}}
    return {"error": {"message": message, "type": etype, "code": None}}


@pytest.fixture
def fake_api() -> Iterator[Callable[..., FakeAPI]]:
    """Factory fixture: ``fake_api(**FakeAPI kwargs)`` starts a server; all are stopped at teardown."""
    servers: list[FakeAPI] = []

    def make(responder: Responder | None = None, **kwargs: Any) -> FakeAPI:
        servers.append(FakeAPI(responder, **kwargs).start())
        return servers[-1]

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def planted_keys(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Set ANTHROPIC_API_KEY / OPENAI_API_KEY to recognisable planted values; returns {backend: key}."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", PLANTED_KEYS["anthropic"])
    monkeypatch.setenv("OPENAI_API_KEY", PLANTED_KEYS["openai"])
    return dict(PLANTED_KEYS)
