"""The measured noise floor (``diff(..., baseline=STORE)``).

A baseline of accepted numerics (the same request in bfloat16, or on the hf
device) is diffed against the same reference as the candidate; the report's
``floor`` section holds that diff's summary and the candidate's statistics as
multiples of it, so a threshold can rest on a measurement ("KL p99 is 1.8x
the bf16 floor") and not only on a preset.

Ratio semantics (``ratio``): candidate / baseline; 1.0 when both are equal
(0 and 0 included: the candidate sits on the floor); +inf when the floor is 0
and the candidate is not; None when either side has no value. The gate
(``max_floor_ratio`` R) fails when the candidate's generated KL p99 ratio
exceeds R, so with a zero floor any candidate difference fails every finite R.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .summary import Summaries
from .thresholds import Thresholds
from .verdict import judge

GATED = "kl_p99"

_ZERO_FLOOR_HINT = ("so any difference exceeds it: pick a baseline of other accepted numerics "
                    "(e.g. recorded with --dtype bfloat16, or with --device hf)")


def ratio(candidate: float | None, floor: float | None) -> float | None:
    """candidate / floor with the module's zero-floor semantics."""
    if candidate is None or floor is None:
        return None
    if candidate == floor:  # 0/0 and inf/inf included
        return 1.0
    if floor == 0:
        return math.inf
    if math.isinf(floor):
        return 0.0
    return candidate / floor


def times(r: float | None) -> str:
    """A ratio as the text before an "x": 1.8, 41, 1234, inf."""
    if r is None:
        return "n/a"
    if math.isinf(r):
        return "inf"
    return f"{r:.0f}" if r >= 100 else f"{r:.2g}"


def side(summary: dict | None) -> dict | None:
    """The statistics the floor is stated in, from a report summary."""
    if summary is None:
        return None
    kl = summary["kl"]
    return {
        "positions": summary["positions"],
        "kl_mean": kl["mean"],
        "kl_p50": kl["median"],
        "kl_p99": kl["p99"],
        "kl_max": kl["max"],
        "top1_agreement": summary["top1_agreement"],
        "nan_positions": summary["nan_positions"],
    }


def _disagreement(s: dict) -> float | None:
    return None if s["top1_agreement"] is None else 1.0 - s["top1_agreement"]


def ratios(cand: dict, base: dict) -> dict:
    return {
        "kl_mean": ratio(cand["kl_mean"], base["kl_mean"]),
        "kl_p99": ratio(cand["kl_p99"], base["kl_p99"]),
        "kl_max": ratio(cand["kl_max"], base["kl_max"]),
        "top1_disagreement": ratio(_disagreement(cand), _disagreement(base)),
    }


def _bit_identical(base: Summaries) -> bool:
    parts = [s for s in (base.generated, base.prompt) if s and s["positions"]]
    return bool(parts) and all(
        s["max_abs"] == 0 and s["kl"]["max"] == 0 and not s["nonfinite_kl_positions"] and not s["nan_positions"]
        for s in parts
    )


@dataclass(frozen=True)
class Floor:
    """The floor a baseline measured, set beside one candidate (``measure``)."""

    section: dict  # the report's ``floor``: the baseline's statistics, the candidate's ratios to them
    warnings: tuple[str, ...] = ()  # for the candidate's report: a zero floor, a failing baseline

    @property
    def gated(self) -> bool:
        return self.section.get("max_floor_ratio") is not None

    def failures(self, generated: dict) -> list[str]:
        """The gate's failure lines for the candidate's generated summary (empty when it passes or is not set)."""
        if not self.gated or not generated["positions"]:
            return []
        limit = self.section["max_floor_ratio"]
        c = generated["kl"]["p99"]
        b = self.section["generated"]["kl_p99"]
        r = self.section["ratios"][GATED]
        if c is None:
            return ["generated: no finite KL to set beside the baseline's floor"]
        if r is None:
            return ["generated: the baseline has no compared positions with finite KL: no floor to gate KL p99 on"]
        if r > limit and math.isinf(r):
            return [f"generated: KL p99 {c:.2g} is above the baseline's zero floor (limit {limit:g}x)"]
        if r > limit:
            return [f"generated: KL p99 {c:.2g} is {times(r)}x the baseline's floor {b:.2g} (limit {limit:g}x)"]
        return []


def measure(cand: Summaries, base: Summaries, thresholds: Thresholds, max_floor_ratio: float | None) -> Floor:
    """The floor measured by ``base`` (reference vs baseline) for ``cand``
    (reference vs candidate); the baseline is judged by the same thresholds."""
    gen, prompt = side(base.generated), side(base.prompt)
    cand_prompt = side(cand.prompt)
    base_verdict = judge(base, thresholds)
    warnings = []
    if _bit_identical(base):
        warnings.append(f"the baseline is bit-identical to the reference: the floor is zero, {_ZERO_FLOOR_HINT}")
    elif gen["positions"] and gen["kl_p99"] == 0:
        warnings.append(f"the baseline's generated KL p99 is 0: the floor is zero, {_ZERO_FLOOR_HINT}")
    if base_verdict.verdict == "fail":
        warnings.append(f"the baseline itself fails the thresholds ({base_verdict.failures[0]}): "
                        "they are tighter than the numerics it stands for")
    # The checks were written for a candidate; here the other side is the baseline.
    floor_warnings = [w.replace("candidate", "baseline") for w in base.warnings]
    diverged = sum(s["first_divergence"] is not None for s in base.sequences)
    if not base.forced and diverged:
        floor_warnings.append(f"the baseline is free-running and diverges in {diverged} of {len(base.sequences)} "
                              "sequences: its floor covers positions up to the first divergent token only "
                              "(record it with --golden)")
    section = {
        "baseline": base.candidate,
        "forced_trajectory": base.forced,
        "generated": gen,
        "prompt": prompt,
        "ratios": ratios(side(cand.generated), gen),
        "prompt_ratios": ratios(cand_prompt, prompt) if cand_prompt and prompt else None,
        "max_floor_ratio": max_floor_ratio,
        "gated_statistic": GATED,
        "baseline_verdict": base_verdict.verdict,
        "baseline_failures": list(base_verdict.failures),
        "warnings": floor_warnings,
    }
    return Floor(section, tuple(warnings))
