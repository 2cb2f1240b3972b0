"""Model backends behind one batched interface."""

from .base import LLM, Completion, GenerateRequest, Message, OptionScores, Prompt, ScoreRequest
from .options import BackendOptions
from .registry import load_llm, split_model

__all__ = [
    "LLM", "BackendOptions", "Completion", "GenerateRequest", "Message", "OptionScores",
    "Prompt", "ScoreRequest", "load_llm", "split_model",
]
