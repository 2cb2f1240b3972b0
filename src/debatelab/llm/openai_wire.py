"""What travels between the OpenAI-compatible backend and its server: prompts out as chat messages
or flat text, replies in (a body of the wrong shape is a retryable fault), URLs as they may be
shown, and why a connection could not be made at all. Pure functions; no SDK import."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Awaitable, Iterator, Sequence, TypeVar
from urllib.parse import urlsplit, urlunsplit

from .base import Prompt
from .concurrency import Gate
from .openai_topk import TokenStep
from .retry import MalformedResponse

# What reading a body of the wrong shape raises (a proxy's error page, a field missing or null).
BODY_ERRORS = (AttributeError, IndexError, KeyError, TypeError, ValueError)
T = TypeVar("T")


@dataclass(frozen=True)
class Batch:
    """What one batch's requests share; made inside the batch's event loop."""

    client: Any
    gate: Gate
    probe: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Held by the survey that first tries echo, so the others learn its outcome before trying."""


@dataclass(frozen=True)
class WireReply:
    text: str
    finish_reason: str
    steps: tuple[TokenStep, ...] = ()
    """Every generated token with its top alternatives, when logprobs came back."""
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def token(self) -> str | None:
        """The first generated token, when logprobs came back."""
        return self.steps[0].token if self.steps else None

    @property
    def alternatives(self) -> tuple[tuple[str, float], ...]:
        """The first token's top alternatives."""
        return self.steps[0].alternatives if self.steps else ()


class Unreachable(Exception):
    """No connection could be made to a server that never answered: stop the run."""


# --- out -----------------------------------------------------------------------------------------

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


async def gather_in_order(coros: Sequence[Awaitable[T]]) -> list[T]:
    """The results in order; if one raises, the others are cancelled and awaited first."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        # Stop the siblings before the client is closed under them.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


# --- in ------------------------------------------------------------------------------------------

@contextmanager
def reading_body() -> Iterator[None]:
    """Reading a 2xx body: one of the wrong shape raises :class:`MalformedResponse` (retried)."""
    try:
        yield
    except BODY_ERRORS as exc:
        raise MalformedResponse(f"unexpected response body ({type(exc).__name__})") from None


def used_tokens(response: Any, field: str) -> int:
    """``usage.<field>`` of a response, 0 where the server reports no usage."""
    usage = response.usage
    return int(getattr(usage, field) or 0) if usage else 0


def read_reply(response: Any, prompt: Prompt, api: str) -> WireReply:
    """The reply in a 2xx response of the ``chat`` or ``completions`` API, with its token counts."""
    with reading_body():
        choice = response.choices[0]
        reply = chat_reply(choice, prompt) if api == "chat" else completion_reply(choice)
        prompt_tokens = used_tokens(response, "prompt_tokens")
        completion_tokens = used_tokens(response, "completion_tokens")
    return dataclasses.replace(reply, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)


def chat_reply(choice: Any, prompt: Prompt) -> WireReply:
    text = strip_prefix(choice.message.content or "", prompt.assistant_prefix)
    content = choice.logprobs.content if choice.logprobs else None
    if not content:
        return WireReply(text, choice.finish_reason)
    steps = tuple(TokenStep(pos.token, tuple((alt.token, alt.logprob) for alt in pos.top_logprobs or ()))
                  for pos in content)
    return WireReply(text, choice.finish_reason, steps)


def completion_reply(choice: Any) -> WireReply:
    logprobs = choice.logprobs
    tops = logprobs.top_logprobs if logprobs else None
    if not tops or not tops[0]:
        return WireReply(choice.text or "", choice.finish_reason)
    tokens = list(logprobs.tokens or ())
    tokens += [""] * (len(tops) - len(tokens))  # alternatives without their token still count
    steps = tuple(TokenStep(token, tuple((top or {}).items())) for token, top in zip(tokens, tops))
    return WireReply(choice.text, choice.finish_reason, steps)


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


# --- no connection -------------------------------------------------------------------------------

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
