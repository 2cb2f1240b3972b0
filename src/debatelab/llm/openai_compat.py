"""OpenAI-compatible backend (OpenAI, vLLM, llama.cpp server, Ollama) through the official SDK.

Each batch runs on a fresh client inside one ``asyncio.run`` with at most ``options.concurrency``
requests in flight. Retries are the SDK's own: 408/409/429/5xx and connection errors, with
jittered exponential back-off that honours Retry-After.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Coroutine, Sequence, TypeVar
from urllib.parse import urlsplit, urlunsplit

from ..errors import DebatelabError, RunFailed
from .base import Completion, GenerateRequest, OptionScores, Prompt, ScoreRequest, Usage
from .options import BackendOptions

DEFAULT_BASE_URL = "https://api.openai.com/v1"
NO_KEY = "EMPTY"  # local servers ignore the key, but the SDK insists on having one
MAX_STOP = 4  # OpenAI rejects requests with more stop strings than this
FALLBACK_MAX_TOKENS = 8
# Chat APIs cannot portably prefill the assistant turn, so the prefix becomes an instruction.
GENERATE_HINT = 'Begin your answer with: "{}"'
# For scoring, the first generated token must be the option itself, not a repeat of the prefix.
SCORE_HINT = 'Your answer continues the text "{}". Reply with only what follows it.'

Q = TypeVar("Q")
T = TypeVar("T")


def _import_openai() -> Any:
    try:
        import openai
    except ImportError as exc:
        hint = "pip install 'debatelab[openai]'"
        raise DebatelabError(f"the openai backend needs the openai SDK: {hint}") from exc
    return openai


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


class OpenAICompatLLM:
    def __init__(self, model: str, options: BackendOptions):
        self._openai = _import_openai()
        self.model = model
        self.options = options
        self.base_url = options.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        key = os.environ.get(options.api_key_env, "").strip()
        if not key and not is_loopback(self.base_url):
            raise DebatelabError(
                f"missing API key: set ${options.api_key_env} (or point base_url at a local server)"
            )
        self._api_key = key or NO_KEY
        self._logprobs_ok = options.top_logprobs > 0
        self.usage = Usage()

    def identity(self) -> dict[str, Any]:
        return {"backend": "openai", "model": self.model, "api": self.options.api,
                "base_url": normalise_url(self.base_url), "top_logprobs": self.options.top_logprobs}

    def generate(self, requests: Sequence[GenerateRequest]) -> list[Completion]:
        return self._run_batch(requests, self._generate_one)

    def score_options(self, requests: Sequence[ScoreRequest]) -> list[OptionScores]:
        return self._run_batch(requests, self._score_one)

    def _run_batch(self, requests: Sequence[Q], one: Callable[[Any, Q], Awaitable[T]]) -> list[T]:
        if not requests:
            return []

        async def main() -> list[T]:
            limit = asyncio.Semaphore(self.options.concurrency)
            client = self._openai.AsyncOpenAI(
                base_url=self.base_url, api_key=self._api_key,
                timeout=self.options.timeout, max_retries=self.options.max_retries,
            )

            async def bounded(request: Q) -> T:
                async with limit:
                    return await one(client, request)

            async with client:
                return await gather_in_order([bounded(r) for r in requests])

        try:
            results = run_sync(main())
        except self._openai.APIError as exc:
            message = str(exc).replace(self._api_key, "***") if self._api_key != NO_KEY else str(exc)
            where = f"{self.model} at {normalise_url(self.base_url)}"
            raise RunFailed(f"openai backend ({where}): {message}") from None
        self.usage.calls += 1
        return results

    async def _generate_one(self, client: Any, req: GenerateRequest) -> Completion:
        params: dict[str, Any] = {
            "temperature": req.temperature, "max_tokens": req.max_tokens, "top_p": req.top_p
        }
        if req.stop:
            params["stop"] = list(req.stop[:MAX_STOP])
        if req.seed is not None:
            params["seed"] = req.seed
        reply, prompt_tokens, completion_tokens = await self._call(client, req.prompt, GENERATE_HINT, params)
        text, cut = cut_at_stop(reply.text, req.stop)
        reason = "length" if reply.finish_reason == "length" and not cut else "stop"
        return Completion(text, prompt_tokens, completion_tokens, reason)

    async def _score_one(self, client: Any, req: ScoreRequest) -> OptionScores:
        greedy: dict[str, Any] = {"temperature": 0} if req.seed is None else {"temperature": 0, "seed": req.seed}
        if self._logprobs_ok:
            k = self.options.top_logprobs
            asks = {"logprobs": True, "top_logprobs": k} if self.options.api == "chat" else {"logprobs": k}
            try:
                reply, _, _ = await self._call(client, req.prompt, SCORE_HINT, {**greedy, "max_tokens": 1, **asks})
            except self._openai.BadRequestError:
                self._logprobs_ok = False  # e.g. reasoning models reject logprobs: stop asking
            else:
                if reply.alternatives:
                    token = reply.token if reply.token is not None else reply.text
                    return OptionScores(map_alternatives(reply.alternatives, req.options), "logprobs", token)
        params = {**greedy, "max_tokens": FALLBACK_MAX_TOKENS}
        reply, _, _ = await self._call(client, req.prompt, SCORE_HINT, params)
        choice = parse_option(reply.text, req.options)
        scores = tuple(0.0 if i == choice else -math.inf for i in range(len(req.options)))
        return OptionScores(scores, "generated", reply.text)

    async def _call(
        self, client: Any, prompt: Prompt, hint: str, params: dict[str, Any]
    ) -> tuple[Reply, int, int]:
        """One request; returns the reply and its prompt/completion token counts (also added to usage)."""
        if self.options.api == "chat":
            messages = chat_messages(prompt, hint)
            response = await client.chat.completions.create(model=self.model, messages=messages, **params)
            reply = self._chat_reply(response.choices[0], prompt)
        else:
            response = await client.completions.create(model=self.model, prompt=prompt.flat_text(), **params)
            reply = self._completion_reply(response.choices[0])
        usage = response.usage
        prompt_tokens = (usage.prompt_tokens or 0) if usage else 0
        completion_tokens = (usage.completion_tokens or 0) if usage else 0
        self.usage.prompt_tokens += prompt_tokens
        self.usage.completion_tokens += completion_tokens
        return reply, prompt_tokens, completion_tokens

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
            return Reply(choice.text, choice.finish_reason)
        token = logprobs.tokens[0] if logprobs.tokens else None
        return Reply(choice.text, choice.finish_reason, token, tuple(tops[0].items()))


def load_openai(name: str, options: BackendOptions) -> OpenAICompatLLM:
    return OpenAICompatLLM(name, options)
