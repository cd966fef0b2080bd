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

The per-position gate (``FloorRule``, on whenever there is a floor): both
the candidate and the baseline follow the reference's trajectory, so every
position has a floor of its own. A position is within the floor when the
candidate's KL is at most ``ratio`` times the baseline's KL there plus
``kl_eps``, and its largest |delta logprob| at most ``ratio`` times the
baseline's plus ``abs_eps`` (the epsilons keep near-zero floors from failing
rounding noise). The candidate passes when at least ``min_fraction`` of the
positions of each row kind are within, and its sigma ratios (RMS of the
per-position error over the baseline's: sqrt of the KL means' ratio, the RMS
ratio of |delta|) stay under ``max_sigma_ratio`` and ``max_sigma_ratio_abs``:
the vLLM-Neuron accuracy suite's per-token and sigma-ratio rules. Real argmax
flips (``flips``) may not outnumber ``ratio`` times the baseline's plus
``extra_real_flips``. The defaults, and the measurements they come from, are
in docs/verdicts.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from parity.errors import UsageError

from .flips import REAL
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
class FloorRule:
    """The per-position gate's parameters; the defaults and the measurements
    they were chosen from are in docs/verdicts.md."""

    ratio: float = 4.0
    kl_eps: float = 1e-4
    abs_eps: float = 0.05
    min_fraction: float = 0.80
    max_sigma_ratio: float = 3.0  # of KL: sqrt(mean KL / the floor's mean KL)
    max_sigma_ratio_abs: float = 2.0  # of |delta|: RMS of max |delta| over the floor's
    extra_real_flips: int = 2  # real flips allowed beyond ratio x the floor's

    def __post_init__(self) -> None:
        for name in FLOOR_RULE_FIELDS:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or v < 0:
                raise UsageError(f"floor rule {name} must be a non-negative number, got {v!r}")
        if self.min_fraction > 1:
            raise UsageError(f"floor rule min_fraction is a fraction in [0, 1], got {self.min_fraction}")

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in FLOOR_RULE_FIELDS}


FLOOR_RULE_FIELDS = ("ratio", "kl_eps", "abs_eps", "min_fraction", "max_sigma_ratio", "max_sigma_ratio_abs",
                     "extra_real_flips")


WORST_RATIO_LISTED = 5


def _keys(pos: dict) -> np.ndarray:
    return (pos["seq"].astype(np.int64) << 32) | pos["pos"].astype(np.int64)


def _rms(x: np.ndarray) -> float | None:
    return float(np.sqrt(np.mean(x * x))) if len(x) else None


def per_position(cand: dict, base: dict, rule: FloorRule) -> dict | None:
    """The per-position gate's statistics for one row kind (None: no common position)."""
    if not len(cand.get("kl", ())) or not len(base.get("kl", ())):
        return None
    _, ic, ib = np.intersect1d(_keys(cand), _keys(base), assume_unique=True, return_indices=True)
    if not len(ic):
        return None
    kl_c, kl_f = cand["kl"][ic], base["kl"][ib]
    ab_c, ab_f = cand["max_abs"][ic], base["max_abs"][ib]
    within_kl = kl_c <= rule.ratio * kl_f + rule.kl_eps  # NaN or inf on the candidate's side: not within
    within_abs = ab_c <= rule.ratio * ab_f + rule.abs_eps
    within = within_kl & within_abs
    fin = np.isfinite(kl_c) & np.isfinite(kl_f)
    fab = np.isfinite(ab_c) & np.isfinite(ab_f)
    mean_c, mean_f = (float(np.mean(k[fin])) if fin.any() else None for k in (kl_c, kl_f))
    sigma_kl = None if mean_c is None else (
        math.sqrt(ratio(mean_c, mean_f)) if ratio(mean_c, mean_f) is not None else None)
    sigma_abs = ratio(_rms(ab_c[fab]), _rms(ab_f[fab])) if fab.any() else None
    # How far past the allowance each position is: the worst first.
    excess = np.where(np.isnan(kl_c), np.inf, kl_c / (rule.ratio * kl_f + rule.kl_eps))
    worst = []
    for i in np.argsort(-excess, kind="stable")[:WORST_RATIO_LISTED]:
        worst.append({
            "sequence": int(cand["seq"][ic[i]]), "position": int(cand["pos"][ic[i]]),
            "kl": _num(kl_c[i]), "floor_kl": _num(kl_f[i]),
            "ratio": ratio(_num(kl_c[i]), _num(kl_f[i])),
            "max_abs": _num(ab_c[i]), "floor_max_abs": _num(ab_f[i]),
        })
    return {
        "positions": int(len(ic)),
        "within": int(np.count_nonzero(within)),
        "fraction_within": float(np.mean(within)),
        "fraction_within_kl": float(np.mean(within_kl)),
        "fraction_within_abs": float(np.mean(within_abs)),
        "sigma_ratio_kl": sigma_kl,
        "sigma_ratio_abs": sigma_abs,
        "worst_ratio": worst,
    }


