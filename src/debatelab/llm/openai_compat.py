"""OpenAI-compatible backend (OpenAI, vLLM, llama.cpp server, Ollama) through the official SDK.

Each batch runs on a fresh client inside one ``asyncio.run``. The SDK's own retries are off: every
attempt goes through :mod:`.retry` (bounded in count and time, honouring Retry-After) and holds a
slot of an adaptive concurrency limit (:mod:`.concurrency`) that halves on 429s and persists across
batches. A request that fails for good comes back with ``error`` set, failing only its debate;
401/403/404 mean the configuration is wrong, so they stop the run. So does a server that cannot be
reached at all: a refused connection (or an unknown host) before the server ever answered stops the
run at once, and a server that never answered any attempt of a request (silent, or slower than
``timeout``) stops it once that request gave up, each as one line, ``cannot reach URL: why``.

Keys (:mod:`.openai_keys`): from ``$api_key_env`` or ``api_key_file``, refused before any request
if malformed, and redacted from every message that could quote them. Surveys
(:mod:`.openai_scoring`): exact by echo where the server allows it, else from the top
log-probabilities where the answer starts, a split "10" from what follows its "1"
(``source="top_k"`` when they miss an option), else a parsed greedy answer
(``source="generated"``), never silently; each kind counted in ``usage.extra``. Request bodies and
replies: :mod:`.openai_wire`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Awaitable, Callable, Coroutine, Sequence, TypeVar

from ..errors import DebatelabError, RunFailed
from .base import (LLM, REQUEST_COUNTERS, Completion, Conditioning, GenerateRequest, OptionScores, Prompt, Purpose,
                   ScoreRequest, Usage)
from .concurrency import AdaptiveLimit, Gate
from .openai_keys import redact, resolve_key
from .openai_scoring import SCORE_HINT, EchoUnsupported, OptionScorer, top_logprobs_of
from .openai_template import resolve_template
from .openai_wire import (Batch, WireReply, Unreachable, chat_messages, connect_failure, cut_at_stop, gather_in_order,
                          normalise_url, read_reply)
from .options import BackendOptions
from .retry import GaveUp, RetryPolicy, is_transient, status_of, with_retries

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
MAX_STOP = 4  # OpenAI rejects requests with more stop strings than this
# Chat APIs cannot portably prefill the assistant turn, so the prefix becomes an instruction.
GENERATE_HINT = 'Begin your answer with: "{}"'
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


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # Called from inside an event loop (e.g. a notebook), where asyncio.run refuses to start.
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


class OpenAICompatLLM(LLM):
    """One model behind an OpenAI-compatible server; a fresh client per batch (nothing to close)."""

    def __init__(self, model: str, options: BackendOptions):
        self._openai = _import_openai()
        self.model = model
        self.options = options
        self.top_logprobs = top_logprobs_of(options)
        self.base_url = options.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        self._api_key = resolve_key(options, self.base_url)
        self.template = resolve_template(options)
        self._scorer = OptionScorer(self, options.api, self.top_logprobs, options.score_echo,
                                    refused=self._openai.BadRequestError, prefill=options.chat_prefill)
        self._reached = False  # the server has answered (anything) at least once
        self._policy = RetryPolicy(options.max_retries, options.retry_budget, options.retry_backoff)
        self.limit = AdaptiveLimit(options.concurrency)
        self.usage: Usage = Usage(extra={**{name: 0 for name in REQUEST_COUNTERS}, "concurrency": options.concurrency})

    def identity(self) -> dict[str, Any]:
        ident = {"backend": "openai", "model": self.model, "api": self.options.api,
                 "base_url": normalise_url(self.base_url), "top_logprobs": self.top_logprobs}
        if self.options.api == "completions":
            ident["score_echo"] = self.options.score_echo
        if self.template is not None:  # absent otherwise, so runs made before it keep their ids
            ident.update(self.template.identity())
        if self.options.api == "chat" and self.options.chat_prefill != "instruction":
            ident["chat_prefill"] = self.options.chat_prefill
        return ident

    # --- what the model conditions on ----------------------------------------------------------

    def raw_text(self, prompt: Prompt) -> str:
        """The text a completions request sends: the chat template rendered here, or the flat text."""
        return self.template.wire_text(prompt) if self.template is not None else prompt.flat_text()

    def conditioning(self, prompt: Prompt, purpose: Purpose = "generate") -> Conditioning:
        if self.options.api == "completions":
            if self.template is not None:
                return self.template.conditioning(prompt, purpose)
            how = "flat text, no chat template; the assistant prefix appended"
            if purpose == "score":
                how += ("; options scored exactly by echo where the server allows it, else from the first answer "
                        "token's top alternatives, with no end of the answer after them")
            return Conditioning(prompt.flat_text(), True, how)
        hint = SCORE_HINT if purpose == "score" else GENERATE_HINT
        messages, extra = self._chat_request(prompt, hint)
        text = json.dumps({"messages": messages, **extra}, sort_keys=True, ensure_ascii=False)
        if self.options.chat_prefill == "continue":
            prefix = "the assistant's message continued from the prefix (continue_final_message)"
        else:
            prefix = "the prefix asked for by an instruction in the user message, not prefilled"
        return Conditioning(text, False, f"the server's chat template (its text unseen by debatelab); {prefix}")

    def _chat_request(self, prompt: Prompt, hint: str) -> tuple[list[dict[str, str]], dict[str, Any]]:
        """The chat messages for ``prompt`` and the extra body fields that go with them."""
        if self.options.chat_prefill == "continue" and prompt.assistant_prefix:
            messages = chat_messages(Prompt(messages=prompt.messages, text=prompt.text), hint)
            messages.append({"role": "assistant", "content": prompt.assistant_prefix})
            return messages, {"continue_final_message": True, "add_generation_prompt": False}
        return chat_messages(prompt, hint), {}

    def generate(self, requests: Sequence[GenerateRequest]) -> list[Completion]:
        return self._run_batch(requests, self._generate_one, lambda error: Completion("", error=error))

    def score_options(self, requests: Sequence[ScoreRequest]) -> list[OptionScores]:
        return self._run_batch(requests, self._scorer.score, lambda error: OptionScores((), error=error))

    # --- one batch, and what stops it ----------------------------------------------------------

    def _run_batch(
        self, requests: Sequence[Q], one: Callable[[Batch, Q], Awaitable[T]], failed: Callable[[str], T]
    ) -> list[T]:
        if not requests:
            return []

        async def main() -> list[T]:
            # max_retries=0: every attempt is ours to count, gate and bound (see .retry).
            client = self._openai.AsyncOpenAI(
                base_url=self.base_url, api_key=self._api_key, timeout=self.options.timeout, max_retries=0
            )
            batch = Batch(client, Gate(self.limit))
            async with client:
                return await gather_in_order([self._guarded(batch, one, r, failed) for r in requests])

        try:
            results = run_sync(main())
        except DebatelabError:
            raise
        except Exception as exc:  # _guarded turns API errors into results; a safety net that never shows the key
            raise RunFailed(self._where(f"unexpected {self.describe(exc)}")) from None
        finally:
            self.usage.extra["concurrency"] = self.limit.limit
        self.usage.calls += 1
        return results

    async def _guarded(
        self, batch: Batch, one: Callable[[Batch, Q], Awaitable[T]], request: Q, failed: Callable[[str], T]
    ) -> T:
        """One request's result, or ``failed(error)`` if it failed for good; raises only to stop the run."""
        try:
            return await one(batch, request)
        except Unreachable as exc:
            raise RunFailed(self._cannot_reach(str(exc))) from None
        except GaveUp as exc:
            if not self._reached and isinstance(exc.cause, (self._openai.APIConnectionError, asyncio.TimeoutError)):
                raise RunFailed(self._cannot_reach(self._silence(exc))) from None
            error = f"{exc}: {self.describe(exc.cause)}"
        except self._openai.APIStatusError as exc:
            if exc.status_code in FATAL_HINTS:
                hint = FATAL_HINTS[exc.status_code]
                raise RunFailed(self._where(f"{self.describe(exc)} ({hint})")) from None
            error = f"rejected: {self.describe(exc)}"  # e.g. 400 or 422: this request only
        self.usage.extra["failed_requests"] += 1
        return failed(error)

    def _silence(self, exc: GaveUp) -> str:
        cause = exc.cause
        if isinstance(cause, (self._openai.APITimeoutError, asyncio.TimeoutError)):
            return (f"no answer within {self.options.timeout:g} s ({exc.attempts} attempt(s); if the server "
                    "is only slow, raise backend.timeout)")
        why = connect_failure(cause) or self.describe(cause)
        return f"{why} ({exc.attempts} attempt(s))"

    def _cannot_reach(self, why: str) -> str:
        return (f"cannot reach {normalise_url(self.base_url)}: {why} (openai:{self.model}; check base_url and "
                "that the server is running)")

    def describe(self, exc: BaseException) -> str:
        """One redacted line: the error's type and text, and the low-level cause of a connection error."""
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        cause = exc.__cause__
        if isinstance(exc, self._openai.APIConnectionError) and cause is not None:
            text += f" ({type(cause).__name__}: {cause})" if str(cause) else f" ({type(cause).__name__})"
        line = redact(" ".join(text.split()), self._api_key)
        return line if len(line) <= MAX_MESSAGE else line[: MAX_MESSAGE - 3] + "..."

    def _where(self, message: str) -> str:
        return f"openai backend ({self.model} at {normalise_url(self.base_url)}): {message}"

    def once(self, flag: str, message: str) -> None:
        """Log ``message`` the first time ``flag`` is raised for this backend."""
        if not self.usage.extra.get(flag):
            self.usage.extra[flag] = True
            log.warning("%s", self._where(message))

    # --- generation ----------------------------------------------------------------------------

    async def _generate_one(self, batch: Batch, req: GenerateRequest) -> Completion:
        params: dict[str, Any] = {
            "temperature": req.temperature, "max_tokens": req.max_tokens, "top_p": req.top_p
        }
        # The template's end of turn first: servers stop at their own end-of-text token, which
        # for some models is not the one their template ends a turn with (the cut below applies
        # every stop string, so one that does not fit in MAX_STOP still works).
        stops = ((self.template.end_text,) if self.template is not None else ()) + tuple(req.stop)
        if stops:
            params["stop"] = list(dict.fromkeys(stops))[:MAX_STOP]
        if req.seed is not None:
            params["seed"] = req.seed
        reply = await self.call(batch, req.prompt, GENERATE_HINT, params)
        text, cut = cut_at_stop(reply.text, req.stop)
        reason = "length" if reply.finish_reason == "length" and not cut else "stop"
        return Completion(text, reply.prompt_tokens, reply.completion_tokens, reason)

    # --- one request ---------------------------------------------------------------------------

    async def call(self, batch: Batch, prompt: Prompt, hint: str, params: dict[str, Any]) -> WireReply:
        """One request, retried as :mod:`.retry` allows; its token counts are added to usage."""
        send = self._sender(batch.client, prompt, hint, params)
        reply = await self._request(batch, send, lambda response: read_reply(response, prompt, self.options.api))
        self.usage.prompt_tokens += reply.prompt_tokens
        self.usage.completion_tokens += reply.completion_tokens
        return reply

    async def complete(self, batch: Batch, prompts: list[str], params: dict[str, Any],
                       read: Callable[[Any], T], probe: bool = False) -> T:
        """One legacy-completions request for several prompts at once (echo scoring), retried
        like any other; ``read`` turns its body into the result and counts nothing. A ``probe``
        (no echo has succeeded yet) that the server answers with 500 raises
        :class:`EchoUnsupported` at once: llama-cpp-python answers so to several prompts in one
        request, and retrying would only repeat it (429s, 503s and timeouts are retried)."""
        def send(timeout: float) -> Awaitable[Any]:
            return batch.client.completions.create(model=self.model, prompt=prompts, timeout=timeout, **params)

        if not probe:
            return await self._request(batch, send, read)
        try:
            return await self._request(batch, send, read, lambda exc: self._transient(exc) and status_of(exc) != 500)
        except self._openai.InternalServerError as exc:
            raise EchoUnsupported(f"the server answered {self.describe(exc)}") from None

    async def _request(self, batch: Batch, send: Callable[[float], Awaitable[Any]], read: Callable[[Any], T],
                       transient: Callable[[BaseException], bool] | None = None) -> T:
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

        return await with_retries(attempt, self._policy, transient or self._transient, on_retry=self._count_retry,
                                  slot=batch.gate.slot)

    def _sender(
        self, client: Any, prompt: Prompt, hint: str, params: dict[str, Any]
    ) -> Callable[[float], Awaitable[Any]]:
        if self.options.api == "chat":
            messages, extra = self._chat_request(prompt, hint)
            body = {"extra_body": extra} if extra else {}
            return lambda timeout: client.chat.completions.create(
                model=self.model, messages=messages, timeout=timeout, **params, **body)
        text = self.raw_text(prompt)
        return lambda timeout: client.completions.create(model=self.model, prompt=text, timeout=timeout, **params)

    def _transient(self, exc: BaseException) -> bool:
        return is_transient(exc, self._openai)

    def _count_retry(self, exc: BaseException) -> None:
        self.usage.extra["retries"] += 1


def load_openai(name: str, options: BackendOptions) -> OpenAICompatLLM:
    return OpenAICompatLLM(name, options)
