"""``parity diff GOLDEN --suggest-thresholds``: thresholds measured on a noise
floor, with a stated margin (Modular MAX's ``--find-tolerances``, kept per model).

The floor (the golden's own, or ``--baseline``) is diffed against the golden;
each threshold is its statistic times the margin: ``max_kl`` from the floor's
largest KL, ``max_mean_kl`` from its mean, ``max_abs`` from its largest
|delta|, ``min_top1`` from its top-1 disagreement (1 - margin x (1 - agreement)).
"""

from __future__ import annotations

import math
from pathlib import Path

from parity.errors import UsageError
from parity.schemas import Store

from .api import diff, with_floor
from .floor import FloorRule


def suggest(reference: str | Path | Store, baseline: str | Path | Store | None = None, *, margin: float = 2.0,
            use_floor: bool = True) -> dict:
    """Thresholds from the floor's statistics times ``margin``, per row kind."""
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or math.isnan(margin) or margin < 1:
        raise UsageError(f"--margin must be a number of at least 1, got {margin!r}")
    ref, base = with_floor(reference, baseline, use_floor)
    if base is None:
        raise UsageError("no floor to measure: the reference carries none",
                         hint="give --baseline STORE (accepted numerics recorded with --golden), or record the "
                              "golden with --floor")
    report = diff(ref, base, use_floor=False)
    parts = {"generated": report.summary}
    if report.prompt and report.prompt["positions"]:
        parts["prompt"] = report.prompt
    thresholds = {}
    for kind, s in parts.items():
        kl = s["kl"]
        top1 = s["top1_agreement"]
        thresholds[kind] = {
            "max_kl": _times(kl["max"], margin),
            "max_mean_kl": _times(kl["mean"], margin),
            "min_top1": None if top1 is None else max(0.0, 1.0 - margin * (1.0 - top1)),
            "max_abs": _times(s["max_abs"], margin),
        }
    # One set for both kinds: the looser of the two.
    merged = {k: _loosest(k, [t[k] for t in thresholds.values()]) for k in ("max_kl", "max_mean_kl", "min_top1", "max_abs")}
    return {
        "schema": "parity.suggested-thresholds/1",
        "reference": report.reference,
        "floor": report.candidate,
        "margin": margin,
        "floor_statistics": {kind: {"positions": s["positions"], "kl_mean": s["kl"]["mean"], "kl_p99": s["kl"]["p99"],
                                    "kl_max": s["kl"]["max"], "top1_agreement": s["top1_agreement"],
                                    "max_abs": s["max_abs"]} for kind, s in parts.items()},
        "by_kind": thresholds,
        "thresholds": merged,
        "floor_rule": FloorRule().to_dict(),
    }


def _times(x: float | None, margin: float) -> float | None:
    return None if x is None or not math.isfinite(x) else x * margin


def _loosest(key: str, values: list) -> float | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return min(values) if key == "min_top1" else max(values)


def render(s: dict) -> str:
    t = s["thresholds"]
    flags = " ".join(f"--{k.replace('_', '-')} {v:.3g}" for k, v in t.items() if v is not None)
    lines = [f"floor {s['floor']['device']} {s['floor']['dtype']} ({s['floor']['digest']}) against "
             f"{s['reference']['device']} {s['reference']['dtype']}, margin {s['margin']:g}x:"]
    for kind, st in s["floor_statistics"].items():
        lines.append(f"  {kind}: {st['positions']} positions, KL mean {_g(st['kl_mean'])} p99 {_g(st['kl_p99'])} "
                     f"max {_g(st['kl_max'])}, top-1 {_g(st['top1_agreement'])}, max |delta| {_g(st['max_abs'])}")
    lines.append(f"suggested: {flags}")
    return "\n".join(lines)


def _g(x) -> str:
    return "n/a" if x is None else f"{x:.3g}"
