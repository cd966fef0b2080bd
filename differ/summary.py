"""Statistics over per-position metrics, and ``Summaries``: one candidate's
diff summarised, what the verdict and the noise floor are judged on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Buckets of the reference's top-token probability (ExLlamaV3 qbench style).
CONFIDENCE_EDGES = (0.0, 0.5, 0.8, 0.95, 0.99, 1.0)


@dataclass(frozen=True)
class Summaries:
    """One candidate against the reference, summarised, before any verdict.

    ``verdict.judge`` reads ``generated``, ``prompt`` and ``sequences``; the
    noise floor (``floor.measure``) also the side's description, alignment
    and warnings; with a verdict, all of it becomes a ``Report``. The dicts
    are sections of the JSON document (``Report.to_dict``), complete when
    assembled: nothing changes them afterwards.
    """

    reference: dict  # the stores, as ``Report.reference`` / ``Report.candidate`` describe them
    candidate: dict
    forced: bool  # the candidate was recorded on the reference's trajectory
    generated: dict  # ``summarize`` of the generated positions: the report's ``summary``
    prompt: dict | None  # of the prompt positions, None when no prompt rows were compared
    sequences: tuple[dict, ...]
    warnings: tuple[str, ...]
    worst: tuple[dict, ...]
    worst_detail: dict | None
    kl_by_confidence: tuple[dict, ...]
    eps: float
    top_n_rule: int
    # Per-position arrays by row kind (see ``Report.positions``); not in the JSON.
    positions: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False, compare=False)


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


def sequence_summary(pos: dict[str, np.ndarray], seq: np.ndarray, index: int) -> dict:
    """One sequence's statistics; ``_first_top1_mismatch`` is for the caller to pop."""
    sl = sequence_slice(seq, index)
    kl = pos["kl"][sl]
    fin = kl[np.isfinite(kl)]
    notnan = kl[~np.isnan(kl)]
    top1 = pos["top1"][sl]
    return {
        "positions": int(len(kl)),
        "kl_mean": float(fin.mean()) if len(fin) else None,
        "kl_max": float(notnan.max()) if len(notnan) else None,
        "top1_agreement": float(top1.mean()) if len(top1) else None,
        "nan_positions": int(np.count_nonzero(nan_mask({k: v[sl] for k, v in pos.items()}))),
        "_first_top1_mismatch": int(np.argmin(top1)) if len(top1) and not top1.all() else None,
    }
