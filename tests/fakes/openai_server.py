"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests (stdlib only).

    with FakeOpenAIServer(reply="7 out of 10") as server:
        llm = load_openai("fake-model", BackendOptions(base_url=server.url))
        ...
        assert server.bodies[0]["temperature"] == 0

It speaks enough of ``POST /v1/chat/completions`` and ``POST /v1/completions`` for the official
SDK. "Tokens" are whitespace-separated words. Replies are deterministic: ``reply`` (a string, or a
function of the request body) or, by default, an echo of the prompt. When logprobs are asked for
(and ``logprobs`` is on), the first token is the most likely one of ``distribution`` and its top
alternatives come back. ``delay`` (seconds, or a function of the body) slows every answer. Every
request is recorded, with the number in flight when it arrived.

Faults (see ``FAULT_KINDS``) come from three places, checked in this order: :meth:`fail_next`
queues them for the next requests; ``fail_when(body)`` returns one for chosen requests every time;
``fault_rate`` injects one of ``fault_kinds`` at random (seeded). ``faults`` counts each kind
injected. Error bodies echo the request's Authorization header, as a careless server might, so
that key redaction is tested for real. With ``api_key`` set, any other key gets a 401.
"""

from __future__ import annotations

import json
import math
import random
import select
import socket
import struct
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Literal, Mapping, Sequence

Body = dict[str, Any]
MAX_STOP = 4
# Statuses as text, then faults below HTTP: "reset" closes the socket with an RST and no answer,
# "timeout" answers nothing until the client gives up, "malformed" is a 200 whose body is not
# JSON, "truncated" a 200 that closes before the promised Content-Length.
FAULT_KINDS = ("429", "500", "503", "reset", "timeout", "malformed", "truncated")
FaultSpec = int | str  # 503 or "503", "reset", ...
Action = Literal["send", "reset", "hang", "truncate"]
MALFORMED = b'{"id": "fake", "object": "chat.completion", "choices": [{"index": 0, "message": {"cont'


def peaked_distribution(mode: int = 7, scale: float = 1.0) -> dict[str, float]:
    """Probabilities over "0".."10", peaked at ``mode``."""
    weights = {str(i): math.exp(-abs(i - mode) / scale) for i in range(11)}
    total = sum(weights.values())
    return {token: w / total for token, w in weights.items()}


@dataclass(frozen=True)
class Fault:
    kind: str  # one of FAULT_KINDS, or any status code as text
    headers: Mapping[str, str] = field(default_factory=dict)
    body: Body | None = None


@dataclass(frozen=True)
class Received:
    path: str
    body: Body
    authorization: str | None
    at: float = 0.0  # time.monotonic() on arrival
    in_flight: int = 1  # requests in flight on arrival, this one included
    fault: str | None = None  # the fault injected instead of an answer


@dataclass(frozen=True)
class Answer:
    """What the handler does: send ``payload``, or fail below HTTP (``action``)."""

    status: int
    payload: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    action: Action = "send"


def _error(status: int, message: str, authorization: str | None = None) -> Body:
    # Deliberately careless: the key the client sent comes back in the error text.
    if authorization:
        message = f"{message} (request had Authorization: {authorization})"
    return {"error": {"message": message, "type": "fake_error", "param": None, "code": str(status)}}


def _json(status: int, payload: Body, headers: Mapping[str, str] | None = None) -> Answer:
    return Answer(status, json.dumps(payload).encode(), headers or {})


class FakeOpenAIServer:
    def __init__(
        self,
        *,
        reply: str | Callable[[Body], str] | None = None,
        distribution: Mapping[str, float] | None = None,
        logprobs: bool = True,
        delay: float | Callable[[Body], float] = 0.0,
        fault_rate: float = 0.0,
        fault_kinds: Sequence[str] = FAULT_KINDS,
        seed: int = 0,
        fail_when: Callable[[Body], FaultSpec | None] | None = None,
        api_key: str | None = None,
        retry_after: str = "0",
        hang: float = 30.0,
    ):
        self.reply = reply
        self.distribution = dict(distribution or peaked_distribution())
        self.logprobs = logprobs
        self.delay = delay
        self.fault_rate = fault_rate
        self.fault_kinds = tuple(fault_kinds)
        self.fail_when = fail_when
        self.api_key = api_key
        self.retry_after = retry_after  # for random 429s
        self.hang = hang  # the longest a "timeout" fault waits for the client to give up
        self.faults: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._queued: deque[Fault] = deque()
        self._received: list[Received] = []
        self._ids = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> FakeOpenAIServer:
        handler = type("FakeOpenAIHandler", (_Handler,), {"fake": self})
        self._stopping.clear()
        self._httpd = _Server(("127.0.0.1", 0), handler)
        # A short poll interval keeps shutdown (and so every test's teardown) quick.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-openai", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases handlers hanging in a "timeout" fault
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
        self, fault: FaultSpec, count: int = 1, *, retry_after: str | None = None, body: Body | None = None
    ) -> None:
        """Answer the next ``count`` requests with ``fault`` (429s get ``Retry-After: 0`` unless told)."""
        kind = str(fault)
        if retry_after is None and kind == "429":
            retry_after = "0"
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        with self._lock:
            self._queued.extend(Fault(kind, headers, body) for _ in range(count))

    @property
    def pending_faults(self) -> int:
        with self._lock:
            return len(self._queued)

    def reset_stats(self) -> None:
        """Forget what was received and the peak in flight (e.g. between phases of a test)."""
        with self._lock:
            self._received.clear()
            self.max_in_flight = self.in_flight
            self.faults.clear()

    def _pick_fault(self, body: Body) -> Fault | None:
        """Called under the lock."""
        if self._queued:
            return self._queued.popleft()
        chosen = self.fail_when(body) if self.fail_when is not None else None
        if chosen is None and self.fault_rate > 0 and self._rng.random() < self.fault_rate:
            chosen = self._rng.choice(self.fault_kinds)
        if chosen is None:
            return None
        kind = str(chosen)
        return Fault(kind, {"Retry-After": self.retry_after} if kind == "429" else {})

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
    def handle(self, path: str, body: Body, authorization: str | None) -> Answer:
        """Record the request and decide the answer; the caller calls :meth:`finished` after it."""
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            denied = self.api_key is not None and authorization != f"Bearer {self.api_key}"
            fault = None if denied else self._pick_fault(body)
            if fault is not None:
                self.faults[fault.kind] += 1
            self._received.append(Received(path, body, authorization, time.monotonic(), self.in_flight,
                                           fault.kind if fault else None))
            self._ids += 1
            serial = self._ids
        delay = self.delay(body) if callable(self.delay) else self.delay
        if delay:
            time.sleep(delay)
        if denied:
            return _json(401, _error(401, "Incorrect API key provided", authorization))
        if fault is not None:
            return self._fault_answer(fault, body, serial, authorization)
        return self._route(path, body, serial, authorization)

    def finished(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _fault_answer(self, fault: Fault, body: Body, serial: int, authorization: str | None) -> Answer:
        if fault.kind == "reset":
            return Answer(0, b"", action="reset")
        if fault.kind == "timeout":
            return Answer(0, b"", action="hang")
        if fault.kind == "malformed":
            return Answer(200, MALFORMED)
        if fault.kind == "truncated":
            good = self._route("/v1/chat/completions" if "messages" in body else "/v1/completions", body, serial, None)
            return Answer(200, good.payload, action="truncate")
        status = int(fault.kind)
        return _json(status, fault.body or _error(status, f"injected {status}", authorization), fault.headers)

    def _route(self, path: str, body: Body, serial: int, authorization: str | None) -> Answer:
        route = path.split("?", 1)[0]
        if route not in ("/v1/chat/completions", "/v1/completions"):
            return _json(404, _error(404, f"no route {route}", authorization))
        if len(_stops(body)) > MAX_STOP:
            return _json(400, _error(400, "too many stop sequences", authorization))
        return _json(200, self._answer(body, route == "/v1/chat/completions", serial))

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
            self._deliver(_json(400, _error(400, "invalid JSON")))
            return
        answer = self.fake.handle(self.path, body, self.headers.get("Authorization"))
        try:
            self._deliver(answer)
        finally:
            self.fake.finished()

    def _deliver(self, answer: Answer) -> None:
        if answer.action == "reset":
            self._reset()
        elif answer.action == "hang":
            self._hang()
        else:
            self._send(answer)

    def _send(self, answer: Answer) -> None:
        data = answer.payload
        # A truncated answer promises the whole body, sends half of it and hangs up.
        sent = data[: len(data) // 2] if answer.action == "truncate" else data
        self.send_response(answer.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(sent)
        if answer.action == "truncate":
            self.close_connection = True

    def _reset(self) -> None:
        # Linger 0 makes close() send an RST instead of a FIN: a real "connection reset by peer".
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def _hang(self) -> None:
        """Answer nothing until the client hangs up (its timeout), the server stops, or ``hang`` passes."""
        deadline = time.monotonic() + self.fake.hang
        while time.monotonic() < deadline and not self.fake._stopping.is_set():
            readable, _, _ = select.select([self.connection], [], [], 0.02)
            try:
                if readable and not self.connection.recv(1, socket.MSG_PEEK):
                    break  # EOF: the client gave up
            except OSError:
                break
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass
