"""Inference-time methods that help an agent keep its persona's view (the mitigation lab).

Each is an option of a roster seat (:class:`debatelab.config_schema.Seat`) and part of the seat's
model key, so a run with a method never shares debate ids or results with its baseline:

- **persona-contrastive decoding** (:class:`Contrastive`): every next-token distribution is
  ``(1+λ)·log p(x | persona) − λ·log p(x | no persona)``, renormalised. "No persona" is the same
  prompt with the agent's background replaced by the Default agent's ("You are an American."), so
  what is subtracted is the model's own default, the pull the paper measures. Replies and surveys
  are switched separately (a survey under contrast measures the method, not the agent).
- **activation steering** (:class:`Steering`): ``scale`` times a direction is added to the output
  of one decoder layer at every position during generation and scoring. The direction is the mean
  hidden state (at the last prompt token) of the seat's party's persona survey prompts minus that
  of the same prompts with the Default background; it is computed once per loaded model and the
  SHA of its bytes is part of the seat's identity (so a steered run resumes only where the direction
computes to the same bits: the same device kind, dtype and library versions).
- **re-anchoring** (``Seat.reanchor``): every k-th of the agent's own replies after its first, its
  reply prompt restates its opening statement (:func:`debatelab.prompts.reply_prompt`).

At strength 0 (``strength: 0``, ``scale: 0``, ``reanchor: 0``) a method computes what the
baseline computes: the backend skips it rather than multiply by 0. A seat with a method is a
backend of its own, so its requests form other micro-batches than the baseline's; floats then agree
within ``debatelab.compare.PRECISION``, and bit for bit with ``batch_size: 1, prefix_cache_mb: 0``
(tests/test_methods.py, tests/llm/test_hf_methods.py).
Contrastive decoding and steering need a transformers backend (``embedded`` or ``hf:``).
"""

from __future__ import annotations

from pydantic import Field

from .validation import StrictModel

MAX_STRENGTH = 100.0
MAX_LAYER = 1_000
STEERING_PERSONAS = 40
"""Persona prompts per party the steering direction averages (the paper's bank holds 40)."""


class Contrastive(StrictModel):
    """``{strength: 1.0, replies: true, surveys: false}``."""

    strength: float = Field(ge=0, le=MAX_STRENGTH, allow_inf_nan=False)
    """λ in (1+λ)·log p(x | persona) − λ·log p(x | no persona), 0..100; 0 is plain decoding."""
    replies: bool = True
    """Apply it to debate replies."""
    surveys: bool = False
    """Apply it to the attitude surveys too (the greedy answer and the 0..10 distribution)."""

    def key(self) -> str:
        parts = [p for p, on in (("replies", self.replies), ("surveys", self.surveys)) if on]
        return f"contrastive({self.strength:.17g},{'+'.join(parts) or 'none'})"


class Steering(StrictModel):
    """``{layer: 15, scale: 4.0}``."""

    layer: int = Field(ge=0, le=MAX_LAYER, strict=True)
    """The decoder layer (0-based) whose output is steered; the direction is read at the same
    place (that block's raw output, before any final norm). Must be below the model's
    number of layers (checked when the model loads)."""
    scale: float = Field(ge=-MAX_STRENGTH, le=MAX_STRENGTH, allow_inf_nan=False)
    """Multiple of the direction added, -100..100: 1 moves the hidden state by the mean
    persona-minus-default difference; 0 is no steering; negative values push towards the default."""

    def key(self, party: str) -> str:
        """The party is part of it: each party's seats are steered along their own direction."""
        return f"steering({party},L{self.layer},{self.scale:.17g})"
