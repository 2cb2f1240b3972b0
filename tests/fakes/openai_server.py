"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests (stdlib only).

    with FakeOpenAIServer(reply="7 out of 10") as server:
        llm = load_openai("fake-model", BackendOptions(base_url=server.url))
        ...
        assert server.bodies[0]["temperature"] == 0

It speaks enough of ``POST /v1/chat/completions`` and ``POST /v1/completions`` for the official
SDK. "Tokens" are whitespace-separated words. Replies are deterministic: ``reply`` (a string, or a
function of the request body) or, by default, an echo of the prompt. When logprobs are asked for
(and ``logprobs`` is on), the first token is the most likely one of ``distribution`` and its top
alternatives come back (on chat, with ``split_numbers``, also the token after it: a number's
next digit or its end; ``chat_preamble`` tokens, such as a model writing "Rating: " itself, come
first). ``delay`` (seconds, or a function of the body) slows every answer. Every
request is recorded, with the number in flight when it arrived.

Limits as OpenAI documents (and enforces with a 400): at most 4 stop strings, chat
``top_logprobs`` <= 20 and only with ``logprobs: true``, legacy completions ``logprobs`` <= 5.

Legacy completions take a list of prompts (one choice per prompt, in ``index`` order) and
``echo``: with ``max_tokens=0`` the answer is the prompt itself with a log-probability per token.
The fake tokenises text into words (leading whitespace attached; numbers apart from punctuation;
``split_numbers`` makes every digit its own token, as Llama's tokenizer does). A number that ends
an echoed prompt is the answer: its tokens get log-probabilities consistent with ``distribution``
(so "1" then "0" is P("10") in all), every other token -1.0. ``echo="refuse"`` answers 400 to echo
with logprobs, as OpenAI's gpt-3.5-turbo-instruct does; ``echo="ignore"`` acts as if echo were
unset, as llama.cpp's server does.

Faults (see ``FAULT_KINDS``) come from three places, checked in this order: :meth:`fail_next`
queues them for the next requests; ``fail_when(body)`` returns one for chosen requests every time;
``fault_rate`` injects one of ``fault_kinds`` at random (seeded). ``faults`` counts each kind
injected. Error bodies echo the request's Authorization header, as a careless server might, so
that key redaction is tested for real. With ``api_key`` set, any other key gets a 401 that also
quotes the key masked as OpenAI does ("sk-abc****...wxyz").

:class:`SilentServer` accepts connections and never answers; :func:`unused_port` is a port nobody
listens on (connection refused).
"""

from __future__ import annotations

import json
import math
import random
import re
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
MAX_TOP_LOGPROBS = {"chat": 20, "completions": 5}  # OpenAI's documented caps
OTHER_TOKEN_LOGPROB = -1.0  # every echoed token that is not part of the answer
ECHO_REFUSED = "Setting 'echo' and 'logprobs' at the same time is not supported for this model."
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
        echo: Literal["exact", "refuse", "ignore"] = "exact",
        split_numbers: bool = False,
        chat_preamble: Sequence[str] = (),
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
        self.echo = echo
        self.split_numbers = split_numbers
        self.chat_preamble = tuple(chat_preamble)
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
            given = (authorization or "").removeprefix("Bearer ")
            message = (f"Incorrect API key provided: {_masked(given)}. You can find your API key at "
                       "https://platform.openai.com/account/api-keys.")
            return _json(401, _error(401, message, authorization))
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
        problem = self._invalid(body, route == "/v1/chat/completions")
        if problem:
            return _json(400, _error(400, problem, authorization))
        if route == "/v1/chat/completions":
            return _json(200, self._chat_answer(body, serial))
        return _json(200, self._completions_answer(body, serial))

    def _invalid(self, body: Body, chat: bool) -> str | None:
        """Why OpenAI would refuse ``body`` with a 400, or None."""
        if len(_stops(body)) > MAX_STOP:
            return "too many stop sequences"
        if chat:
            k = body.get("top_logprobs")
            if k is not None and not body.get("logprobs"):
                return "Invalid value for 'top_logprobs': 'logprobs' must be set to true when 'top_logprobs' is used."
            if k is not None and not 0 <= int(k) <= MAX_TOP_LOGPROBS["chat"]:
                return (f"Invalid 'top_logprobs': integer above maximum value. Expected a value <= "
                        f"{MAX_TOP_LOGPROBS['chat']}, but got {k} instead.")
            return None
        k = body.get("logprobs")
        if k is not None and not 0 <= int(k) <= MAX_TOP_LOGPROBS["completions"]:
            return f"Invalid value for 'logprobs': the maximum value for logprobs is {MAX_TOP_LOGPROBS['completions']}."
        if body.get("echo") and k is not None and self.echo == "refuse":
            return ECHO_REFUSED
        return None

    def _chat_answer(self, body: Body, serial: int) -> Body:
        prompt = _prompt_text(body, True)
        k = int(body.get("top_logprobs") or 0) if body.get("logprobs") else 0
        steps = self._chat_steps(prompt, k, int(body.get("max_tokens") or 16)) if k > 0 and self.logprobs else []
        said = [("".join(token for token, _ in steps), 0.0)] if steps else []
        text, finish = self._generated(body, prompt, said)
        choice: Body = {"index": 0, "finish_reason": finish, "logprobs": _chat_logprobs(steps) if steps else None,
                        "message": {"role": "assistant", "content": text}}
        return self._envelope(body, serial, "chat.completion", [choice], len(prompt.split()), len(text.split()))

    def _completions_answer(self, body: Body, serial: int) -> Body:
        prompts = body.get("prompt", "")
        prompts = [prompts] if isinstance(prompts, str) else [str(p) for p in prompts]
        k = int(body.get("logprobs") or 0) if body.get("logprobs") is not None else None
        echo = bool(body.get("echo")) and self.echo != "ignore"
        choices, prompt_tokens, completion_tokens = [], 0, 0
        for index, prompt in enumerate(prompts):
            top = self._first_tokens(prompt, k) if k and self.logprobs else []
            text, finish = self._generated({**body, "prompt": prompt}, prompt, top)
            if body.get("max_tokens") == 0:  # nothing generated (with echo: just the prompt back)
                text, finish, top = "", "length", []
            logprobs = _completion_logprobs(top) if top else None
            if echo:
                tokens = self._tokens(prompt)
                logprobs = self._echo_logprobs(tokens, max(k or 0, 1), logprobs) if k is not None and self.logprobs else None
                text = prompt + text
            choices.append({"index": index, "finish_reason": finish, "logprobs": logprobs, "text": text})
            prompt_tokens += len(self._tokens(prompt))
            completion_tokens += len(text.split()) if not echo else 0
        return self._envelope(body, serial, "text_completion", choices, prompt_tokens, completion_tokens)

    def _generated(self, body: Body, prompt: str, top: list[tuple[str, float]]) -> tuple[str, str]:
        words = ([top[0][0]] if top else []) + self._reply_text(body, prompt).split()
        max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
        text, finish = " ".join(words[:max_tokens]), "length" if len(words) > max_tokens else "stop"
        cuts = [text.find(s) for s in _stops(body) if s and s in text]
        if cuts:
            text, finish = text[: min(cuts)], "stop"
        return text, finish

    @staticmethod
    def _envelope(body: Body, serial: int, kind: str, choices: list[Body], prompt_tokens: int,
                  completion_tokens: int) -> Body:
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        return {"id": f"fake-{serial}", "object": kind, "created": int(time.time()),
                "model": body.get("model", "fake"), "choices": choices, "usage": usage}

    # --- the fake's "model": tokens and the log-probabilities of an echoed answer ----------------
    def _tokens(self, text: str) -> list[str]:
        digits = r"\s*\d" if self.split_numbers else r"\s*\d+"
        return re.findall(digits + r"|\s*[^\s\d]+|\s+", text)

    def _answer_mass(self, text: str, whole: bool) -> float:
        """Probability that the answer is ``text`` (``whole``) or starts with it."""
        total = sum(self.distribution.values())
        return sum(p for answer, p in self.distribution.items()
                   if (answer.strip() == text if whole else answer.strip().startswith(text))) / total

    def _answer_start(self, tokens: list[str]) -> int:
        """Index of the first token of the number that ends ``tokens`` (len(tokens) if none)."""
        start = len(tokens)
        while start > 0 and tokens[start - 1].strip().isdigit():
            start -= 1
            if not self.split_numbers or tokens[start] != tokens[start].lstrip() or start == 0:
                break
        return start

    def _echo_logprobs(self, tokens: list[str], k: int, generated: Body | None) -> Body:
        """Log-probabilities of the prompt's own tokens; a number at the very end is the answer."""
        start = self._answer_start(tokens)
        lps: list[float | None] = []
        tops: list[dict[str, float] | None] = []
        answer = ""
        for i, token in enumerate(tokens):
            if i < start:
                alternatives = {token: OTHER_TOKEN_LOGPROB}
            else:
                before = self._answer_mass(answer, False) if answer else 1.0
                space = token[: len(token) - len(token.lstrip())]
                alternatives = self._next_tokens(answer, space, before)
                whole = not self.split_numbers
                alternatives[token] = _log(self._answer_mass(answer + token.strip(), whole) / before)
                answer += token.strip()
            lps.append(None if i == 0 else alternatives[token])
            ranked = sorted(alternatives.items(), key=lambda kv: -kv[1])[:k]
            tops.append(None if i == 0 else dict(ranked))
        offsets, at = [], 0
        for token in tokens:
            offsets.append(at)
            at += len(token)
        out: Body = {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}
        if generated:
            for key in ("tokens", "token_logprobs", "top_logprobs"):
                out[key] = out[key] + generated[key]
            out["text_offset"] = offsets + [at + o for o in generated["text_offset"]]
        return out

    def _next_tokens(self, answer: str, space: str, before: float) -> dict[str, float]:
        """The alternatives for the next token of an answer that so far reads ``answer``."""
        options: dict[str, float] = {}
        if not answer:  # the answer's first token: a whole number, or its first digit
            for text in {a.strip() if not self.split_numbers else a.strip()[:1] for a in self.distribution}:
                mass = self._answer_mass(text, whole=not self.split_numbers)
                if text and mass > 0:
                    options[space + text] = _log(mass)
            return options
        if self._answer_mass(answer, True) > 0:  # the answer ends here
            options["."] = _log(self._answer_mass(answer, True) / before)
        for a in self.distribution:
            head = a.strip()[len(answer):][:1] if a.strip().startswith(answer) else ""
            if head:
                options[head] = _log(self._answer_mass(answer + head, False) / before)
        return options

    def _reply_text(self, body: Body, prompt: str) -> str:
        if callable(self.reply):
            return self.reply(body)
        if self.reply is not None:
            return self.reply
        last = body["messages"][-1]["content"] if "messages" in body else prompt
        return f"echo: {last}"

    def _chat_steps(self, prompt: str, k: int, max_tokens: int) -> list[tuple[str, list[tuple[str, float]]]]:
        """The generated tokens with their top ``k`` alternatives: ``chat_preamble`` first (a
        model writing the prefix itself, no number among its alternatives), then the answer's
        first token and, with ``split_numbers``, the token after it (the next digit or the end)."""
        steps = [(token, [(token, -0.01), ("The", -4.6)][:k]) for token in self.chat_preamble]
        top = self._first_tokens(prompt, k)
        if top:
            steps.append((top[0][0], top))
            after = self._first_tokens(prompt + top[0][0], k) if self.split_numbers else []
            if after:
                steps.append((after[0][0], after))
        return steps[:max_tokens]

    def _first_tokens(self, prompt: str, k: int) -> list[tuple[str, float]]:
        """The top ``k`` alternatives for the first generated token. With ``split_numbers`` they
        follow the tokenizer: first digits (mass pooled over the numbers they start), or, after a
        prompt that ends in the start of a number, its next digit or the end (".")."""
        if not self.split_numbers:
            return self._top(k)
        answer = re.search(r"\d*$", prompt).group()  # type: ignore[union-attr]
        before = self._answer_mass(answer, False) if answer else 1.0
        if before <= 0:
            return []
        ranked = sorted(self._next_tokens(answer, "", before).items(), key=lambda kv: -kv[1])
        return [(token, lp) for token, lp in ranked[:k] if lp > _log(0.0)]

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


def _log(p: float) -> float:
    return math.log(p) if p > 0 else -9999.0  # JSON has no -inf; servers send a very low number


def _masked(key: str) -> str:
    """A key as OpenAI's 401 quotes it: a few characters each end, asterisks between."""
    return key[:3] + "*" * max(len(key) - 7, 0) + key[-4:] if len(key) > 8 else "*" * len(key)


def _completion_logprobs(top: list[tuple[str, float]]) -> Body:
    token, logprob = top[0]
    return {"tokens": [token], "token_logprobs": [logprob], "top_logprobs": [dict(top)], "text_offset": [0]}


def _chat_logprobs(steps: list[tuple[str, list[tuple[str, float]]]]) -> Body:
    content = []
    for token, top in steps:
        alternatives = [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in top]
        logprob = dict(top).get(token, top[0][1] if top else 0.0)
        content.append({"token": token, "logprob": logprob, "bytes": list(token.encode()), "top_logprobs": alternatives})
    return {"content": content, "refusal": None}


def unused_port() -> int:
    """A port on 127.0.0.1 that nobody listens on (connecting to it is refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SilentServer:
    """Accepts connections on 127.0.0.1, reads what arrives, and never answers."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self._sock.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/v1"
        self._stopping = threading.Event()
        self._held: list[socket.socket] = []
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, name="silent-server", daemon=True)

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            conn.setblocking(False)
            self._held.append(conn)
            self.connections += 1

    def __enter__(self) -> SilentServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        for conn in self._held:
            conn.close()
        self._sock.close()


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
