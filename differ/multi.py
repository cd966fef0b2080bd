"""One reference, several candidates: the ``parity diff G C1 C2 ...`` layer over ``compare``.

``compare`` reads the reference once for every candidate on its rows; this
module adds the measured floor to each report (``api.compare_to_floor``: the
baseline is one more candidate of the same pass), labels candidates by what
tells them apart (device kind, the package versions and dtype that differ
between them), renders the side-by-side terminal table and the
``parity.compare/1`` JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from .api import check_floor_ratio, with_floor, compare, compare_to_floor
from .render import _Style, fmt
from .report import Report, jsonable, write_atomic

COMPARE_SCHEMA = "parity.compare/1"
# Versions worth naming in a label when they differ between candidates, in this order.
LABEL_VERSIONS = ("rebel-compiler", "vllm-rbln", "optimum-rbln", "torch-rbln", "vllm", "torch", "transformers")


def compare_all(reference, candidates: Sequence, *, baseline=None, max_floor_ratio: float | None = None,
                use_floor: bool = True, floor_rule=True, **opts) -> list[Report]:
    """One report per candidate from one pass over the reference; with
    ``baseline`` (or the floor the reference carries, ``use_floor``), each gets the floor."""
    reference, baseline = with_floor(reference, baseline, use_floor)
    max_floor_ratio = check_floor_ratio(max_floor_ratio, baseline)
    if baseline is None:
        return compare(reference, list(candidates), **opts)
    return compare_to_floor(reference, list(candidates), baseline, max_floor_ratio=max_floor_ratio,
                            floor_rule=floor_rule, **opts)


def labels(reports: Sequence[Report]) -> list[str]:
    """``1 rbln rebel-compiler=0.9.2`` etc.: the kind plus what differs between candidates."""
    infos = [r.candidate for r in reports]
    keys = sorted({k for i in infos for k in i.get("versions", {})},
                  key=lambda k: (LABEL_VERSIONS.index(k) if k in LABEL_VERSIONS else len(LABEL_VERSIONS), k))
    # A package some candidates lack (vllm on the hf device) is told apart by the kind already.
    differing = [k for k in keys if all(k in i.get("versions", {}) for i in infos)
                 and len({i["versions"][k] for i in infos}) > 1]
    dtype_differs = len({i.get("dtype") for i in infos}) > 1
    out = []
    for n, info in enumerate(infos, 1):
        parts = [str(n), str(info.get("device"))]
        parts += [f"{k}={info.get('versions', {}).get(k, '-')}" for k in differing]
        if dtype_differs:
            parts.append(str(info.get("dtype")))
        out.append(" ".join(parts))
    return out


def _first_divergence(r: Report) -> str:
    firsts = [(s["first_divergence"], s["index"]) for s in r.sequences if s["first_divergence"] is not None]
    if not firsts:
        return "none"
    pos, seq = min(firsts)
    return f"{len(firsts)} seq; seq {seq} @ {pos}"


def _rows(r: Report) -> list[tuple[str, str]]:
    s, kl = r.summary, r.summary["kl"]
    rows = [
        ("positions", str(s["positions"])),
        ("KL mean", fmt(kl["mean"])),
        ("KL p99", fmt(kl["p99"])),
        ("KL max", fmt(kl["max"])),
        ("top-1 agreement", fmt(s["top1_agreement"])),
        ("max |delta logprob|", fmt(s["max_abs"])),
        ("NaN positions", str(s["nan_positions"])),
        ("first divergence", _first_divergence(r)),
    ]
    if r.prompt and r.prompt["positions"]:
        rows.append(("prompt KL max", fmt(r.prompt["kl"]["max"])))
    drift = (r.kl_by_position or {}).get("generated") or {}
    rows.append(("KL vs position", f"DRIFT {fmt(drift.get('slope_per_1k'), 2)}/1k" if drift.get("drift") else "-"))
    rows.append(("flips near/real/garbage", "/".join(
        str(sum(f[c] for f in r.flips.values())) for c in ("near-tie", "real", "garbage"))))
    if r.floor is not None:
        rows.append(("KL p99 / floor", fmt(r.floor["ratios"]["kl_p99"], 3) + "x"))
        for kind, p in (r.floor.get("per_position") or {}).items():
            if p is not None:
                rows.append((f"{kind} within floor", f"{100 * p['fraction_within']:.1f}%"))
    return rows


def render_text(reports: Sequence[Report], color: bool = False) -> str:
    """Side by side: one column per candidate, a verdict each, failures below."""
    st = _Style(color)
    ref = reports[0].reference
    head = labels(reports)
    body = [_rows(r) for r in reports]
    names = [name for name, _ in body[0]]
    table = [["", *head], ["store", *(Path(r.candidate["path"]).name for r in reports)]]
    for i, name in enumerate(names):
        table.append([name, *(rows[i][1] if i < len(rows) else "" for rows in body)])
    table.append(["verdict", *(r.verdict.upper() for r in reports)])
    widths = [max(len(row[c]) for row in table) for c in range(len(table[0]))]
    lines = [st.bold(f"reference  {ref['path']}"),
             f"           {ref['model']} on {ref['device']}, {ref['dtype']}, "
             f"{ref['positions']['generated']} generated + {ref['positions']['prompt']} prompt positions"]
    thresholds = {k: v for k, v in reports[0].thresholds.to_dict().items() if v is not None}
    if reports[0].floor is not None and reports[0].floor.get("max_floor_ratio") is not None:
        thresholds["max_floor_ratio"] = reports[0].floor["max_floor_ratio"]
    lines.append("thresholds " + (", ".join(f"{k}={v:g}" for k, v in thresholds.items()) or "none (report only)"))
    if reports[0].floor is not None:
        f = reports[0].floor
        lines.append(f"floor      baseline {f['baseline']['device']} {f['baseline']['dtype']}: KL p99 "
                     f"{fmt(f['generated']['kl_p99'])}, mean {fmt(f['generated']['kl_mean'])}")
    lines.append("")
    for row in table:
        cells = [row[0].ljust(widths[0])]
        for c, cell in enumerate(row[1:], 1):
            text = cell.ljust(widths[c])
            if row[0] == "verdict":
                text = (st.red if cell == "FAIL" else st.green if cell == "PASS" else st.dim)(text)
            cells.append(text)
        lines.append("  ".join(cells).rstrip())
    for label, r in zip(head, reports):
        for w in r.warnings[:3]:
            lines.append(st.yellow(f"[{label}] warning: {w}"))
        for failure in r.failures[:5]:
            lines.append(st.red(f"[{label}] {failure}"))
        if len(r.failures) > 5:
            lines.append(st.red(f"[{label}] ... {len(r.failures) - 5} more failures"))
    failing = [str(n) for n, r in enumerate(reports, 1) if r.verdict == "fail"]
    passing = sum(r.verdict == "pass" for r in reports)
    if failing:
        summary = f"{len(failing)} of {len(reports)} candidates fail (candidate {', '.join(failing)})"
    elif passing:
        summary = f"all {len(reports)} candidates pass"
    else:
        summary = f"{len(reports)} candidates compared (no thresholds: report only)"
    lines.append("")
    lines.append(summary)
    return "\n".join(lines)


def exit_code(reports: Sequence[Report]) -> int:
    return 1 if any(r.verdict == "fail" for r in reports) else 0


def to_dict(reports: Sequence[Report]) -> dict:
    """``parity.compare/1``: the reference once, then one ``parity.diff/1`` report per candidate."""
    return {"schema": COMPARE_SCHEMA, "reference": reports[0].reference,
            "candidates": [r.to_dict() for r in reports]}


def write_json(reports: Sequence[Report], path: str | Path) -> Path:
    """One candidate: the plain ``parity.diff/1`` document; several: ``parity.compare/1``."""
    if len(reports) == 1:
        return reports[0].write_json(path)
    return write_atomic(path, json.dumps(jsonable(to_dict(reports)), indent=2, allow_nan=False) + "\n")
