"""Analysis of finished runs: DataFrames, statistics, metrics, figures and reports.

Needs the ``analysis`` extra (pandas, numpy, scipy, matplotlib); imported only when used.
"""

from .frames import RunData, load
from .identity import prompt_identity
from .stats import aggregate

__all__ = ["RunData", "aggregate", "load", "prompt_identity"]
