"""Survey option scoring (``score_options``) for the OpenAI-compatible backend.

Within each API's documented caps (``options.TOP_LOGPROBS_CAP``: chat ``top_logprobs`` <= 20,
legacy completions ``logprobs`` <= 5; ``top_logprobs`` None means the cap, a value over it is a
config error):

- ``completions`` with ``score_echo`` (default): exact scores (``source = "logprobs"``). One
  request per survey carries the prompt and prompt + each option (``echo=True, max_tokens=0``); an
  option's score is the sum of the log-probabilities of its tokens, from the first token where the
  prompts part, so options of several tokens (a "10" split into "1" + "0") are exact too. An option
  that is the start of another in tokens ("1" of "10") also needs the answer to end there: it is
  multiplied by P(the next token does not continue the word), read from the top alternatives after
  it. vLLM and other servers that implement echo support this; OpenAI's gpt-3.5-turbo-instruct
  refuses echo with logprobs (400) and llama.cpp ignores echo. Either is detected on the first
  survey (the same survey without echo then succeeds), logged once, and scoring continues as below.
- otherwise: the top ``top_logprobs`` alternatives where the answer starts (mass outside them is
  lost, those options get -inf): the first token after the prefix on completions, or on chat,
  where a model asked to begin with the prefix may write it itself, the token after it
  (:func:`.openai_topk.answer_step`, in up to ``ANSWER_WINDOW`` greedy tokens). An alternative
  that is the start of an option not among them ("1" of "10") is split exactly by the
  alternatives after it (:func:`.openai_topk.split_heads`): P("10") = P("1") P("0" | "1"), and
  "1" also needs the answer to end there. They come from the greedy answer's own next token
  when it took that head, else from a second 1-token request on the text continued by it
  (completions, or chat with ``chat_prefill: continue``); chat without prefill has no text to
  continue, so there both options are left out (logged once). The result is ``source =
  "logprobs"`` only when every option got a finite log-probability (chat's top 20 often hold
  all of 0..10); when any is missing it is ``source = "top_k"``: true model log-probabilities of
  the options seen, the rest -inf (probability 0 once renormalised), a partial distribution
  (legacy completions' top 5 can hold at most 5 of 11 options). With a client-side chat template
  each option is walked to its end-of-turn token instead (:mod:`.openai_terminated`).
- alternatives that hold no option at all (the model began with prose): the greedy answer is
  parsed (``source = "generated"``), logged once.
- a server that refuses logprobs (400, where the same survey without them succeeds) or answers
  without them: the greedy answer is parsed (``source = "generated"``), logged once.

Never silently: every survey whose distribution is not true model log-probabilities comes back
with ``source = "generated"`` and is counted in ``usage.extra["survey_fallbacks"]``, every partial
one with ``source = "top_k"``; ``survey_exact`` (echo) and ``survey_top_k`` (first-token
alternatives, complete or partial) count the others by method.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence, TypeVar

from ..errors import DebatelabError
from .base import OptionScores, Prompt, ScoreRequest, Usage
from .options import TOP_LOGPROBS_CAP, BackendOptions, top_logprobs_error
from .openai_template import ClientTemplate
from .openai_terminated import TerminatedWalk
from .openai_topk import (Alternatives, TokenStep, answer_step, log_word_ends, map_alternatives, open_heads,
                          parse_option, split_heads, top_k_source)
from .openai_wire import Batch, WireReply, gather_in_order, reading_body, used_tokens

T = TypeVar("T")

FALLBACK_MAX_TOKENS = 8
# Chat with the prefix asked for: the model writes "Rating: " itself before its answer (4 tokens on SmolLM2).
ANSWER_WINDOW = 8
# For scoring, the first generated token must be the option itself, not a repeat of the prefix.
SCORE_HINT = 'Your answer continues the text "{}". Reply with only what follows it.'


def top_logprobs_of(options: BackendOptions) -> int:
    """The alternatives to ask for: the API's cap unless set lower. Checked again here, because
    options made without validation (``model_copy``) skip the config's own check."""
    cap = options.logprobs_cap or TOP_LOGPROBS_CAP[options.api]
    if options.top_logprobs is not None and options.top_logprobs > cap:
        raise DebatelabError(top_logprobs_error(options.top_logprobs, options.api, options.logprobs_cap))
    return cap if options.top_logprobs is None else options.top_logprobs


