"""OpenAI-compatible backend (OpenAI, vLLM, llama.cpp server, Ollama) through the official SDK.

Each batch runs on a fresh client inside one ``asyncio.run``. The SDK's own retries are off: every
attempt goes through :mod:`.retry` (bounded in count and time, honouring Retry-After) and holds a
slot of an adaptive concurrency limit (:mod:`.concurrency`) that halves on 429s and persists across
batches. A request that fails for good comes back with ``error`` set, failing only its debate;
401/403/404 mean the configuration is wrong, so they stop the run. The key never leaves the HTTP
header: every message that could quote it (servers do) is redacted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import math
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Coroutine, Sequence, TypeVar
from urllib.parse import urlsplit, urlunsplit

from ..errors import DebatelabError, RunFailed, read_text
from .base import Completion, GenerateRequest, OptionScores, Prompt, ScoreRequest, Usage
from .concurrency import AdaptiveLimit, Gate
from .options import BackendOptions
from .retry import GaveUp, MalformedResponse, RetryPolicy, is_transient, with_retries

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
    key = read_text(path, "API key file").strip()
    if not key or any(c.isspace() for c in key):
        raise DebatelabError(f"API key file {path} must hold just the key, on one line")
    return key


def resolve_key(options: BackendOptions, base_url: str) -> str:
    """From $api_key_env, else api_key_file; local servers need none."""
    key = os.environ.get(options.api_key_env, "").strip()
    if not key and options.api_key_file:
        key = read_key_file(Path(options.api_key_file).expanduser())
    if not key and not is_loopback(base_url):
        raise DebatelabError(
            f"missing API key: set ${options.api_key_env} or api_key_file (or point base_url at a local server)"
        )
    return key or NO_KEY


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
    return top + math.log(sum(math.exp(v - top) for v in values))


def map_alternatives(alternatives: Sequence[tuple[str, float]], options: Sequence[str]) -> tuple[float, ...]:
    # "7" and " 7" are the same answer, so alternatives that strip to one text pool their mass.
    by_text: dict[str, list[float]] = {}
    for token, logprob in alternatives:
        by_text.setdefault(token.strip(), []).append(logprob)
    return tuple(logsumexp(by_text.get(o.strip(), [])) for o in options)


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
        self.base_url = options.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        self._api_key = resolve_key(options, self.base_url)
        self._logprobs_ok = options.top_logprobs > 0
        self._policy = RetryPolicy(options.max_retries, options.retry_budget, options.retry_backoff)
        self.limit = AdaptiveLimit(options.concurrency)
        self.usage = Usage(extra={"retries": 0, "rate_limited": 0, "failed_requests": 0,
                                  "concurrency": options.concurrency})

    def identity(self) -> dict[str, Any]:
        return {"backend": "openai", "model": self.model, "api": self.options.api,
                "base_url": normalise_url(self.base_url), "top_logprobs": self.options.top_logprobs}

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
        except self._openai.APIError as exc:  # _guarded turns these into results; a safety net
            raise RunFailed(self._where(self._describe(exc))) from None
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
        except GaveUp as exc:
            error = f"{exc}: {self._describe(exc.cause)}"
        except self._openai.APIStatusError as exc:
            if exc.status_code in FATAL_HINTS:
                hint = FATAL_HINTS[exc.status_code]
                raise RunFailed(self._where(f"{self._describe(exc)} ({hint})")) from None
            error = f"rejected: {self._describe(exc)}"  # e.g. 400 or 422: this request only
        self.usage.extra["failed_requests"] += 1
        return failed(error)

    def _describe(self, exc: BaseException) -> str:
        """One redacted line: the error's type and text, and the low-level cause of a connection error."""
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        cause = exc.__cause__
        if isinstance(exc, self._openai.APIConnectionError) and cause is not None:
            text += f" ({type(cause).__name__}: {cause})" if str(cause) else f" ({type(cause).__name__})"
        line = self._redact(" ".join(text.split()))
        return line if len(line) <= MAX_MESSAGE else line[: MAX_MESSAGE - 3] + "..."

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key != NO_KEY else text

    def _where(self, message: str) -> str:
        return f"openai backend ({self.model} at {normalise_url(self.base_url)}): {message}"

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

    async def _score_one(self, batch: _Batch, req: ScoreRequest) -> OptionScores:
        greedy: dict[str, Any] = {"temperature": 0} if req.seed is None else {"temperature": 0, "seed": req.seed}
        if self._logprobs_ok:
            k = self.options.top_logprobs
            asks = {"logprobs": True, "top_logprobs": k} if self.options.api == "chat" else {"logprobs": k}
            try:
                reply = await self._call(batch, req.prompt, SCORE_HINT, {**greedy, "max_tokens": 1, **asks})
            except self._openai.BadRequestError:
                self._logprobs_ok = False  # e.g. reasoning models reject logprobs: stop asking
            else:
                if reply.alternatives:
                    token = reply.token if reply.token is not None else reply.text
                    return OptionScores(map_alternatives(reply.alternatives, req.options), "logprobs", token)
        params = {**greedy, "max_tokens": FALLBACK_MAX_TOKENS}
        reply = await self._call(batch, req.prompt, SCORE_HINT, params)
        choice = parse_option(reply.text, req.options)
        scores = tuple(0.0 if i == choice else -math.inf for i in range(len(req.options)))
        return OptionScores(scores, "generated", reply.text)

    async def _call(self, batch: _Batch, prompt: Prompt, hint: str, params: dict[str, Any]) -> Reply:
        """One request, retried as :mod:`.retry` allows; its token counts are added to usage."""
        send = self._sender(batch.client, prompt, hint, params)

        async def attempt(seconds_left: float) -> Reply:
            try:
                response = await send(min(self.options.timeout, seconds_left))
            except self._openai.RateLimitError:
                self.usage.extra["rate_limited"] += 1
                self.limit.rate_limited()
                raise
            self.limit.succeeded()
            return self._read(response, prompt)

        reply = await with_retries(attempt, self._policy, self._transient, on_retry=self._count_retry,
                                   slot=batch.gate.slot)
        self.usage.prompt_tokens += reply.prompt_tokens
        self.usage.completion_tokens += reply.completion_tokens
        return reply

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
