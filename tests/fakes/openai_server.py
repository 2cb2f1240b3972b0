"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests (stdlib only).

    with FakeOpenAIServer(reply="7 out of 10") as server:
        llm = load_openai("fake-model", BackendOptions(base_url=server.url))
        ...
        assert server.bodies[0]["temperature"] == 0

It speaks enough of ``POST /v1/chat/completions`` and ``POST /v1/completions`` for the official
SDK. "Tokens" are whitespace-separated words. Replies are deterministic: ``reply`` (a string, or a
function of the request body) or, by default, an echo of the prompt. When logprobs are asked for
(and ``logprobs`` is on), the first token is the most likely one of ``distribution`` and its top
alternatives come back. Faults queued with :meth:`fail_next` answer the next requests instead;
``delay`` (seconds, or a function of the body) slows every answer. Every request is recorded.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Mapping

Body = dict[str, Any]
MAX_STOP = 4


def peaked_distribution(mode: int = 7, scale: float = 1.0) -> dict[str, float]:
    """Probabilities over "0".."10", peaked at ``mode``."""
    weights = {str(i): math.exp(-abs(i - mode) / scale) for i in range(11)}
    total = sum(weights.values())
    return {token: w / total for token, w in weights.items()}


@dataclass(frozen=True)
class Fault:
    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: Body | None = None


@dataclass(frozen=True)
class Received:
    path: str
    body: Body
    authorization: str | None


def _error(status: int, message: str) -> Body:
    return {"error": {"message": message, "type": "fake_error", "param": None, "code": str(status)}}


class FakeOpenAIServer:
    def __init__(
        self,
        *,
        reply: str | Callable[[Body], str] | None = None,
        distribution: Mapping[str, float] | None = None,
        logprobs: bool = True,
        delay: float | Callable[[Body], float] = 0.0,
    ):
        self.reply = reply
        self.distribution = dict(distribution or peaked_distribution())
        self.logprobs = logprobs
        self.delay = delay
        self._lock = threading.Lock()
        self._faults: deque[Fault] = deque()
        self._received: list[Received] = []
        self._ids = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> FakeOpenAIServer:
        handler = type("FakeOpenAIHandler", (_Handler,), {"fake": self})
        self._httpd = _Server(("127.0.0.1", 0), handler)
        # A short poll interval keeps shutdown (and so every test's teardown) quick.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-openai", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # --- fault injection ---------------------------------------------------------------------
    def fail_next(
        self, status: int, count: int = 1, *, retry_after: str | None = None, body: Body | None = None
    ) -> None:
        """Answer the next ``count`` requests with ``status`` (429s get ``Retry-After: 0`` unless told)."""
        if retry_after is None and status == 429:
            retry_after = "0"
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        with self._lock:
            self._faults.extend(Fault(status, headers, body) for _ in range(count))

    @property
    def pending_faults(self) -> int:
        with self._lock:
            return len(self._faults)

    # --- what was received -------------------------------------------------------------------
    @property
    def received(self) -> list[Received]:
        with self._lock:
            return list(self._received)

    @property
    def bodies(self) -> list[Body]:
        return [r.body for r in self.received]

    @property
    def paths(self) -> list[str]:
        return [r.path for r in self.received]

    @property
    def authorization(self) -> str | None:
        """The Authorization header of the latest request."""
        received = self.received
        return received[-1].authorization if received else None

    # --- request handling (called from handler threads) --------------------------------------
    def handle(self, path: str, body: Body, authorization: str | None) -> tuple[int, Body, Mapping[str, str]]:
        with self._lock:
            self._received.append(Received(path, body, authorization))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            fault = self._faults.popleft() if self._faults else None
            self._ids += 1
            serial = self._ids
        try:
            delay = self.delay(body) if callable(self.delay) else self.delay
            if delay:
                time.sleep(delay)
            if fault is not None:
                return fault.status, fault.body or _error(fault.status, f"injected {fault.status}"), fault.headers
            route = path.split("?", 1)[0]
            if route not in ("/v1/chat/completions", "/v1/completions"):
                return 404, _error(404, f"no route {route}"), {}
            if len(_stops(body)) > MAX_STOP:
                return 400, _error(400, "too many stop sequences"), {}
            chat = route == "/v1/chat/completions"
            return 200, self._answer(body, chat, serial), {}
        finally:
            with self._lock:
                self.in_flight -= 1

    def _answer(self, body: Body, chat: bool, serial: int) -> Body:
        prompt = _prompt_text(body, chat)
        k = int(body.get("top_logprobs") or 0) if chat and body.get("logprobs") else int(body.get("logprobs") or 0)
        top = self._top(k) if k > 0 and self.logprobs else []
        words = ([top[0][0]] if top else []) + self._reply_text(body, prompt).split()
        max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
        text, finish = " ".join(words[:max_tokens]), "length" if len(words) > max_tokens else "stop"
        cuts = [text.find(s) for s in _stops(body) if s and s in text]
        if cuts:
            text, finish = text[: min(cuts)], "stop"
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split())}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        choice: Body = {"index": 0, "finish_reason": finish, "logprobs": _logprobs(top, chat) if top else None}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return {
            "id": f"fake-{serial}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [choice],
            "usage": usage,
        }

    def _reply_text(self, body: Body, prompt: str) -> str:
        if callable(self.reply):
            return self.reply(body)
        if self.reply is not None:
            return self.reply
        last = body["messages"][-1]["content"] if "messages" in body else prompt
        return f"echo: {last}"

    def _top(self, k: int) -> list[tuple[str, float]]:
        total = sum(self.distribution.values())
        ranked = sorted(self.distribution.items(), key=lambda kv: -kv[1])[:k]
        return [(token, math.log(p / total)) for token, p in ranked if p > 0]


def _stops(body: Body) -> list[str]:
    stop = body.get("stop")
    return [stop] if isinstance(stop, str) else list(stop or [])


def _prompt_text(body: Body, chat: bool) -> str:
    if chat:
        return "\n\n".join(str(m.get("content") or "") for m in body.get("messages", []))
    prompt = body.get("prompt", "")
    return prompt if isinstance(prompt, str) else "\n".join(map(str, prompt))


def _logprobs(top: list[tuple[str, float]], chat: bool) -> Body:
    token, logprob = top[0]
    if not chat:
        return {"tokens": [token], "token_logprobs": [logprob], "top_logprobs": [dict(top)], "text_offset": [0]}
    alternatives = [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in top]
    first = {"token": token, "logprob": logprob, "bytes": list(token.encode()), "top_logprobs": alternatives}
    return {"content": [first], "refusal": None}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default of 5 drops bursts of connections into slow SYN retries


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeOpenAIServer

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self._send(400, _error(400, "invalid JSON"), {})
            return
        self._send(*self.fake.handle(self.path, body, self.headers.get("Authorization")))

    def _send(self, status: int, payload: Body, headers: Mapping[str, str]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass
