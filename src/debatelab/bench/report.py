"""The bench report as text for the terminal."""

from __future__ import annotations

from typing import Any

_LABELS = {"one_at_a_time": "one at a time", "wave": "wave"}


def format_report(report: dict[str, Any]) -> str:
    w, m = report["workload"], report["machine"]
    lines = [
        f"workload: {w['debates']} debates in flight x {w['agents']} agents x {w['rounds']} round(s): "
        f"{w['turns_per_debate']} replies (<= {w['max_tokens']} tokens) and {w['surveys_per_debate']} surveys per debate; "
        f"one-at-a-time mode runs the first {w['one_at_a_time_debates']} of them",
        f"model: {w['model']} ({m.get('dtype') or 'dtype n/a'}); {m['cpu_count']} CPUs ({m['cpu_model']}), "
        f"torch threads: {m.get('torch_threads', 'n/a')}",
        "",
        f"{'mode':<15}{'seconds':>9}{'tokens/s':>11}{'turns/s':>10}{'surveys/s':>11}{'peak RSS MB':>13}",
    ]
    for mode, label in _LABELS.items():
        r = report["modes"][mode]
        lines.append(f"{label:<15}{r['seconds']:>9.2f}{r['tokens_per_s']:>11.1f}{r['turns_per_s']:>10.1f}"
                     f"{r['surveys_per_s']:>11.1f}{r['peak_rss_mb']:>13.0f}")
    ratios = report["ratios"]
    lines.append(f"{'wave / one':<15}{'':>9}{ratios['tokens_per_s']:>10.2f}x{ratios['turns_per_s']:>9.2f}x"
                 f"{ratios['surveys_per_s']:>10.2f}x{ratios['peak_rss_mb']:>12.2f}x")
    lines += ["", f"speedup (wave over one-at-a-time tokens/s): {report['speedup']:.2f}x",
              _prefix_cache(report["modes"]), _correctness(report["correctness"]),
              *roofline_lines(report.get("roofline"), _LABELS)]
    if "survey_methods" in report:
        s = report["survey_methods"]
        agree = "n/a" if s["generate_agrees_with_argmax"] is None else f"{100 * s['generate_agrees_with_argmax']:.0f} %"
        lines += [
            f"survey methods on {s['prompts']} survey prompts (batched): generate-and-parse "
            f"{1000 * s['generate_s_per_survey']:.1f} ms/survey, option scoring {1000 * s['logprobs_s_per_survey']:.1f} "
            f"ms/survey -> survey_speedup {s['survey_speedup']:.2f}x",
            f"  generated answers that parse: {100 * s['generate_valid_share']:.0f} %; of those equal to the "
            f"option-scoring argmax: {agree}",
        ]
    if "dtype_check" in report:
        lines.append(_dtype_check(report["dtype_check"]))
    return "\n".join(lines)


def _dtype_check(d: dict[str, Any]) -> str:
    ref, other = d["reference"].get("dtype", "reference"), d["other"].get("dtype", "other")
    verdict = "within" if d["within_tolerance"] else "OUTSIDE"
    tol = d["tolerance"]
    return (f"{other} vs {ref} survey distributions on {d['prompts']} prompts: mean TV {d['mean_tv']:.4f} "
            f"(max {d['max_tv']:.4f}), mean |delta expected| {d['mean_abs_diff_expected']:.4f} "
            f"(max {d['max_abs_diff_expected']:.4f}), same argmax {100 * d['argmax_agree']:.0f} % -> {verdict} "
            f"tolerance (mean TV < {tol['mean_tv']}, mean |delta expected| < {tol['mean_abs_diff_expected']}); "
            f"scoring {1000 * d['reference_s_per_survey']:.1f} vs {1000 * d['other_s_per_survey']:.1f} ms/survey")


def roofline_lines(roofline: dict[str, Any] | None, labels: dict[str, str]) -> list[str]:
    """The peak, then one line per part (``labels``: key in ``roofline["modes"]`` -> label)."""
    if roofline is None:
        return ["roofline: not available for this backend (transformers backends only)"]
    p, b = roofline["peak"], roofline.get("bandwidth")
    memory = f"; key/value reads at the measured {b['gb_s']:,.1f} GB/s read bandwidth (torch.sum)" if b else ""
    lines = [f"roofline (matmul work a perfect prefix cache still needs, at the measured peak of "
             f"{p['gflops']:,.1f} GFLOP/s: torch.matmul, {p['dtype']} on {p['device']}, {p['threads']} thread(s)"
             f"{memory}):"]
    for key, label in labels.items():
        r = roofline["modes"][key]
        lines.append(f"  {label}: {r['needed_gflop']:,.1f} GFLOP needed -> bound {r['bound_s']:.3f} s of "
                     f"{r['measured_s']:.2f} s measured, efficiency {_eff(r['efficiency'])}; prompt tokens "
                     f"{r['prompt_tokens']:,} sent, {r['needed_prompt_tokens']:,} needed (reuse bound "
                     f"{100 * r['reuse_bound_share']:.0f} %), {r['computed_prompt_tokens']:,} computed; "
                     f"{r['generated_tokens']:,} generated")
        if "memory_bound_s" in r:
            lines.append(f"    memory roof: {r['kv_read_gb']:,.2f} GB of key/value reads -> "
                         f"{r['memory_bound_s']:.3f} s; roofline bound {r['roofline_bound_s']:.3f} s, "
                         f"efficiency {_eff(r['roofline_efficiency'])}")
    return lines


def _eff(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _prefix_cache(modes: dict[str, Any]) -> str:
    parts = []
    for mode, label in _LABELS.items():
        c = modes[mode].get("prefix_cache")
        parts.append(f"{label}: off" if not c else
                     f"{label}: {100 * c['reused_share']:.0f} % of {int(c['prompt_tokens'])} prompt tokens reused "
                     f"({int(c['hits'])}/{int(c['lookups'])} prompts hit, {int(c['evictions'])} evicted, "
                     f"{int(c['refused'])} not stored)")
    return "prompt-prefix cache: " + "; ".join(parts)


def _correctness(c: dict[str, Any]) -> str:
    verdict = "identical" if c["transcripts_identical"] else "DIFFERENT"
    return (f"correctness: transcripts {verdict} in both modes ({c['identical_debates']}/{c['debates']} debates, "
            f"{c['turns']} turns); surveys with equal score {c['survey_scores_equal']}/{c['surveys']}, "
            f"max |delta expected score| {c['survey_max_abs_diff_expected']:.2g}")
