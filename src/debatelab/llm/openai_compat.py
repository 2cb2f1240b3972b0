"""OpenAI-compatible backend (OpenAI, vLLM, llama.cpp server, Ollama) through the official SDK.

Each batch runs on a fresh client inside one ``asyncio.run``. The SDK's own retries are off: every
attempt goes through :mod:`.retry` (bounded in count and time, honouring Retry-After) and holds a
slot of an adaptive concurrency limit (:mod:`.concurrency`) that halves on 429s and persists across
batches. A request that fails for good comes back with ``error`` set, failing only its debate;
401/403/404 mean the configuration is wrong, so they stop the run. So does a server that cannot be
reached at all: a refused connection (or an unknown host) before the server ever answered stops the
run at once, and a server that never answered any attempt of a request (silent, or slower than
``timeout``) stops it once that request gave up, each as one line, ``cannot reach URL: why``.

Keys: the key comes from ``$api_key_env`` or ``api_key_file`` and must be printable ASCII without
spaces; any other key (a newline, tab, control or non-ASCII character, a space) is refused before
any request, without being shown. The key never leaves the HTTP header: every message that could
quote it (servers do, whole or masked as ``sk-ab***wxyz``) is redacted.

Surveys (``score_options``), within each API's documented caps (``options.TOP_LOGPROBS_CAP``: chat
``top_logprobs`` <= 20, legacy completions ``logprobs`` <= 5; ``top_logprobs`` None means the cap,
a value over it is a config error):

- ``completions`` with ``score_echo`` (default): exact scores. One request per survey carries the
  prompt and prompt + each option (``echo=True, max_tokens=0``); an option's score is the sum of
  the log-probabilities of its tokens, from the first token where the prompts part, so options of
  several tokens (a "10" split into "1" + "0") are exact too. An option that is the start of
  another in tokens ("1" of "10") also needs the answer to end there: it is multiplied by
  P(the next token does not continue the word), read from the top alternatives after it. vLLM and
  other servers that implement echo support this; OpenAI's gpt-3.5-turbo-instruct refuses echo
  with logprobs (400) and llama.cpp ignores echo. Either is detected on the first survey (the
  same survey without echo then succeeds), logged once, and scoring continues as below.
- otherwise: the top ``top_logprobs`` alternatives of the first answer token (one 1-token request;
  mass outside them is lost, those options get -inf). With ``completions``, when an alternative is
  the start of an option not among them ("1" of "10"), a second 1-token request on prompt + that
  token gives P("10") = P("1") P("0" | "1") and makes "1" end there, as above.
- a server that refuses logprobs (400, where the same survey without them succeeds) or answers
  without them: the greedy answer is parsed (``source = "generated"``), logged once.

Never silently: every survey whose distribution is not true model log-probabilities comes back
with ``source = "generated"`` and is counted in ``usage.extra["survey_fallbacks"]``;
``survey_exact`` and ``survey_top_k`` count the others by method.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import logging
import math
import os
import re
import socket
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Coroutine, Sequence, TypeVar
from urllib.parse import urlsplit, urlunsplit

from ..errors import DebatelabError, RunFailed, read_text
from .base import Completion, GenerateRequest, OptionScores, Prompt, ScoreRequest, Usage
from .concurrency import AdaptiveLimit, Gate
from .options import TOP_LOGPROBS_CAP, BackendOptions, top_logprobs_error
from .retry import GaveUp, MalformedResponse, RetryPolicy, is_transient, with_retries

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
NO_KEY = "EMPTY"  # local servers ignore the key, but the SDK insists on having one
MAX_STOP = 4  # OpenAI rejects requests with more stop strings than this
FALLBACK_MAX_TOKENS = 8
# Chat APIs cannot portably prefill the assistant turn, so the prefix becomes an instruction.
GENERATE_HINT = 'Begin your answer with: "{}"'
# For scoring, the first generated token must be the option itself, not a repeat of the prefix.
SCORE_HINT = 'Your answer continues the text "{}". Reply with only what follows it.'
# Statuses that no retry can fix and that would fail every request alike: stop the run.
FATAL_HINTS = {401: "check the API key", 403: "check the API key's permissions",
               404: "check the model name and base_url"}
MAX_MESSAGE = 400  # characters of a server's error text kept in a failed request's error
KEY_RULE = "an API key is printable ASCII without spaces"
# A key as servers quote it masked (OpenAI's 401: "sk-abc1***...***wxyz"): redacted whole.
MASKED_KEY = re.compile(r"[\w-]*\*{3,}[\w-]*")
KEY_PIECE = re.compile(r"[\w.-]{8,}")  # runs this long that occur in the key are redacted too
COUNTERS = ("retries", "rate_limited", "failed_requests", "survey_exact", "survey_top_k", "survey_fallbacks")

Q = TypeVar("Q")
T = TypeVar("T")


def _import_openai() -> Any:
    try:
        import openai
        import tenacity  # noqa: F401  (used by .retry; checked here for the install hint)
    except ImportError as exc:
        hint = "pip install 'debatelab[openai]'"
        raise DebatelabError(f"the openai backend needs the openai SDK: {hint}") from exc
    return openai


# --- keys ----------------------------------------------------------------------------------------

_NAMED = {"\n": "a newline", "\r": "a carriage return", "\t": "a tab", " ": "a space", "\0": "a NUL character"}


def key_problem(key: str) -> str | None:
    """What is wrong with ``key`` as an HTTP bearer token, without quoting any of it; None if fine."""
    for i, char in enumerate(key, start=1):
        if char in _NAMED:
            what = _NAMED[char]
        elif ord(char) < 0x20 or ord(char) == 0x7F or 0x80 <= ord(char) <= 0x9F:
            what = "a control character"
        elif ord(char) > 0x7E:
            what = "a non-ASCII character"
        else:
            continue
        return f"contains {what} (character {i} of {len(key)})"
    return None


def check_key(key: str, source: str) -> str:
    problem = key_problem(key)
    if problem:
        raise DebatelabError(f"the API key in {source} {problem}; {KEY_RULE} (the key is not shown)")
    return key


def read_key_file(path: Path) -> str:
    """The key in ``path``, which only its owner may read or write (as ssh insists for its keys)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        raise DebatelabError(f"API key file not found: {path}") from None
    except OSError as exc:
        raise DebatelabError(f"cannot read API key file {path}: {exc.strerror}") from None
    if mode & 0o077:
        raise DebatelabError(f"API key file {path} has mode {mode:04o}, open to group or others: chmod 600 {path}")
    key = read_text(path, "API key file").rstrip("\r\n")  # line endings are not part of the key
    if not key:
        raise DebatelabError(f"API key file {path} is empty")
    return check_key(key, f"API key file {path}")


