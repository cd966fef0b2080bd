"""Argmax flips, classified: a near-tie that the candidate's rounding can
explain, a real flip, or a garbage token.

A flip is a compared position where the candidate's top token is not the
reference's. Its size is the reference's logprob gap between its own top
token and the candidate's (``metrics.flips``), in units of the candidate
dtype's rounding step at the magnitude of the reference's top logit: the
vLLM-Neuron accuracy suite tolerates a flip when the logit gap is within one
bf16 step at that magnitude. Gaps within ``tie_steps`` steps are near-ties;
wider ones are real. A candidate top token outside the reference's top
``GARBAGE_RANK`` (tt-metal's rule) is garbage: on a forced trajectory the
device produced a token the reference all but rules out.
"""

from __future__ import annotations

import math

import numpy as np

GARBAGE_RANK = 100
# Near-tie limit in rounding steps; chosen from measurements (docs/verdicts.md).
TIE_STEPS = 4.0
# Explicit mantissa bits: the step at magnitude m is 2 ** (floor(log2 m) - bits).
MANTISSA_BITS = {"bfloat16": 7, "float16": 10, "float32": 23, "half": 10, "float": 23}
NEAR_TIE, REAL, GARBAGE = "near-tie", "real", "garbage"
LISTED = 20  # flips listed in the report, widest gap first


def rounding_step(magnitude: np.ndarray | float, dtype: str) -> np.ndarray:
    """The spacing of ``dtype`` values at ``magnitude`` (one ulp); the
    candidate's dtype, or bfloat16 when it is not known."""
    bits = MANTISSA_BITS.get(str(dtype), MANTISSA_BITS["bfloat16"])
    m = np.maximum(np.abs(np.asarray(magnitude, dtype=np.float64)), np.finfo(np.float32).tiny)
    return np.exp2(np.floor(np.log2(m)) - bits)


def classify(pos: dict[str, np.ndarray], dtype: str, tie_steps: float) -> dict:
    """The flips of one row kind: counts by class and the widest ones listed."""
    idx = np.flatnonzero(pos["flip_rank"] > 0) if "flip_rank" in pos else np.array([], np.int64)
    gap = pos["flip_gap"][idx] if len(idx) else np.array([])
    mag = pos["ref_logit"][idx] if len(idx) else np.array([])
    rank = pos["flip_rank"][idx] if len(idx) else np.array([], np.int64)
    # Top-N rows give no logit estimate: step at magnitude 1, a conservative small step.
    step = rounding_step(np.where(np.isfinite(mag), mag, 1.0), dtype) if len(idx) else np.array([])
    steps = gap / step if len(idx) else np.array([])
    cls = np.where(rank > GARBAGE_RANK, GARBAGE, np.where(steps <= tie_steps, NEAR_TIE, REAL)) if len(idx) else []
    listed = []
    for i in np.argsort(-np.nan_to_num(steps, nan=math.inf), kind="stable")[:LISTED] if len(idx) else []:
        p = int(idx[i])
        listed.append({
            "sequence": int(pos["seq"][p]),
            "position": int(pos["pos"][p]),
            "reference_token": int(pos["ref_top"][p]),
            "candidate_token": int(pos["cand_top"][p]),
            "gap": _num(gap[i]),
            "steps": _num(steps[i]),
            "rank_in_reference": int(rank[i]),
            "class": str(cls[i]),
        })
    counts = {c: int(np.count_nonzero(np.asarray(cls) == c)) for c in (NEAR_TIE, REAL, GARBAGE)}
    return {"flips": int(len(idx)), **counts, "tie_steps": tie_steps, "dtype": str(dtype),
            "garbage_rank": GARBAGE_RANK, "listed": listed}


def _num(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None
