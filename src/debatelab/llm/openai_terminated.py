"""Survey options scored as whole answers through an API that only shows the top alternatives
of the next token (llama.cpp's server has no usable echo), so the ``openai:`` backend measures
what ``hf:``/``embedded`` measure in process: log P(option tokens, then the end-of-turn token).

Each option is walked token by token (tokenized on its own, as in process), each step read from
the top-k alternatives after the text so far, then the end of the answer after it. One 1-token
request per distinct context, memoised: about one per option. A step outside the top-k gives
-inf (the distribution is then partial, ``source = "top_k"``).

llama.cpp writes every special token as "" among the alternatives, and where several share
that text the object keeps the position of the first and the value of the last. The end-of-turn
token is read as the highest-ranked "" token: when "" is not plainly a single token (it is the
k distinct alternatives: none shared a text), the same context is asked again with k cut to just
past that position, which leaves that one token alone under "".

Exact for byte-level BPE tokenizers (SmolLM2, Llama 3, Qwen: a token decodes to its own text, and
the server re-tokenizes the joined text into the same tokens); SentencePiece tokenizers (Llama 2,
Mistral) write a word's first piece with a leading "▁" that decoding drops, so there the walk is
an approximation.
"""

from __future__ import annotations

import math
from typing import Any, Awaitable, Callable

from .openai_template import ClientTemplate
from .openai_topk import Alternatives

Ask = Callable[[str, int], Awaitable[Alternatives]]


def option_pieces(tokenizer: Any, option: str) -> list[str]:
    """An option's tokens as text, tokenized on its own, as the in-process backends score it."""
    return [tokenizer.decode([i]) for i in tokenizer(option, add_special_tokens=False).input_ids]


class TerminatedWalk:
    """Scores options after one prompt, asking ``ask(text, k)`` for each context at most once."""

    def __init__(self, ask: Ask, template: ClientTemplate, k: int, known: dict[str, Alternatives]):
        self._ask = ask
        self._template = template
        self._k = k
        self._seen = dict(known)
        self._pieces: dict[str, list[str]] = {}

    async def score(self, base: str, option: str) -> float:
        if option not in self._pieces:
            self._pieces[option] = option_pieces(self._template.tokenizer, option)
        logprob, text = 0.0, base
        for piece in self._pieces[option]:
            logprob += dict(await self._after(text)).get(piece, -math.inf)
            if logprob == -math.inf:
                return logprob
            text += piece
        return logprob + await self._log_end(text)

    async def _after(self, text: str) -> Alternatives:
        if text not in self._seen:
            self._seen[text] = await self._ask(text, self._k)
        return self._seen[text]

    async def _log_end(self, text: str) -> float:
        """log P(the end-of-turn token next), -inf when it is not among the top alternatives."""
        alternatives = await self._after(text)
        named = dict(alternatives)
        if self._template.end_text in named:  # servers that write special tokens as text (vLLM)
            return named[self._template.end_text]
        keys = [token for token, _ in alternatives]
        if "" not in keys:
            return -math.inf
        at = keys.index("")
        if len(keys) == self._k:  # k distinct texts: no two tokens shared one, so "" is one token
            return named[""]
        for k in range(at + 1, self._k + 1):  # earlier texts may be shared too: widen until "" shows
            again = dict(await self._ask(text, k))
            if "" in again:
                return again[""]
        return -math.inf
