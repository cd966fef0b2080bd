"""Statistics over per-position metrics, and ``Summaries``: one candidate's
diff summarised, what the verdict and the noise floor are judged on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import uncertainty as unc

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
    # Argmax flips by row kind, classified (``flips.classify``).
    flips: dict = field(default_factory=dict)
    # KL against absolute position by row kind (``kl_by_position``; None: no positions of the kind).
    kl_by_position: dict = field(default_factory=dict)
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
        **uncertain(pos),
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
            **uncertain(pos, m),
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


def uncertain(pos: dict[str, np.ndarray], mask: np.ndarray | None = None) -> dict[str, Any]:
    """Standard errors and 95% intervals of the KL mean (finite KL, as the
    mean itself) and of top-1 agreement, over the positions where ``mask``
    holds (all without one); sequences are the clusters when there are two or
    more (``uncertainty``)."""
    kl, top1, seq = pos["kl"], pos["top1"], pos.get("seq")
    if mask is not None:
        kl, top1, seq = kl[mask], top1[mask], None if seq is None else seq[mask]
    c = unc.clusters(seq, len(kl))
    fin = np.isfinite(kl)
    m = unc.mean(kl[fin], unc.subset(c, fin), lower=0.0)
    t = unc.rate(top1, c)
    return {
        "kl_mean_se": m.se,
        "kl_mean_ci95": m.interval,
        "top1_agreement_se": t.se,
        "top1_agreement_ci95": t.interval,
        "se_method": c.method,
        "se_clusters": c.count,
    }


# KL against position: bins of absolute position, powers of two from 16 on
# (0-15, 16-31, 32-63, ...): equal width on a log scale, readable labels, 2
# bins at 32 positions and 14 at 128k.
FIRST_POSITION_BIN = 16
MIN_P99_POSITIONS = 100  # fewer finite KL values in a bin: no p99 (it would be about the max)
# KL drifts with position when the least-squares slope is positive at the
# one-sided p of a 3-sigma normal deviate (slope/SE > 3 with many sequences,
# Student-t with G - 1 degrees of freedom with few) and the last bin's mean KL
# is at least DRIFT_RATIO times the first's: significant and large enough to matter.
DRIFT_SIGMA = 3.0
DRIFT_P = unc.normal_sf(DRIFT_SIGMA)
DRIFT_RATIO = 2.0
DRIFT_CAUSE = "a position-dependent bug (RoPE, long-context attention, KV paging) looks like this"


def position_edges(last: int) -> np.ndarray:
    """Bin edges 0, 16, 32, 64, ... past ``last``: bin i is [edges[i], edges[i + 1])."""
    edges = [0, FIRST_POSITION_BIN]
    while edges[-1] <= last:
        edges.append(edges[-1] * 2)
    return np.array(edges, np.int64)


def _range(lo: int, hi: int) -> str:
    return f"{lo}-{hi}"


def _sci(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1e}"


def kl_by_position(pos: dict[str, np.ndarray]) -> dict[str, Any] | None:
    """KL against absolute position (``pos``: the position of the token the
    row predicts): per bin of ``position_edges`` the positions, KL mean with
    its SE, KL p99, top-1 agreement; the least-squares slope of finite KL on
    position per 1000 positions with its SE; and whether KL drifts (see
    DRIFT_P, DRIFT_RATIO), in words in ``verdict``. None without positions."""
    kl = pos["kl"]
    n = len(kl)
    if not n or "pos" not in pos:
        return None
    x, top1, seq = pos["pos"], pos["top1"], pos.get("seq")
    c = unc.clusters(seq, n)
    fin = np.isfinite(kl)
    edges = position_edges(int(x.max()))
    which = np.searchsorted(edges, x, side="right") - 1
    bins = []
    for b in np.unique(which).tolist():
        m = which == b
        mf = m & fin
        est = unc.mean(kl[mf], unc.subset(c, mf), lower=0.0)
        agree = unc.rate(top1[m], unc.subset(c, m))
        f = kl[mf]
        bins.append({
            "position": [int(edges[b]), int(edges[b + 1]) - 1],
            "positions": int(np.count_nonzero(m)),
            "sequences": int(len(np.unique(seq[m]))) if seq is not None else 1,
            "kl_mean": est.value,
            "kl_mean_se": est.se,
            "kl_mean_ci95": est.interval,
            "kl_p99": float(np.percentile(f, 99)) if len(f) >= MIN_P99_POSITIONS else None,
            "top1_agreement": agree.value,
            "top1_agreement_ci95": agree.interval,
            "nonfinite_kl_positions": int(np.count_nonzero(m & ~fin)),
        })
    fit = unc.slope(x[fin], kl[fin], unc.subset(c, fin))
    means = [b for b in bins if b["kl_mean"] is not None]
    growth = _growth(means[-1]["kl_mean"], means[0]["kl_mean"]) if len(means) >= 2 else None
    drift = bool(fit is not None and fit.p_increase <= DRIFT_P and growth is not None and growth >= DRIFT_RATIO)
    return {
        "positions": n,
        "bins": bins,
        "slope_per_1k": None if fit is None else fit.slope * 1000,
        "slope_per_1k_se": None if fit is None else fit.se * 1000,
        "slope_t": None if fit is None else fit.t,
        "slope_df": None if fit is None else fit.df,
        "slope_p": None if fit is None else fit.p_increase,
        "se_method": c.method if fit is None else fit.method,
        "last_to_first": growth,
        "drift": drift,
        "verdict": _position_verdict(fit, means, drift),
    }


def _growth(last: float, first: float) -> float:
    """last / first bin's KL mean: 1 when both are 0, inf over a zero first."""
    if last == first:
        return 1.0
    return float("inf") if first <= 0 else last / first


def _position_verdict(fit: unc.Slope | None, means: list[dict], drift: bool) -> str:
    """The one line the reports show: the drift named, or the slope that is not one."""
    if fit is None:
        return "KL against position: no fit (it needs 3 or more finite KL values at 2 or more positions)"
    slope = f"{_sci(fit.slope * 1000)} per 1k positions (±{_sci(fit.se * 1000)})"
    if len(means) < 2:
        return f"KL against position: no drift: slope {slope}, {fit.method}; all in {_range(*means[0]['position'])}"
    first, last = means[0], means[-1]
    means = (f"mean {_sci(first['kl_mean'])} at {_range(*first['position'])} vs {_sci(last['kl_mean'])} "
             f"at {_range(*last['position'])}")
    if drift:
        return f"KL grows with position: {slope}; {means}: {DRIFT_CAUSE}"
    note = ""
    if fit.p_increase <= DRIFT_P:
        note = f"; the rise is significant but under {DRIFT_RATIO:g}x"
    return f"KL against position: no drift: slope {slope}, {fit.method}; {means}{note}"
