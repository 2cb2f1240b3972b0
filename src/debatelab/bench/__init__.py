"""``debatelab bench``: one fixed debate workload on one model, one request at a time vs in waves."""

from .core import compare_survey_methods, compare_transcripts, machine_facts, run_bench
from .report import format_report
from .workload import BenchSettings, OneAtATime

__all__ = ["BenchSettings", "OneAtATime", "compare_survey_methods", "compare_transcripts", "format_report",
           "machine_facts", "run_bench"]
