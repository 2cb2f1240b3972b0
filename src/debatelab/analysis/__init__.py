"""Analysis of finished runs: DataFrames, statistics, metrics, figures and reports.

Needs the ``analysis`` extra (pandas, numpy, scipy, matplotlib); imported only when used.
"""

from .frames import RunData, load
from .stats import aggregate

__all__ = ["RunData", "aggregate", "load"]
