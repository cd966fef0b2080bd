"""The verdict: a pure function of a diff's summaries, its thresholds and the noise floor's gate."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from .summary import Summaries
from .thresholds import Thresholds


@dataclass(frozen=True)
class Verdict:
    verdict: str  # "report" (no gate given), "pass" or "fail"
    failures: tuple[str, ...] = ()


class Gate(Protocol):
    """A gate beyond the thresholds: the measured noise floor's (``floor.Floor``)."""

    @property
    def gated(self) -> bool: ...

    def failures(self, generated: dict) -> list[str]: ...


def judge(summaries: Summaries, thresholds: Thresholds, floor: Gate | None = None) -> Verdict:
    """The verdict and its failures for the thresholds and the floor's gate.

    Any gate (a threshold or ``max_floor_ratio``) turns on the checks that
    need none (NaN positions, vLLM's rule at the first divergence).
    """
    garbage = _garbage_failures(summaries)
    if thresholds.is_empty() and not (floor is not None and floor.gated):
        return Verdict("fail", tuple(garbage)) if garbage else Verdict("report")
    failures: list[str] = list(garbage)
    parts = [("generated", summaries.generated)]
    if summaries.prompt and summaries.prompt["positions"]:
        parts.append(("prompt", summaries.prompt))
    for label, s in parts:
        if s["positions"]:
            failures += _threshold_failures(label, s, thresholds)
    if floor is not None:
        failures += floor.failures(summaries.generated)
    for seq in summaries.sequences:
        div = seq.get("divergence")
        if div and not div["passes"]:
            failures.append(
                f"sequence {seq['index']}: at the first divergent token (generated index "
                f"{seq['first_divergence']}) a token is outside the other side's top-{div['top_n']}"
            )
    return Verdict("fail" if failures else "pass", tuple(failures))


def _garbage_failures(summaries: Summaries) -> list[str]:
    """Forced positions whose candidate argmax is outside the reference's top
    GARBAGE_RANK: a failure whatever the thresholds (``flips``)."""
    if not summaries.forced:
        return []
    out = []
    for kind, f in summaries.flips.items():
        if f.get("garbage"):
            first = next((x for x in f["listed"] if x["class"] == "garbage"), None)
            where = (f": first listed at sequence {first['sequence']} position {first['position']} (rank "
                     f"{first['rank_in_reference']} in the reference)") if first else ""
            out.append(f"{kind}: {f['garbage']} forced positions where the candidate's top token is outside the "
                       f"reference's top-{f['garbage_rank']}{where}")
    return out


def _threshold_failures(label: str, s: dict, t: Thresholds) -> list[str]:
    failures = []
    kl = s["kl"]
    if t.max_kl is not None and kl["max"] is not None and not kl["max"] <= t.max_kl:
        failures.append(f"{label}: max KL {_fmt(kl['max'])} > {t.max_kl:g}")
    if t.max_mean_kl is not None and kl["mean"] is not None and not kl["mean"] <= t.max_mean_kl:
        failures.append(f"{label}: mean KL {_fmt(kl['mean'])} > {t.max_mean_kl:g}")
    if t.min_top1 is not None and s["top1_agreement"] is not None and s["top1_agreement"] < t.min_top1:
        failures.append(f"{label}: top-1 agreement {s['top1_agreement']:.4f} < {t.min_top1:g}")
    if t.max_abs is not None and s["max_abs"] is not None and not s["max_abs"] <= t.max_abs:
        failures.append(f"{label}: max |delta logprob| {_fmt(s['max_abs'])} > {t.max_abs:g}")
    if s["nan_positions"]:
        failures.append(f"{label}: {s['nan_positions']} positions hold NaN")
    if t.max_kl is not None and s["nonfinite_kl_positions"] and kl["max"] is not None and math.isfinite(kl["max"]):
        failures.append(f"{label}: {s['nonfinite_kl_positions']} positions have non-finite KL")
    return failures


def _fmt(x: float | None) -> str:
    if x is None:
        return "n/a"
    if not math.isfinite(x):
        return str(x)
    return f"{x:.3g}"
