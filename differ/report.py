"""The diff report: summaries of per-position metrics, the verdict, JSON output."""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from parity.errors import OutputNotWritableError

from .floor import floor_failures, is_gated
from .thresholds import Thresholds

JSON_SCHEMA = "parity.diff/1"

# Buckets of the reference's top-token probability (ExLlamaV3 qbench style).
CONFIDENCE_EDGES = (0.0, 0.5, 0.8, 0.95, 0.99, 1.0)


def _f(x) -> float | None:
    """Python float (inf and nan kept) or None."""
    if x is None:
        return None
    return float(x)


def kl_summary(kl: np.ndarray) -> dict[str, float | None]:
    """Mean and percentiles over finite KL; max over all non-NaN values (inf kept)."""
    fin = kl[np.isfinite(kl)]
    out: dict[str, float | None] = {k: None for k in ("mean", "median", "p90", "p99", "p999", "max")}
    if len(fin):
        out["mean"] = float(np.mean(fin))
        q = np.percentile(fin, [50, 90, 99, 99.9])
        out["median"], out["p90"], out["p99"], out["p999"] = (float(v) for v in q)
    notnan = kl[~np.isnan(kl)]
    if len(notnan):
        out["max"] = float(np.max(notnan))
    return out


def _mean(x: np.ndarray) -> float | None:
    x = x[np.isfinite(x)]
    return float(np.mean(x)) if len(x) else None


def _rate(x: np.ndarray) -> float | None:
    return float(np.mean(x)) if len(x) else None


def sequence_slice(seq: np.ndarray, index: int) -> slice:
    """The positions of sequence ``index`` in a per-position array sorted by sequence."""
    a, b = np.searchsorted(seq, [index, index + 1])
    return slice(int(a), int(b))


def nan_mask(pos: dict[str, np.ndarray]) -> np.ndarray:
    return (pos["nan_ref"] > 0) | (pos["nan_cand"] > 0)


def summarize(pos: dict[str, np.ndarray], token_match_rate: float | None = None) -> dict[str, Any]:
    kl = pos["kl"]
    dp = pos["delta_p"][np.isfinite(pos["delta_p"])]
    max_abs = pos["max_abs"][~np.isnan(pos["max_abs"])]
    pearson = pos["pearson"][np.isfinite(pos["pearson"])]
    rank = pos["rank"][np.isfinite(pos["rank"])]
    return {
        "positions": int(len(kl)),
        "kl": kl_summary(kl),
        "nonfinite_kl_positions": int(np.count_nonzero(~np.isfinite(kl))),
        "top1_agreement": _rate(pos["top1"]),
        "max_abs": float(max_abs.max()) if len(max_abs) else None,
        "mean_abs": _mean(pos["mean_abs"]),
        "delta_p": {
            "mean": float(dp.mean()) if len(dp) else None,
            "rms": float(np.sqrt(np.mean(dp * dp))) if len(dp) else None,
        },
        "nan_positions": int(np.count_nonzero(nan_mask(pos))),
        "inf_positions": int(np.count_nonzero((pos["posinf_ref"] > 0) | (pos["posinf_cand"] > 0))),
        "masked_positions": int(np.count_nonzero((pos["neginf_ref"] > 0) | (pos["neginf_cand"] > 0))),
        "token_match_rate": token_match_rate,
        "top5_overlap": _mean(pos["overlap5"]),
        "top10_overlap": _mean(pos["overlap10"]),
        "pearson": {"min": float(pearson.min()) if len(pearson) else None, "mean": _mean(pearson)},
        "outliers": int(pos["outliers"].sum()),
        "rank": {"mean": _mean(rank), "max": float(rank.max()) if len(rank) else None},
        "approximate": bool(pos["approx"].any()) if len(kl) else False,
    }


