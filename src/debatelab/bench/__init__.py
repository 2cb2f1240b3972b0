"""``debatelab bench``: one fixed debate workload on one model, one request at a time vs in waves,
each mode against a matmul roofline on the transformers backends (:mod:`.roofline`)."""

from .core import compare_survey_methods, compare_transcripts, machine_facts, run_bench
from .report import format_report
from .roofline import measure_peak
from .workload import BenchSettings, OneAtATime

__all__ = ["BenchSettings", "OneAtATime", "compare_survey_methods", "compare_transcripts", "format_report",
           "machine_facts", "measure_peak", "run_bench"]