# --- echo ----------------------------------------------------------------------------------------

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
    start = min(_common(base.tokens, row.tokens) for row in rows)
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
            scores[i] += _log_ends_after(rows[longer], start + len(part))
    return tuple(scores)


def _common(a: Sequence[str], b: Sequence[str]) -> int:
    n = 0
    while n < len(a) and n < len(b) and a[n] == b[n]:
        n += 1
    return n


def _log_ends_after(row: EchoRow, at: int) -> float:
    """:func:`log_word_ends` at position ``at`` of ``row``: its alternatives there and its own token."""
    seen = dict((row.tops[at] if at < len(row.tops) else None) or {})
    actual = row.logprobs[at]
    if actual is not None:
        seen[row.tokens[at]] = actual
    return log_word_ends(list(seen.items()))


def read_echo(response: Any, prompts: Sequence[str]) -> tuple[list[EchoRow], int]:
    """The echoed rows of ``prompts`` (in order) and the prompt tokens billed for them."""
    with reading_body():
        choices = sorted(response.choices, key=lambda c: c.index)
        tokens = used_tokens(response, "prompt_tokens")
        rows = [_echo_row(choice, prompt) for choice, prompt in zip(choices, prompts)]
    if len(rows) != len(prompts) or len(choices) != len(prompts):
        raise EchoUnsupported(f"{len(choices)} choice(s) for {len(prompts)} prompts")
    return rows, tokens


def _echo_row(choice: Any, prompt: str) -> EchoRow:
    lp = choice.logprobs
    if lp is None or not lp.tokens or lp.token_logprobs is None or len(lp.token_logprobs) != len(lp.tokens):
        raise EchoUnsupported("no log-probabilities for the echoed prompt")
    if not (choice.text or "").startswith(prompt):
        raise EchoUnsupported("the prompt was not echoed")
    tops = list(lp.top_logprobs or [])
    tops += [None] * (len(lp.tokens) - len(tops))
    return EchoRow(tuple(lp.tokens), tuple(lp.token_logprobs), tuple(tops))


# --- the method ladder ---------------------------------------------------------------------------

class Link(Protocol):
    """What scoring asks of the backend: requests (retried, gated, their tokens counted), its
    usage counters, one-line error text, warnings logged once, the raw text it sends for a
    prompt, and the client-side chat template (None: it sends the flat text)."""

    usage: Usage
    template: ClientTemplate | None

    def raw_text(self, prompt: Prompt) -> str: ...

    async def call(self, batch: Batch, prompt: Prompt, hint: str, params: dict[str, Any]) -> WireReply: ...

    async def complete(self, batch: Batch, prompts: list[str], params: dict[str, Any],
                       read: Callable[[Any], T], probe: bool = False) -> T: ...

    def describe(self, exc: BaseException) -> str: ...

    def once(self, flag: str, message: str) -> None: ...