def kl_by_confidence(pos: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    out = []
    conf = pos["ref_conf"]
    edges = CONFIDENCE_EDGES
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        last = i == len(edges) - 2
        m = (conf >= lo) & ((conf <= hi) if last else (conf < hi))
        kl = pos["kl"][m]
        s = kl_summary(kl)
        out.append({
            "confidence": [lo, hi],
            "positions": int(m.sum()),
            "kl_mean": s["mean"],
            "kl_median": s["median"],
            "kl_max": s["max"],
            "top1_agreement": _rate(pos["top1"][m]),
        })
    return out


def evaluate(report: "Report") -> tuple[str, list[str]]:
    """(verdict, failures) for the report's thresholds and floor gate.

    Any gate (a threshold or ``max_floor_ratio``) turns on the checks that
    need none (NaN positions, vLLM's rule at the first divergence).
    """
    t = report.thresholds
    if t.is_empty() and not is_gated(report.floor):
        return "report", []
    failures: list[str] = []
    parts = [("generated", report.summary)]
    if report.prompt and report.prompt["positions"]:
        parts.append(("prompt", report.prompt))
    for label, s in parts:
        if not s["positions"]:
            continue
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
    failures += floor_failures(report.floor, report.summary)
    for seq in report.sequences:
        div = seq.get("divergence")
        if div and not div["passes"]:
            failures.append(
                f"sequence {seq['index']}: at the first divergent token (generated index "
                f"{seq['first_divergence']}) a token is outside the other side's top-{div['top_n']}"
            )
    return ("fail" if failures else "pass"), failures


def _fmt(x: float | None) -> str:
    if x is None:
        return "n/a"
    if not math.isfinite(x):
        return str(x)
    return f"{x:.3g}"


def jsonable(obj: Any) -> Any:
    """Plain JSON types; non-finite floats become the strings "inf", "-inf", "nan"."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        x = float(obj)
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return x
    if isinstance(obj, Path):
        return str(obj)
    return obj


@dataclass
class Report:
    """Everything ``diff`` found. ``to_dict`` is the ``--json`` document."""

    reference: dict
    candidate: dict
    forced: bool
    summary: dict
    prompt: dict | None
    sequences: list[dict]
    worst: list[dict]
    thresholds: Thresholds
    warnings: list[str] = field(default_factory=list)
    kl_by_confidence: list[dict] = field(default_factory=list)
    worst_detail: dict | None = None
    eps: float = 0.5
    top_n_rule: int = 5
    # Baseline vs reference and the candidate's ratios to it (floor.py); None without a baseline.
    floor: dict | None = None
    verdict: str = "report"
    failures: list[str] = field(default_factory=list)
    # Per-position arrays by row kind ("generated", "prompt"); not in the JSON.
    # With diff(details=True) also each side's top-5 ids and logprobs (2-D).
    positions: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)
    # id -> decoded text of the ids the details use (details=True with decode); not in the JSON.
    token_texts: dict[int, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.verdict, self.failures = evaluate(self)

    @property
    def exit_code(self) -> int:
        return 1 if self.verdict == "fail" else 0

    def to_dict(self) -> dict:
        """The JSON document (Python floats: inf and nan kept as floats)."""
        return {
            "schema": JSON_SCHEMA,
            "reference": self.reference,
            "candidate": self.candidate,
            "summary": self.summary,
            "sequences": self.sequences,
            "worst": self.worst,
            "verdict": self.verdict,
            "thresholds": self.thresholds.to_dict(),
            "failures": self.failures,
            "warnings": self.warnings,
            "forced_trajectory": self.forced,
            "prompt": self.prompt,
            "kl_by_confidence": self.kl_by_confidence,
            "worst_detail": self.worst_detail,
            "eps": self.eps,
            "top_n_rule": self.top_n_rule,
            "floor": self.floor,
        }

    def to_json(self) -> str:
        return json.dumps(jsonable(self.to_dict()), indent=2, allow_nan=False) + "\n"

    def write_json(self, path: str | Path) -> Path:
        """Writes the JSON document atomically (temporary file, then rename)."""
        return write_atomic(path, self.to_json())


def write_atomic(path: str | Path, text: str) -> Path:
    """Writes text to path through a temporary file in the same directory."""
    path = Path(path).expanduser()
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OutputNotWritableError(f"cannot write {path}: {e.strerror or e}", hint="choose another path") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