def resolve_key(options: BackendOptions, base_url: str) -> str:
    """From $api_key_env, else api_key_file; local servers need none. A malformed key is refused."""
    key = os.environ.get(options.api_key_env, "")
    if key:
        check_key(key, f"${options.api_key_env}")
    elif options.api_key_file:
        key = read_key_file(Path(options.api_key_file).expanduser())
    if not key and not is_loopback(base_url):
        raise DebatelabError(
            f"missing API key: set ${options.api_key_env} or api_key_file (or point base_url at a local server)"
        )
    return key or NO_KEY


def redact(text: str, key: str) -> str:
    """``text`` with the key masked as ``***``: whole, escaped (repr, JSON), masked by a server
    (``sk-ab***wxyz``), or in pieces of 8 or more characters."""
    if key and key != NO_KEY:
        for form in sorted({key, repr(key)[1:-1], json.dumps(key)[1:-1]}, key=len, reverse=True):
            text = text.replace(form, "***")
        text = KEY_PIECE.sub(lambda m: "***" if _shares_piece(m.group(), key) else m.group(), text)
    return MASKED_KEY.sub("***", text)


def _shares_piece(run: str, key: str, size: int = 8) -> bool:
    return any(run[i:i + size] in key for i in range(len(run) - size + 1))


# --- URLs, prompts, parsing ----------------------------------------------------------------------

def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def normalise_url(url: str) -> str:
    """Scheme, host, port and path only, so credentials or query strings never reach identity()."""
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").lower()
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme.lower(), netloc, parts.path.rstrip("/"), "", ""))


def chat_messages(prompt: Prompt, hint: str) -> list[dict[str, str]]:
    messages = [m.as_dict() for m in prompt.messages] or [{"role": "user", "content": prompt.text or ""}]
    if prompt.assistant_prefix.strip():
        note = hint.format(prompt.assistant_prefix.strip())
        if messages[-1]["role"] == "user":
            messages[-1] = {"role": "user", "content": f"{messages[-1]['content']}\n\n{note}"}
        else:
            messages.append({"role": "user", "content": note})
    return messages