class OptionScorer:
    """Scores each survey by the best method the server allows (echo, top-k, parsed answer),
    stepping down for good, logged once, the first time it refuses one."""

    def __init__(self, link: Link, api: str, top_logprobs: int, score_echo: bool,
                 refused: type[BaseException], prefill: str = "instruction"):
        self._link = link
        self.prefill = prefill  # chat: "continue" sends the prefix as the assistant's message
        self._refused = refused  # the SDK's 400 (BadRequestError)
        self.api = api
        self.top_logprobs = top_logprobs
        self.logprobs_ok = top_logprobs > 0
        self.echo_ok = self.logprobs_ok and api == "completions" and score_echo
        self.echo_proven = False  # an echo has succeeded: later failures are the server's, not echo's

    async def score(self, batch: Batch, req: ScoreRequest) -> OptionScores:
        if self.echo_ok and not self.echo_proven:  # one survey finds out whether echo works
            async with batch.probe:
                if self.echo_ok and not self.echo_proven:  # still undecided once it is our turn
                    return await self._score(batch, req)
        return await self._score(batch, req)

    async def _score(self, batch: Batch, req: ScoreRequest) -> OptionScores:
        greedy: dict[str, Any] = {"temperature": 0} if req.seed is None else {"temperature": 0, "seed": req.seed}
        echo_refused: BaseException | None = None
        if self.echo_ok:
            try:
                scores = await self._echo(batch, req)
            except EchoUnsupported as exc:
                self._no_echo(str(exc))
            except self._refused as exc:
                echo_refused = exc  # echo's fault only if the same survey without echo works
            else:
                self.echo_proven = True
                return self._counted("survey_exact", scores)
        logprobs_refused: BaseException | None = None
        if self.logprobs_ok:
            try:
                reply = await self._link.call(batch, req.prompt, SCORE_HINT, self._logprobs_request(greedy))
            except self._refused as exc:
                logprobs_refused = exc
            else:
                if echo_refused is not None:
                    self._no_echo(self._link.describe(echo_refused))
                if reply.alternatives:
                    return await self._from_alternatives(batch, req, reply, greedy)
                self._no_logprobs("the server answered without log-probabilities")
        return await self._generated(batch, req, greedy, logprobs_refused)

    async def _from_alternatives(self, batch: Batch, req: ScoreRequest, reply: WireReply,
                                 greedy: dict[str, Any]) -> OptionScores:
        """Scores read from the reply's top alternatives; where they hold no option at all (the
        model began its answer with something else), the greedy answer parsed instead, said once."""
        read = self._terminated if self._link.template is not None else self._top_k
        scores = await read(batch, req, reply, greedy)
        if any(math.isfinite(lp) for lp in scores.logprobs):
            return self._counted("survey_top_k", scores)
        self._link.once("no_option_in_top_k", f"the top {self.top_logprobs} log-probabilities at a survey answer "
                                              "held none of its options (the model began with something else); "
                                              "such surveys are parsed from the greedy answer (source=generated, "
                                              "counted in survey_fallbacks)")
        window = reply if self._window() >= FALLBACK_MAX_TOKENS else None  # already a greedy answer long enough
        return await self._generated(batch, req, greedy, None, window)

    def _counted(self, method: str, scores: OptionScores) -> OptionScores:
        self._link.usage.extra[method] += 1
        return scores

    def _window(self) -> int:
        """Tokens a scoring request generates: one where the prefix is in place (completions, chat
        prefill), so its alternatives are the answer's; on chat with the prefix asked for, enough
        for the model to write the prefix itself first (:func:`answer_step`)."""
        if self.api == "completions":
            return 1
        return 2 if self.prefill == "continue" else ANSWER_WINDOW

    def _logprobs_request(self, greedy: dict[str, Any], k: int | None = None) -> dict[str, Any]:
        """A short greedy request for the top ``k`` (default ``top_logprobs``) alternatives per
        token, as the API asks for them."""
        k = self.top_logprobs if k is None else k
        asks = {"logprobs": True, "top_logprobs": k} if self.api == "chat" else {"logprobs": k}
        return {**greedy, "max_tokens": self._window(), **asks}

    def _no_echo(self, why: str) -> None:
        self.echo_ok = False
        self._link.once("echo_refused", f"exact option scoring (echo) unavailable ({why}); surveys are scored "
                                        f"from the first answer token's top {self.top_logprobs} log-probabilities "
                                        "(source=top_k where options fall outside them)")

    def _no_logprobs(self, why: str) -> None:
        self.logprobs_ok = self.echo_ok = False
        self._link.once("logprobs_refused", f"no log-probabilities ({why}); surveys are parsed from greedy "
                                            "answers (source=generated, counted in survey_fallbacks)")

    async def _echo(self, batch: Batch, req: ScoreRequest) -> OptionScores:
        base = self._link.raw_text(req.prompt)
        # With the chat template rendered here, an option is scored as the whole answer, the
        # end-of-turn token after it, as in process; the options then part before their ends.
        end = self._link.template.end_text if self._link.template is not None else ""
        prompts = [base] + [base + option + end for option in req.options]
        params = {"temperature": 0, "max_tokens": 0, "echo": True, "logprobs": self.top_logprobs}
        rows, tokens = await self._link.complete(batch, prompts, params, lambda response: read_echo(response, prompts),
                                                 probe=not self.echo_proven)
        self._link.usage.prompt_tokens += tokens
        scores = echo_scores(rows[0], rows[1:])
        best = max(range(len(scores)), key=scores.__getitem__) if scores else None
        # Exact for every option, so complete: a -inf here is a computed probability 0 (an option
        # that cannot end the answer), not an option the API left out.
        return OptionScores(scores, "logprobs", req.options[best] if best is not None else None)

    async def _top_k(self, batch: Batch, req: ScoreRequest, reply: WireReply, greedy: dict[str, Any]) -> OptionScores:
        steps = reply.steps
        prefilled = self.api == "completions" or self.prefill == "continue"  # the answer is the first token
        at = 0 if prefilled else answer_step(steps, req.prompt.assistant_prefix)
        if at is None:  # the greedy text left the prefix for something else: no answer position
            return OptionScores(tuple(-math.inf for _ in req.options), "top_k", reply.text)
        alternatives = steps[at].alternatives
        scores = map_alternatives(alternatives, req.options)
        heads = open_heads(alternatives, req.options, scores)
        if heads:  # "1" of a two-token "10": the alternatives after each head split it exactly
            follow = await gather_in_order([self._after(batch, req, steps, at, raw, greedy) for raw in heads])
            scores = split_heads(alternatives, req.options, scores, dict(zip(heads, follow)))
        return OptionScores(scores, top_k_source(scores), steps[at].token)

    async def _after(self, batch: Batch, req: ScoreRequest, steps: Sequence[TokenStep], at: int, raw: str,
                     greedy: dict[str, Any]) -> Alternatives | None:
        """The alternatives after head ``raw`` at step ``at``: the reply's own next step when its
        greedy answer took that head, else one more request on the text continued by it (raw
        completions, or chat with the prefix prefilled); None where the API cannot continue a text."""
        if steps[at].token == raw and at + 1 < len(steps):
            return steps[at + 1].alternatives
        # Both paths below are prefilled, so their answer is the first token: the text goes on with the head.
        if self.api == "completions":
            prompt = Prompt(text=self._link.raw_text(req.prompt) + raw)
        elif self.prefill == "continue":
            prompt = dataclasses.replace(req.prompt, assistant_prefix=req.prompt.assistant_prefix + raw)
        else:
            self._link.once("heads_unsplit", f"on the chat API without prefill, the option {raw.strip()!r} and the "
                                             "longer options it starts cannot be told apart unless the greedy "
                                             "answer took it; they are left out (source=top_k)")
            return None
        return (await self._link.call(batch, prompt, SCORE_HINT, self._logprobs_request(greedy))).alternatives

    async def _terminated(self, batch: Batch, req: ScoreRequest, reply: WireReply,
                          greedy: dict[str, Any]) -> OptionScores:
        assert self._link.template is not None
        base = self._link.raw_text(req.prompt)

        async def ask(text: str, k: int) -> tuple[tuple[str, float], ...]:
            got = await self._link.call(batch, Prompt(text=text), SCORE_HINT, self._logprobs_request(greedy, k))
            return got.alternatives

        walk = TerminatedWalk(ask, self._link.template, self.top_logprobs, {base: reply.alternatives})
        scores = [await walk.score(base, option) for option in req.options]
        return OptionScores(tuple(scores), top_k_source(scores), reply.token)

    async def _generated(self, batch: Batch, req: ScoreRequest, greedy: dict[str, Any],
                         logprobs_refused: BaseException | None, reply: WireReply | None = None) -> OptionScores:
        """The last resort: the greedy answer (``reply``, or asked for now), parsed (``source = "generated"``)."""
        if reply is None:
            params = {**greedy, "max_tokens": FALLBACK_MAX_TOKENS}
            reply = await self._link.call(batch, req.prompt, SCORE_HINT, params)  # a 400 here: the survey itself is bad
        if logprobs_refused is not None:
            self._no_logprobs(self._link.describe(logprobs_refused))
        choice = parse_option(reply.text, req.options)
        scores = tuple(0.0 if i == choice else -math.inf for i in range(len(req.options)))
        return self._counted("survey_fallbacks", OptionScores(scores, "generated", reply.text))