def _num(x) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def _gate_failures(label: str, p: dict, rule: FloorRule) -> list[str]:
    out = []
    if p["fraction_within"] < rule.min_fraction:
        w = p["worst_ratio"][0]
        out.append(
            f"{label}: within {rule.ratio:g}x the floor at {100 * p['fraction_within']:.1f}% of {p['positions']} "
            f"positions (needs {100 * rule.min_fraction:g}%; KL {100 * p['fraction_within_kl']:.1f}%, "
            f"|delta| {100 * p['fraction_within_abs']:.1f}%); worst: sequence {w['sequence']} position "
            f"{w['position']}, KL {_g(w['kl'])} against the floor's {_g(w['floor_kl'])}")
    for what, key, limit in (("KL", "sigma_ratio_kl", rule.max_sigma_ratio),
                             ("|delta|", "sigma_ratio_abs", rule.max_sigma_ratio_abs)):
        r = p[key]
        if r is not None and r > limit:
            out.append(f"{label}: sigma ratio of {what} to the floor's is {times(r)} (limit {limit:g})")
    return out


def _g(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2g}"


@dataclass(frozen=True)
class Floor:
    """The floor a baseline measured, set beside one candidate (``measure``)."""

    section: dict  # the report's ``floor``: the baseline's statistics, the candidate's ratios to them
    warnings: tuple[str, ...] = ()  # for the candidate's report: a zero floor, a failing baseline

    @property
    def gated(self) -> bool:
        return self.section.get("max_floor_ratio") is not None or self.section.get("rule") is not None

    def failures(self, generated: dict) -> list[str]:
        """The gates' failure lines for the candidate (empty when it passes or no gate is set)."""
        out = self._ratio_failures(generated)
        rule = self.section.get("rule")
        if rule is not None:
            rule = FloorRule(**{k: v for k, v in rule.items() if k in FLOOR_RULE_FIELDS})
            for label, p in (self.section.get("per_position") or {}).items():
                if p is not None:
                    out += _gate_failures(label, p, rule)
            for label, f in (self.section.get("flips") or {}).items():
                if f["candidate_real"] > rule.ratio * f["floor_real"] + rule.extra_real_flips:
                    out.append(f"{label}: {f['candidate_real']} real argmax flips (gap over "
                               f"{f['tie_steps']:g} rounding steps) against the floor's {f['floor_real']}")
        return out

    def _ratio_failures(self, generated: dict) -> list[str]:
        if self.section.get("max_floor_ratio") is None or not generated["positions"]:
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


def measure(cand: Summaries, base: Summaries, thresholds: Thresholds, max_floor_ratio: float | None,
            rule: FloorRule | None = None) -> Floor:
    """The floor measured by ``base`` (reference vs baseline) for ``cand``
    (reference vs candidate); the baseline is judged by the same thresholds.
    ``rule``: the per-position gate (None: the floor is reported, gated only
    by ``max_floor_ratio`` when given)."""
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
        "rule": rule.to_dict() if rule is not None else None,
        "per_position": {kind: per_position(cand.positions.get(kind, {}), base.positions.get(kind, {}), rule)
                         for kind in ("generated", "prompt")} if rule is not None else None,
        "flips": _flip_counts(cand, base),
        "baseline_verdict": base_verdict.verdict,
        "baseline_failures": list(base_verdict.failures),
        "warnings": floor_warnings,
    }
    return Floor(section, tuple(warnings))


def _flip_counts(cand: Summaries, base: Summaries) -> dict:
    out = {}
    for kind, f in cand.flips.items():
        b = base.flips.get(kind)
        if b is not None and f["flips"] + b["flips"]:
            out[kind] = {"candidate_real": f[REAL], "floor_real": b[REAL], "candidate_flips": f["flips"],
                         "floor_flips": b["flips"], "tie_steps": f["tie_steps"]}
    return out
