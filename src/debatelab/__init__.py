"""debatelab: run, measure and steer LLM agent debates.

Importing the package is light: model backends (torch, transformers, openai) load only when a
model is used.
"""

from .config import ExperimentConfig, load_config
from .errors import DebatelabError
from .experiment import RunSummary, run_experiment
from .llm import BackendOptions, load_llm
from .topics import BUILTIN_TOPICS, Topic

__version__ = "0.1.0"


def __getattr__(name: str):
    # debatelab.load(run_dir) without importing pandas at ``import debatelab``.
    if name == "load":
        from .analysis.frames import load

        return load
    raise AttributeError(f"module 'debatelab' has no attribute {name!r}")


__all__ = [
    "BUILTIN_TOPICS", "BackendOptions", "DebatelabError", "ExperimentConfig", "RunSummary", "Topic",
    "load", "load_config", "load_llm", "run_experiment",
]