def strip_prefix(text: str, prefix: str) -> str:
    """Drop the assistant prefix if the model repeated it, leaving what a continuation would be."""
    head, body = prefix.strip(), text.lstrip()
    if not head or not body.startswith(head):
        return text
    rest = body[len(head):]
    # A raw backend continuing "Answer: " starts without a space; one continuing "Answer:" with one.
    return rest.lstrip() if prefix[-1].isspace() else rest


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    cuts = [text.find(s) for s in stops if s and s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


def parse_option(text: str, options: Sequence[str]) -> int | None:
    """The longest option ``text`` starts with as a whole token: "10/10" -> "10", "Seven" -> None."""
    body, best, best_len = text.strip(), None, 0
    for i, option in enumerate(o.strip() for o in options):
        whole = body.startswith(option) and (len(body) == len(option) or not body[len(option)].isalnum())
        if option and whole and len(option) > best_len:
            best, best_len = i, len(option)
    return best


def logsumexp(values: Sequence[float]) -> float:
    if not values:
        return -math.inf
    top = max(values)
    if top == -math.inf:
        return top
    return top + math.log(sum(math.exp(v - top) for v in values))


def map_alternatives(alternatives: Sequence[tuple[str, float]], options: Sequence[str]) -> tuple[float, ...]:
    # "7" and " 7" are the same answer, so alternatives that strip to one text pool their mass.
    by_text: dict[str, list[float]] = {}
    for token, logprob in alternatives:
        by_text.setdefault(token.strip(), []).append(logprob)
    return tuple(logsumexp(by_text.get(o.strip(), [])) for o in options)


def log_word_ends(alternatives: Sequence[tuple[str, float]]) -> float:
    """log P(the next token does not continue the word): 1 minus the alternatives that start with
    a letter or digit, as :func:`parse_option` reads a whole token (mass outside them counts as an end)."""
    going_on = sum(math.exp(lp) for token, lp in alternatives if token[:1].isalnum())
    return math.log1p(-going_on) if going_on < 1 else -math.inf


@dataclass(frozen=True)
class EchoRow:
    """One echoed prompt: its tokens, each token's log-probability (the first has none) and the
    top alternatives at each position."""

    tokens: tuple[str, ...]
    logprobs: tuple[float | None, ...]
    tops: tuple[dict[str, float] | None, ...]


class EchoUnsupported(Exception):
    """The server answered an echo request without the prompt's log-probabilities."""


def echo_scores(base: EchoRow, rows: Sequence[EchoRow]) -> tuple[float, ...]:
    """Exact option scores from echoed ``base`` (the prompt) and ``rows`` (prompt + each option).

    Scoring starts at the first token where any option's tokens part from the prompt's, so every
    option is scored in the same context (a prompt ending in a space that the option's first token
    absorbs is handled). An option whose tokens start another option's also gets
    :func:`log_word_ends` at the position after it (read from that longer option's alternatives)."""
    def common(a: Sequence[str], b: Sequence[str]) -> int:
        n = 0
        while n < len(a) and n < len(b) and a[n] == b[n]:
            n += 1
        return n

    start = min(common(base.tokens, row.tokens) for row in rows)
    if start < 1:  # the very first token has no log-probability: nothing to compare against
        raise EchoUnsupported("the options changed the prompt's first token")
    parts = [row.tokens[start:] for row in rows]
    scores = []
    for row, part in zip(rows, parts):
        values = row.logprobs[start:]
        if not part:
            scores.append(-math.inf)
            continue
        if any(v is None for v in values):
            raise EchoUnsupported("the echoed prompt lacks log-probabilities")
        scores.append(sum(v for v in values if v is not None))
    for i, part in enumerate(parts):
        longer = next((j for j, other in enumerate(parts)
                       if len(other) > len(part) > 0 and other[: len(part)] == part), None)
        if longer is not None:
            at, row = start + len(part), rows[longer]
            seen = dict((row.tops[at] if at < len(row.tops) else None) or {})
            actual = row.logprobs[at]
            if actual is not None:
                seen[row.tokens[at]] = actual
            scores[i] += log_word_ends(list(seen.items()))
    return tuple(scores)


# --- async plumbing ------------------------------------------------------------------------------

def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # Called from inside an event loop (e.g. a notebook), where asyncio.run refuses to start.
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def gather_in_order(coros: Sequence[Awaitable[T]]) -> list[T]:
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        # Stop the siblings before the client is closed under them.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def connect_failure(exc: BaseException) -> str | None:
    """Why a connection could not be made at all ("connection refused", ...), or None when the
    failure came after connecting (a reset, a truncated answer) or was a timeout."""
    seen: set[int] = set()
    link: BaseException | None = exc
    connect = False
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if isinstance(link, ConnectionRefusedError):
            return "connection refused"
        if isinstance(link, socket.gaierror):
            return "host name not found"
        if isinstance(link, TimeoutError) or "Timeout" in type(link).__name__:
            return None
        connect = connect or type(link).__name__ == "ConnectError"
        if connect and isinstance(link, OSError) and link.strerror:
            return link.strerror.lower()
        link = link.__cause__ or link.__context__
    return "connection failed" if connect else None


class Unreachable(Exception):
    """No connection could be made to a server that never answered: stop the run."""


@dataclass(frozen=True)
class Reply:
    text: str
    finish_reason: str
    token: str | None = None  # first generated token, when logprobs came back
    alternatives: tuple[tuple[str, float], ...] = ()
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class _Batch:
    """What one batch's requests share; made inside the batch's event loop."""

    client: Any
    gate: Gate


class OpenAICompatLLM:
    def __init__(self, model: str, options: BackendOptions):
        self._openai = _import_openai()
        self.model = model
        self.options = options
        cap = TOP_LOGPROBS_CAP[options.api]
        if options.top_logprobs is not None and options.top_logprobs > cap:
            raise DebatelabError(top_logprobs_error(options.top_logprobs, options.api))
        self.top_logprobs = cap if options.top_logprobs is None else options.top_logprobs
        self.base_url = options.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        self._api_key = resolve_key(options, self.base_url)
        self._logprobs_ok = self.top_logprobs > 0
        self._echo_ok = self._logprobs_ok and options.api == "completions" and options.score_echo
        self._reached = False  # the server has answered (anything) at least once
        self._policy = RetryPolicy(options.max_retries, options.retry_budget, options.retry_backoff)
        self.limit = AdaptiveLimit(options.concurrency)
        self.usage = Usage(extra={**{name: 0 for name in COUNTERS}, "concurrency": options.concurrency})

    def identity(self) -> dict[str, Any]:
        ident = {"backend": "openai", "model": self.model, "api": self.options.api,
                 "base_url": normalise_url(self.base_url), "top_logprobs": self.top_logprobs}
        if self.options.api == "completions":
            ident["score_echo"] = self.options.score_echo
        return ident

    def generate(self, requests: Sequence[GenerateRequest]) -> list[Completion]:
        return self._run_batch(requests, self._generate_one, lambda error: Completion("", error=error))

    def score_options(self, requests: Sequence[ScoreRequest]) -> list[OptionScores]:
        return self._run_batch(requests, self._score_one, lambda error: OptionScores((), error=error))

    def _run_batch(
        self, requests: Sequence[Q], one: Callable[[_Batch, Q], Awaitable[T]], failed: Callable[[str], T]
    ) -> list[T]:
        if not requests:
            return []

        async def main() -> list[T]:
            # max_retries=0: every attempt is ours to count, gate and bound (see .retry).
            client = self._openai.AsyncOpenAI(
                base_url=self.base_url, api_key=self._api_key, timeout=self.options.timeout, max_retries=0
            )
            batch = _Batch(client, Gate(self.limit))
            async with client:
                return await gather_in_order([self._guarded(batch, one, r, failed) for r in requests])

        try:
            results = run_sync(main())
        except DebatelabError:
            raise
        except Exception as exc:  # _guarded turns API errors into results; a safety net that never shows the key
            raise RunFailed(self._where(f"unexpected {self._describe(exc)}")) from None
        finally:
            self.usage.extra["concurrency"] = self.limit.limit
        self.usage.calls += 1
        return results

    async def _guarded(
        self, batch: _Batch, one: Callable[[_Batch, Q], Awaitable[T]], request: Q, failed: Callable[[str], T]
    ) -> T:
        """One request's result, or ``failed(error)`` if it failed for good; raises only to stop the run."""
        try:
            return await one(batch, request)
        except Unreachable as exc:
            raise RunFailed(self._cannot_reach(str(exc))) from None
        except GaveUp as exc:
            if not self._reached and isinstance(exc.cause, (self._openai.APIConnectionError, asyncio.TimeoutError)):
                raise RunFailed(self._cannot_reach(self._silence(exc))) from None
            error = f"{exc}: {self._describe(exc.cause)}"
        except self._openai.APIStatusError as exc:
            if exc.status_code in FATAL_HINTS:
                hint = FATAL_HINTS[exc.status_code]
                raise RunFailed(self._where(f"{self._describe(exc)} ({hint})")) from None
            error = f"rejected: {self._describe(exc)}"  # e.g. 400 or 422: this request only
        self.usage.extra["failed_requests"] += 1
        return failed(error)

    def _silence(self, exc: GaveUp) -> str:
        cause = exc.cause
        if isinstance(cause, (self._openai.APITimeoutError, asyncio.TimeoutError)):
            return (f"no answer within {self.options.timeout:g} s ({exc.attempts} attempt(s); if the server "
                    "is only slow, raise backend.timeout)")
        why = connect_failure(cause) or self._describe(cause)
        return f"{why} ({exc.attempts} attempt(s))"

    def _cannot_reach(self, why: str) -> str:
        return (f"cannot reach {normalise_url(self.base_url)}: {why} (openai:{self.model}; check base_url and "
                "that the server is running)")

    def _describe(self, exc: BaseException) -> str:
        """One redacted line: the error's type and text, and the low-level cause of a connection error."""
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        cause = exc.__cause__
        if isinstance(exc, self._openai.APIConnectionError) and cause is not None:
            text += f" ({type(cause).__name__}: {cause})" if str(cause) else f" ({type(cause).__name__})"
        line = self._redact(" ".join(text.split()))
        return line if len(line) <= MAX_MESSAGE else line[: MAX_MESSAGE - 3] + "..."

    def _redact(self, text: str) -> str:
        return redact(text, self._api_key)

    def _where(self, message: str) -> str:
        return f"openai backend ({self.model} at {normalise_url(self.base_url)}): {message}"

    def _once(self, flag: str, message: str) -> None:
        """Log ``message`` the first time ``flag`` is raised for this backend."""
        if not self.usage.extra.get(flag):
            self.usage.extra[flag] = True
            log.warning("%s", self._where(message))

    # --- generation --------------------------------------------------------------------------

    async def _generate_one(self, batch: _Batch, req: GenerateRequest) -> Completion:
        params: dict[str, Any] = {
            "temperature": req.temperature, "max_tokens": req.max_tokens, "top_p": req.top_p
        }
        if req.stop:
            params["stop"] = list(req.stop[:MAX_STOP])
        if req.seed is not None:
            params["seed"] = req.seed
        reply = await self._call(batch, req.prompt, GENERATE_HINT, params)
        text, cut = cut_at_stop(reply.text, req.stop)
        reason = "length" if reply.finish_reason == "length" and not cut else "stop"
        return Completion(text, reply.prompt_tokens, reply.completion_tokens, reason)

    # --- option scoring ----------------------------------------------------------------------

    async def _score_one(self, batch: _Batch, req: ScoreRequest) -> OptionScores:
        greedy: dict[str, Any] = {"temperature": 0} if req.seed is None else {"temperature": 0, "seed": req.seed}
        echo_refused: BaseException | None = None
        if self._echo_ok:
            try:
                scores = await self._score_echo(batch, req)
            except EchoUnsupported as exc:
                self._no_echo(str(exc))
            except self._openai.BadRequestError as exc:
                echo_refused = exc  # echo's fault only if the same survey without echo works
            else:
                self.usage.extra["survey_exact"] += 1
                return scores
        logprobs_refused: BaseException | None = None
        if self._logprobs_ok:
            k = self.top_logprobs
            asks = {"logprobs": True, "top_logprobs": k} if self.options.api == "chat" else {"logprobs": k}
            try:
                reply = await self._call(batch, req.prompt, SCORE_HINT, {**greedy, "max_tokens": 1, **asks})
            except self._openai.BadRequestError as exc:
                logprobs_refused = exc
            else:
                if echo_refused is not None:
                    self._no_echo(self._describe(echo_refused))
                if reply.alternatives:
                    scores = await self._top_k_scores(batch, req, reply, greedy)
                    self.usage.extra["survey_top_k"] += 1
                    return scores
                self._no_logprobs("the server answered without log-probabilities")
        params = {**greedy, "max_tokens": FALLBACK_MAX_TOKENS}
        reply = await self._call(batch, req.prompt, SCORE_HINT, params)  # a 400 here: the survey itself is bad
        if logprobs_refused is not None:
            self._no_logprobs(self._describe(logprobs_refused))
        choice = parse_option(reply.text, req.options)
        scores = tuple(0.0 if i == choice else -math.inf for i in range(len(req.options)))
        self.usage.extra["survey_fallbacks"] += 1
        return OptionScores(scores, "generated", reply.text)

    def _no_echo(self, why: str) -> None:
        self._echo_ok = False
        self._once("echo_refused", f"exact option scoring (echo) unavailable ({why}); surveys are scored from "
                                   f"the first answer token's top {self.top_logprobs} log-probabilities")

    def _no_logprobs(self, why: str) -> None:
        self._logprobs_ok = self._echo_ok = False
        self._once("logprobs_refused", f"no log-probabilities ({why}); surveys are parsed from greedy answers "
                                       "(source=generated, counted in survey_fallbacks)")

    async def _score_echo(self, batch: _Batch, req: ScoreRequest) -> OptionScores:
        base = req.prompt.flat_text()
        prompts = [base] + [base + option for option in req.options]
        params = {"temperature": 0, "max_tokens": 0, "echo": True, "logprobs": self.top_logprobs}

        def send(timeout: float) -> Awaitable[Any]:
            return batch.client.completions.create(model=self.model, prompt=prompts, timeout=timeout, **params)

        rows, tokens = await self._request(batch, send, lambda response: self._read_echo(response, prompts))
        self.usage.prompt_tokens += tokens
        scores = echo_scores(rows[0], rows[1:])
        best = max(range(len(scores)), key=scores.__getitem__) if scores else None
        return OptionScores(scores, "logprobs", req.options[best] if best is not None else None)

    @staticmethod
    def _read_echo(response: Any, prompts: Sequence[str]) -> tuple[list[EchoRow], int]:
        try:
            choices = sorted(response.choices, key=lambda c: c.index)
            usage = response.usage
            tokens = int(usage.prompt_tokens or 0) if usage else 0
            rows = []
            for choice, prompt in zip(choices, prompts):
                lp = choice.logprobs
                if lp is None or not lp.tokens or lp.token_logprobs is None or len(lp.token_logprobs) != len(lp.tokens):
                    raise EchoUnsupported("no log-probabilities for the echoed prompt")
                if not (choice.text or "").startswith(prompt):
                    raise EchoUnsupported("the prompt was not echoed")
                tops = list(lp.top_logprobs or [])
                tops += [None] * (len(lp.tokens) - len(tops))
                rows.append(EchoRow(tuple(lp.tokens), tuple(lp.token_logprobs), tuple(tops)))
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise MalformedResponse(f"unexpected response body ({type(exc).__name__})") from None
        if len(rows) != len(prompts) or len(choices) != len(prompts):
            raise EchoUnsupported(f"{len(choices)} choice(s) for {len(prompts)} prompts")
        return rows, tokens

    async def _top_k_scores(self, batch: _Batch, req: ScoreRequest, reply: Reply,
                            greedy: dict[str, Any]) -> OptionScores:
        token = reply.token if reply.token is not None else reply.text
        scores = list(map_alternatives(reply.alternatives, req.options))
        head = self._open_prefix(reply.alternatives, req.options, scores) if self.options.api == "completions" else None
        if head is not None:
            raw, head_lp = head
            prompt = Prompt(text=req.prompt.flat_text() + raw)
            params = {**greedy, "max_tokens": 1, "logprobs": self.top_logprobs}
            nxt = (await self._call(batch, prompt, SCORE_HINT, params)).alternatives
            stem = raw.strip()
            for i, option in enumerate(req.options):
                option = option.strip()
                if option == stem:
                    scores[i] += log_word_ends(nxt)
                elif option.startswith(stem) and scores[i] == -math.inf:
                    rest = [lp for t, lp in nxt if t == option[len(stem):]]
                    scores[i] = head_lp + logsumexp(rest)
        return OptionScores(tuple(scores), "logprobs", token)

    @staticmethod
    def _open_prefix(alternatives: Sequence[tuple[str, float]], options: Sequence[str],
                     scores: Sequence[float]) -> tuple[str, float] | None:
        """The likeliest alternative that starts an option not among the alternatives ("1" of "10")."""
        for raw, lp in sorted(alternatives, key=lambda a: -a[1]):
            stem = raw.strip()
            if stem and any(o.strip() != stem and o.strip().startswith(stem) and s == -math.inf
                            for o, s in zip(options, scores)):
                return raw, lp
        return None

    # --- one request -------------------------------------------------------------------------

    async def _call(self, batch: _Batch, prompt: Prompt, hint: str, params: dict[str, Any]) -> Reply:
        """One request, retried as :mod:`.retry` allows; its token counts are added to usage."""
        send = self._sender(batch.client, prompt, hint, params)
        reply = await self._request(batch, send, lambda response: self._read(response, prompt))
        self.usage.prompt_tokens += reply.prompt_tokens
        self.usage.completion_tokens += reply.completion_tokens
        return reply

    async def _request(self, batch: _Batch, send: Callable[[float], Awaitable[Any]], read: Callable[[Any], T]) -> T:
        async def attempt(seconds_left: float) -> T:
            try:
                response = await send(min(self.options.timeout, seconds_left))
            except self._openai.RateLimitError:
                self._reached = True
                self.usage.extra["rate_limited"] += 1
                self.limit.rate_limited()
                raise
            except self._openai.APIStatusError:
                self._reached = True
                raise
            except self._openai.APIConnectionError as exc:
                why = None if self._reached else connect_failure(exc)
                if why is not None:
                    raise Unreachable(why) from None
                raise
            self._reached = True
            self.limit.succeeded()
            return read(response)

        return await with_retries(attempt, self._policy, self._transient, on_retry=self._count_retry,
                                  slot=batch.gate.slot)

    def _sender(
        self, client: Any, prompt: Prompt, hint: str, params: dict[str, Any]
    ) -> Callable[[float], Awaitable[Any]]:
        if self.options.api == "chat":
            messages = chat_messages(prompt, hint)
            return lambda timeout: client.chat.completions.create(
                model=self.model, messages=messages, timeout=timeout, **params)
        text = prompt.flat_text()
        return lambda timeout: client.completions.create(model=self.model, prompt=text, timeout=timeout, **params)

    def _transient(self, exc: BaseException) -> bool:
        return is_transient(exc, self._openai)

    def _count_retry(self, exc: BaseException) -> None:
        self.usage.extra["retries"] += 1

    def _read(self, response: Any, prompt: Prompt) -> Reply:
        """The reply in a 2xx response; a body of the wrong shape is a (retryable) fault."""
        try:
            choice = response.choices[0]
            reply = self._chat_reply(choice, prompt) if self.options.api == "chat" else self._completion_reply(choice)
            usage = response.usage
            prompt_tokens = int(usage.prompt_tokens or 0) if usage else 0
            completion_tokens = int(usage.completion_tokens or 0) if usage else 0
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
            raise MalformedResponse(f"unexpected response body ({type(exc).__name__})") from None
        return dataclasses.replace(reply, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)

    @staticmethod
    def _chat_reply(choice: Any, prompt: Prompt) -> Reply:
        text = strip_prefix(choice.message.content or "", prompt.assistant_prefix)
        content = choice.logprobs.content if choice.logprobs else None
        if not content:
            return Reply(text, choice.finish_reason)
        first = content[0]
        alternatives = tuple((alt.token, alt.logprob) for alt in first.top_logprobs or ())
        return Reply(text, choice.finish_reason, first.token, alternatives)

    @staticmethod
    def _completion_reply(choice: Any) -> Reply:
        logprobs = choice.logprobs
        tops = logprobs.top_logprobs if logprobs else None
        if not tops or not tops[0]:
            return Reply(choice.text or "", choice.finish_reason)
        token = logprobs.tokens[0] if logprobs.tokens else None
        return Reply(choice.text, choice.finish_reason, token, tuple(tops[0].items()))


def load_openai(name: str, options: BackendOptions) -> OpenAICompatLLM:
    return OpenAICompatLLM(name, options)
