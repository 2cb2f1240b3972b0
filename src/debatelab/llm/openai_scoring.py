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
- otherwise: the top ``top_logprobs`` alternatives of the first answer token (one 1-token request;
  mass outside them is lost, those options get -inf). With ``completions``, when an alternative is
  the start of an option not among them ("1" of "10"), a second 1-token request on prompt + that
  token gives P("10") = P("1") P("0" | "1") and makes "1" end there, as above. The result is
  ``source = "logprobs"`` only when every option got a finite log-probability (chat's top 20 often
  hold all of 0..10); when any is missing it is ``source = "top_k"``: true model log-probabilities
  of the options seen, the rest -inf (probability 0 once renormalised), a partial distribution
  (legacy completions' top 5 can hold at most 5 of 11 options).
- a server that refuses logprobs (400, where the same survey without them succeeds) or answers
  without them: the greedy answer is parsed (``source = "generated"``), logged once.

Never silently: every survey whose distribution is not true model log-probabilities comes back
with ``source = "generated"`` and is counted in ``usage.extra["survey_fallbacks"]``, every partial
one with ``source = "top_k"``; ``survey_exact`` (echo) and ``survey_top_k`` (first-token
alternatives, complete or partial) count the others by method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal, Protocol, Sequence, TypeVar

from ..errors import DebatelabError
from .base import OptionScores, Prompt, ScoreRequest, Usage
from .options import TOP_LOGPROBS_CAP, BackendOptions, top_logprobs_error
from .openai_template import ClientTemplate
from .openai_terminated import TerminatedWalk
from .openai_wire import Batch, WireReply, reading_body, used_tokens

T = TypeVar("T")

FALLBACK_MAX_TOKENS = 8
# For scoring, the first generated token must be the option itself, not a repeat of the prefix.
SCORE_HINT = 'Your answer continues the text "{}". Reply with only what follows it.'


def top_logprobs_of(options: BackendOptions) -> int:
    """The alternatives to ask for: the API's cap unless set lower. Checked again here, because
    options made without validation (``model_copy``) skip the config's own check."""
    cap = options.logprobs_cap or TOP_LOGPROBS_CAP[options.api]
    if options.top_logprobs is not None and options.top_logprobs > cap:
        raise DebatelabError(top_logprobs_error(options.top_logprobs, options.api, options.logprobs_cap))
    return cap if options.top_logprobs is None else options.top_logprobs


# --- arithmetic ----------------------------------------------------------------------------------

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


def open_prefix(alternatives: Sequence[tuple[str, float]], options: Sequence[str],
                scores: Sequence[float]) -> tuple[str, float] | None:
    """The likeliest alternative that starts an option not among the alternatives ("1" of "10")."""
    for raw, lp in sorted(alternatives, key=lambda a: -a[1]):
        stem = raw.strip()
        if stem and any(o.strip() != stem and o.strip().startswith(stem) and s == -math.inf
                        for o, s in zip(options, scores)):
            return raw, lp
    return None


def top_k_source(scores: Sequence[float]) -> Literal["logprobs", "top_k"]:
    """``"logprobs"`` when the first-token alternatives scored every option, else ``"top_k"``: some
    option was outside them (-inf), so the distribution is partial, not merely peaked."""
    return "logprobs" if scores and all(math.isfinite(s) for s in scores) else "top_k"


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
                 refused: type[BaseException]):
        self._link = link
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
                reply = await self._link.call(batch, req.prompt, SCORE_HINT, self._first_token(greedy))
            except self._refused as exc:
                logprobs_refused = exc
            else:
                if echo_refused is not None:
                    self._no_echo(self._link.describe(echo_refused))
                if reply.alternatives and self._link.template is not None:
                    return self._counted("survey_top_k", await self._terminated(batch, req, reply, greedy))
                if reply.alternatives:
                    return self._counted("survey_top_k", await self._top_k(batch, req, reply, greedy))
                self._no_logprobs("the server answered without log-probabilities")
        return await self._generated(batch, req, greedy, logprobs_refused)

    def _counted(self, method: str, scores: OptionScores) -> OptionScores:
        self._link.usage.extra[method] += 1
        return scores

    def _first_token(self, greedy: dict[str, Any], k: int | None = None) -> dict[str, Any]:
        """A 1-token request for the top ``k`` (default ``top_logprobs``) alternatives, as the API asks for them."""
        k = self.top_logprobs if k is None else k
        asks = {"logprobs": True, "top_logprobs": k} if self.api == "chat" else {"logprobs": k}
        return {**greedy, "max_tokens": 1, **asks}

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
        token = reply.token if reply.token is not None else reply.text
        scores = list(map_alternatives(reply.alternatives, req.options))
        head = open_prefix(reply.alternatives, req.options, scores) if self.api == "completions" else None
        if head is not None:
            raw, head_lp = head
            prompt = Prompt(text=self._link.raw_text(req.prompt) + raw)
            nxt = (await self._link.call(batch, prompt, SCORE_HINT, self._first_token(greedy))).alternatives
            stem = raw.strip()
            for i, option in enumerate(req.options):
                option = option.strip()
                if option == stem:
                    scores[i] += log_word_ends(nxt)
                elif option.startswith(stem) and scores[i] == -math.inf:
                    rest = [lp for t, lp in nxt if t == option[len(stem):]]
                    scores[i] = head_lp + logsumexp(rest)
        return OptionScores(tuple(scores), top_k_source(scores), token)

    async def _terminated(self, batch: Batch, req: ScoreRequest, reply: WireReply,
                          greedy: dict[str, Any]) -> OptionScores:
        assert self._link.template is not None
        base = self._link.raw_text(req.prompt)

        async def ask(text: str, k: int) -> tuple[tuple[str, float], ...]:
            got = await self._link.call(batch, Prompt(text=text), SCORE_HINT, self._first_token(greedy, k))
            return got.alternatives

        walk = TerminatedWalk(ask, self._link.template, self.top_logprobs, {base: reply.alternatives})
        scores = [await walk.score(base, option) for option in req.options]
        token = reply.token if reply.token is not None else reply.text
        return OptionScores(tuple(scores), top_k_source(scores), token)

    async def _generated(self, batch: Batch, req: ScoreRequest, greedy: dict[str, Any],
                         logprobs_refused: BaseException | None) -> OptionScores:
        """The last resort: the greedy answer, parsed (``source = "generated"``)."""
        params = {**greedy, "max_tokens": FALLBACK_MAX_TOKENS}
        reply = await self._link.call(batch, req.prompt, SCORE_HINT, params)  # a 400 here: the survey itself is bad
        if logprobs_refused is not None:
            self._no_logprobs(self._link.describe(logprobs_refused))
        choice = parse_option(reply.text, req.options)
        scores = tuple(0.0 if i == choice else -math.inf for i in range(len(req.options)))
        return self._counted("survey_fallbacks", OptionScores(scores, "generated", reply.text))
